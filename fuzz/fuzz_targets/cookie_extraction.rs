#![no_main]
//! Arbitrary `Cookie` fields: extraction never panics, a token it finds never
//! verifies (it was not signed), and what the layer makes of the fields
//! (nothing, an ambiguous cookie, a too-large token, some token) is what a
//! plain reading of RFC 6265 with HTTP's OWS makes of them.

#[path = "common.rs"]
mod common;

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tollgate::auth::{Anonymous, AuthErrorKind};
use tower::{Layer, ServiceExt};

/// The reference oracle: split on `;`, trim spaces and tabs (never Unicode
/// whitespace), compare the name byte for byte, unquote, ignore empty values,
/// refuse two different values.
fn reference(fields: &[&[u8]]) -> &'static str {
    let ows = |s: &str| s.trim_matches([' ', '\t']).to_owned();
    let mut found: Option<String> = None;
    for field in fields {
        let text = String::from_utf8_lossy(field);
        for pair in text.split(';') {
            let Some((name, value)) = pair.split_once('=') else { continue };
            if ows(name) != "da3" {
                continue;
            }
            let value = ows(value);
            let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(inner) => inner.to_owned(),
                None => value,
            };
            if value.is_empty() {
                continue;
            }
            match &found {
                None => found = Some(value),
                Some(existing) if *existing == value => {}
                Some(_) => return "ambiguous",
            }
        }
    }
    match found {
        None => "nothing",
        Some(v) if v.len() > 8192 => "too_large",
        Some(_) => "token",
    }
}

fuzz_target!(|fields: Vec<Vec<u8>>| {
    let mut req = Request::new(());
    let mut sent: Vec<&[u8]> = Vec::new();
    for field in fields.iter().take(8) {
        if let Ok(value) = HeaderValue::from_bytes(field) {
            req.headers_mut().append(http::header::COOKIE, value);
            sent.push(field);
        }
    }
    let expected = reference(&sent);

    // Required mode: nothing here is signed, so never authenticated.
    let svc = common::auth().clone().layer(tower::service_fn(common::ok));
    let res = common::ready(svc.oneshot(req.clone())).unwrap();
    assert_ne!(res.status(), 200);
    common::check_status(res.status().as_u16());

    // Lenient mode: the handler sees why the token was ignored.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(""));
    let record = std::sync::Arc::clone(&seen);
    let svc = common::auth().clone().lenient().layer(tower::service_fn(move |req: Request<()>| {
        let what = match req.extensions().get::<Anonymous>().map(Anonymous::rejected) {
            Some(None) => "nothing",
            Some(Some(AuthErrorKind::AmbiguousCookie)) => "ambiguous",
            Some(Some(AuthErrorKind::TooLarge)) => "too_large",
            _ => "token",
        };
        *record.lock().unwrap() = what;
        common::ok(req)
    }));
    common::ready(svc.oneshot(req)).unwrap();
    assert_eq!(*seen.lock().unwrap(), expected, "{sent:?}");
});
