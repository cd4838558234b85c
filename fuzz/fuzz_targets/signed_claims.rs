#![no_main]
//! Structured claims and headers, signed with the test key, so that they
//! reach claim validation: never a panic, and acceptance only for claims
//! that meet every rule.

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tower::{Layer, ServiceExt};

#[derive(Debug, Arbitrary)]
enum Num {
    Int(i64),
    Float(f64),
    Text(String),
    Missing,
    Null,
    Near(i16),
}

impl Num {
    fn json(&self) -> Option<Value> {
        match self {
            Num::Int(i) => Some(json!(i)),
            Num::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number),
            Num::Text(s) => Some(json!(s)),
            Num::Missing => None,
            Num::Null => Some(Value::Null),
            Num::Near(d) => Some(json!(common::NOW as i64 + i64::from(*d))),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    exp: Num,
    nbf: Num,
    iat: Num,
    iss: Option<String>,
    good_iss: bool,
    aud: Option<Vec<String>>,
    good_aud: bool,
    roles: bool,
    extra: Vec<(String, String)>,
    alg_typo: Option<String>,
    crit: Option<Vec<String>>,
}

fuzz_target!(|input: Input| {
    let mut claims = Map::new();
    for (k, v) in [("exp", &input.exp), ("nbf", &input.nbf), ("iat", &input.iat)] {
        if let Some(v) = v.json() {
            claims.insert(k.into(), v);
        }
    }
    if input.good_iss {
        claims.insert("iss".into(), json!("https://issuer"));
    } else if let Some(iss) = &input.iss {
        claims.insert("iss".into(), json!(iss));
    }
    match (&input.aud, input.good_aud) {
        (_, true) => {
            claims.insert("aud".into(), json!(["x", "api"]));
        }
        (Some(aud), false) => {
            claims.insert("aud".into(), json!(aud));
        }
        (None, false) => {}
    }
    if input.roles {
        claims.insert("roles".into(), json!(["r"]));
    }
    for (k, v) in input.extra.iter().take(4) {
        claims.entry(k.clone()).or_insert(json!(v));
    }
    let mut header = json!({"alg": input.alg_typo.clone().unwrap_or_else(|| "HS256".into())});
    if let Some(crit) = &input.crit {
        header["crit"] = json!(crit);
    }
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Value::Object(claims.clone())).unwrap())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(common::SECRET);
    tollgate::crypto::install_default_provider();
    let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256) else { return };
    let token = format!("{message}.{signature}");
    let Ok(value) = HeaderValue::try_from(format!("Bearer {token}")) else { return };
    let mut req = Request::new(());
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let svc = common::auth().clone().layer(tower::service_fn(common::ok));
    let res = common::ready(svc.oneshot(req)).unwrap();
    common::check_status(res.status().as_u16());
    if res.status() == 200 {
        // Accepted: every rule held.
        let now = common::NOW as f64;
        let exp = claims.get("exp").and_then(Value::as_f64).expect("exp required");
        assert!(exp + 60.0 > now);
        // nbf and iat, when present, are dates no later than now + leeway,
        // and a token is not issued after it expires.
        for name in ["nbf", "iat"] {
            if let Some(v) = claims.get(name) {
                let v = v.as_f64().expect("a NumericDate");
                assert!(v >= 0.0 && v.floor() <= now + 60.0, "{name}");
            }
        }
        if let Some(iat) = claims.get("iat").and_then(Value::as_f64) {
            assert!(iat.floor() <= exp.floor());
            assert!(exp.floor() - iat.floor() <= 86_400.0, "max lifetime");
        }
        assert_eq!(claims.get("iss"), Some(&json!("https://issuer")));
        assert!(claims.contains_key("roles"));
        assert!(input.alg_typo.is_none() || input.alg_typo.as_deref() == Some("HS256"));
        assert!(input.crit.is_none());
    }
});
