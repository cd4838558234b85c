//! Which cryptographic backend verifies signatures.
//!
//! jsonwebtoken 11 picks its process-wide provider from its own features and
//! panics on first use when both `aws_lc_rs` and `rust_crypto` are enabled (as
//! `cargo --all-features` does). tollgate never asks jsonwebtoken for the
//! process default: it verifies with the provider chosen here, preferring
//! aws-lc-rs, so enabling both features is safe.

use jsonwebtoken::crypto::CryptoProvider;

#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
compile_error!(
    "tollgate needs a crypto backend: enable the `aws-lc-rs` (default) or `rust-crypto` feature"
);

/// The provider tollgate verifies with: aws-lc-rs when its feature is on,
/// otherwise RustCrypto.
pub fn provider() -> &'static CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    {
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
    }
    #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
    {
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
    }
}

/// Installs [`provider`] as jsonwebtoken's process-wide default, so that
/// `jsonwebtoken::encode` / `decode` elsewhere in the program work even when
/// both backends are compiled in.
///
/// Idempotent; if the program already installed a provider, that one stays.
/// Building a layer calls this for you.
pub fn install_default_provider() {
    // An Err only means a default is already installed, which is fine.
    let _ = provider().install_default();
}
