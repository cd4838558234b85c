//! What every bench group shares: the test secret and claims type, a
//! synchronous driver for ready futures, and the key files.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};

pub const SECRET: &[u8] = b"an-hmac-secret-of-at-least-32-bytes!";

#[derive(Serialize, Deserialize)]
pub struct User {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub roles: Vec<String>,
}

/// Polls a future that is ready at once (every service here is synchronous).
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("bench services complete at once"),
    }
}

/// A key file from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}
