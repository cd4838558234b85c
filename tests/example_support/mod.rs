//! The `graphql` example as a child process, for the tests that run it
//! (`example_graphql`, `browser`).

use std::path::PathBuf;
use std::process::Command;

/// Where `cargo test` builds the example: next to the test binaries'
/// `deps` folder.
pub fn path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("graphql")
}

/// The example with `secret`, on a free loopback port, and none of the
/// environment's tollgate settings that would change what it serves.
pub fn command(secret: &str) -> Command {
    let path = path();
    assert!(
        path.is_file(),
        "{} is missing: `cargo test --all-features` builds the examples (`--test NAME` alone \
         does not; run `cargo build --all-features --example graphql` first)",
        path.display()
    );
    let mut cmd = Command::new(path);
    cmd.env("TOLLGATE_SECRET", secret)
        .env("TOLLGATE_ADDR", "127.0.0.1:0")
        .env_remove("TOLLGATE_TRUSTED_PROXIES")
        .env_remove("TOLLGATE_LAYERS")
        .env_remove("TOLLGATE_IN_FLIGHT")
        .env_remove("TOLLGATE_LOGIN_PASSWORD")
        .env_remove("TOLLGATE_REFRESH_WITHIN_SECS")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_JWKS_URL")
        .env_remove("TOLLGATE_OIDC_ISSUER")
        .env_remove("TOLLGATE_PUBLIC_SCHEME");
    cmd
}

/// A session token for `subject`, minted by the example's `mint` command.
pub fn mint(secret: &str, subject: &str) -> String {
    let out = command(secret).args(["mint", subject]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
