//! The JWT layer against hostile and well-formed tokens, via `oneshot`.

#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate::auth::{AuthErrorKind, AuthMode, JwtAuthBuilder, JwtAuthLayer, Key};
use tower::{Layer, ServiceExt};

fn builder() -> JwtAuthBuilder<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .key(Key::rsa_pem(RSA_PUBLIC).unwrap().kid("rsa"))
        .key(Key::ec_pem(EC256_PUBLIC).unwrap().kid("ec256"))
        .key(Key::ed_pem(ED_PUBLIC).unwrap().kid("ed"))
        .cookie("da3")
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
}

struct Outcome {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    calls: usize,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_owned()
    }

    #[track_caller]
    fn assert_refused(&self, status: StatusCode, kind: AuthErrorKind) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(self.reason(), kind.reason());
        assert_eq!(self.calls, 0, "the inner service must not be called");
    }

    #[track_caller]
    fn assert_ok(&self, subject: &str) {
        assert_eq!(self.status, StatusCode::OK, "body: {:?}", self.body);
        assert_eq!(self.body, subject);
        assert_eq!(self.calls, 1);
    }
}

async fn send(layer: &JwtAuthLayer<Value>, req: Request<()>) -> Outcome {
    let counter = Counter::default();
    let svc = layer.layer(counter.service());
    let res: Response<_> = svc.oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Outcome {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
        calls: counter.calls(),
    }
}

fn bearer(token: &str) -> Request<()> {
    Request::builder()
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
}

fn cookie(fields: &[&[u8]]) -> Request<()> {
    let mut req = Request::new(());
    for f in fields {
        req.headers_mut()
            .append(header::COOKIE, HeaderValue::from_bytes(f).unwrap());
    }
    req
}

async fn check(token: &str) -> Outcome {
    send(&builder().build().unwrap(), bearer(token)).await
}

fn with(claims: &[(&str, Value)]) -> Value {
    let mut c = good_claims();
    for (k, v) in claims {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    c
}

#[tokio::test]
async fn every_algorithm_verifies_with_its_key() {
    for (alg, kid) in [
        (Algorithm::HS256, None),
        (Algorithm::RS256, Some("rsa")),
        (Algorithm::RS512, Some("rsa")),
        (Algorithm::PS256, Some("rsa")),
        (Algorithm::ES256, Some("ec256")),
        (Algorithm::EdDSA, Some("ed")),
    ] {
        let mut header = json!({"alg": format!("{alg:?}")});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let token = mint_with(header, alg, &good_claims());
        check(&token).await.assert_ok("user-1");
    }
}

#[tokio::test]
async fn der_and_jwk_keys_and_p384() {
    let layer = JwtAuthLayer::<Value>::builder()
        .key(Key::rsa_der(RSA_PUBLIC_DER).unwrap().kid("rsa"))
        .key(Key::ec_der(EC256_PUBLIC_DER).unwrap().kid("ec256"))
        .key(Key::ec_pem(EC384_PUBLIC).unwrap().kid("ec384"))
        .bearer()
        .clock(|| NOW)
        .audience(AUDIENCE)
        .build()
        .unwrap();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
    ] {
        let token = mint_with(
            json!({"alg": format!("{alg:?}"), "kid": kid}),
            alg,
            &good_claims(),
        );
        send(&layer, bearer(&token)).await.assert_ok("user-1");
    }
    // A P-256 key never verifies ES384, even with its own kid.
    let token = mint_with(
        json!({"alg": "ES384", "kid": "ec256"}),
        Algorithm::ES384,
        &good_claims(),
    );
    send(&layer, bearer(&token)).await.assert_refused(
        StatusCode::UNAUTHORIZED,
        AuthErrorKind::UnsupportedAlgorithm,
    );

    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
        "kty": "oct", "kid": "jwk-hs", "alg": "HS256",
        "k": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, SECRET),
    }))
    .unwrap();
    let key = Key::from_jwk(&jwk).unwrap();
    assert_eq!(key.key_id(), Some("jwk-hs"));
    assert_eq!(key.allowed_algorithms(), [Algorithm::HS256]);
    let layer = JwtAuthLayer::<Value>::builder()
        .key(key)
        .bearer()
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let token = mint_with(
        json!({"alg": "HS256", "kid": "jwk-hs"}),
        Algorithm::HS256,
        &good_claims(),
    );
    send(&layer, bearer(&token)).await.assert_ok("user-1");

    let enc: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
        "kty": "oct", "use": "enc", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"
    }))
    .unwrap();
    assert!(Key::from_jwk(&enc).is_err());
}

#[tokio::test]
async fn alg_none_in_any_casing_is_refused() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in ["", "x"] {
            let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &good_claims(), sig);
            let out = check(&token).await;
            assert_eq!(out.status, StatusCode::UNAUTHORIZED);
            assert_eq!(out.calls, 0);
            assert!(
                matches!(out.reason().as_str(), "unsupported_algorithm" | "malformed"),
                "{alg}"
            );
        }
    }
}

#[tokio::test]
async fn rsa_public_key_as_hmac_secret_is_refused() {
    // The classic confusion attack: HS256 signed with the RSA public key PEM.
    let key = jsonwebtoken::EncodingKey::from_secret(RSA_PUBLIC);
    let claims = serde_json::to_vec(&good_claims()).unwrap();
    for header in [
        json!({"alg": "HS256", "kid": "rsa"}),
        json!({"alg": "HS256"}),
    ] {
        let token = sign_raw(&header, &claims, Algorithm::HS256, &key);
        let out = check(&token).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED);
        assert_eq!(out.calls, 0);
        assert!(matches!(
            out.reason().as_str(),
            "unsupported_algorithm" | "bad_signature"
        ));
    }
    // With only the RSA key configured, HS256 has no key at all.
    let layer = JwtAuthLayer::<Value>::builder()
        .key(Key::rsa_pem(RSA_PUBLIC).unwrap())
        .bearer()
        .clock(|| NOW)
        .build()
        .unwrap();
    let token = sign_raw(&json!({"alg": "HS256"}), &claims, Algorithm::HS256, &key);
    send(&layer, bearer(&token)).await.assert_refused(
        StatusCode::UNAUTHORIZED,
        AuthErrorKind::UnsupportedAlgorithm,
    );
}

#[tokio::test]
async fn wrong_key_and_flipped_signature() {
    let other = jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!!");
    let token = sign_raw(
        &json!({"alg": "HS256"}),
        &serde_json::to_vec(&good_claims()).unwrap(),
        Algorithm::HS256,
        &other,
    );
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::BadSignature);

    for alg in [Algorithm::HS256, Algorithm::ES256] {
        let kid = if alg == Algorithm::ES256 {
            json!("ec256")
        } else {
            Value::Null
        };
        let mut header = json!({"alg": format!("{alg:?}")});
        if !kid.is_null() {
            header["kid"] = kid;
        }
        let token = mint_with(header, alg, &good_claims());
        let (msg, sig) = token.rsplit_once('.').unwrap();
        let mut bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        bytes[3] ^= 0x01;
        let flipped = format!(
            "{msg}.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &bytes)
        );
        check(&flipped)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::BadSignature);
    }
}

#[tokio::test]
async fn expired_and_badly_signed_reports_the_signature() {
    let token = mint(Algorithm::HS256, &with(&[("exp", json!(NOW - 10_000))]));
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Expired);
    let (msg, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{msg}.AAAA");
    check(&forged)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::BadSignature);
}

#[tokio::test]
async fn exp_is_checked_against_the_leeway() {
    let leeway = 60;
    let token = mint(
        Algorithm::HS256,
        &with(&[
            ("exp", json!(NOW - (leeway - 1))),
            ("iat", json!(NOW - 3600)),
        ]),
    );
    check(&token).await.assert_ok("user-1");
    let token = mint(
        Algorithm::HS256,
        &with(&[("exp", json!(NOW - (leeway + 1)))]),
    );
    let out = check(&token).await;
    out.assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Expired);
    assert_eq!(
        out.headers[header::WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
    );
    // A zero leeway refuses the second exp itself.
    let strict = builder().leeway(Duration::ZERO).build().unwrap();
    let token = mint(Algorithm::HS256, &with(&[("exp", json!(NOW))]));
    send(&strict, bearer(&token))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Expired);
    let token = mint(Algorithm::HS256, &with(&[("exp", json!(NOW + 1))]));
    send(&strict, bearer(&token)).await.assert_ok("user-1");
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let token = mint(Algorithm::HS256, &with(&[("nbf", json!(NOW + 61))]));
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::NotYetValid);
    let token = mint(Algorithm::HS256, &with(&[("nbf", json!(NOW + 59))]));
    check(&token).await.assert_ok("user-1");
}

#[tokio::test]
async fn exp_of_the_wrong_type_or_range_or_missing() {
    for exp in [
        json!("1800000000"),
        json!(1e300),
        json!(-5),
        json!(true),
        Value::Null,
    ] {
        let token = mint(Algorithm::HS256, &with(&[("exp", exp.clone())]));
        check(&token)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    }
    // Not required: a token without exp passes, a wrongly typed one still fails.
    let relaxed = builder().require_exp(false).build().unwrap();
    let token = mint(Algorithm::HS256, &with(&[("exp", Value::Null)]));
    send(&relaxed, bearer(&token)).await.assert_ok("user-1");
    let token = mint(Algorithm::HS256, &with(&[("exp", json!("soon"))]));
    send(&relaxed, bearer(&token))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
}

#[tokio::test]
async fn issuer_must_match_exactly() {
    for iss in [
        json!("https://auth.exampl"),
        json!("https://auth.example.evil"),
        json!("HTTPS://AUTH.EXAMPLE"),
        json!(1),
        Value::Null,
    ] {
        let token = mint(Algorithm::HS256, &with(&[("iss", iss.clone())]));
        check(&token)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    }
    // Several trusted issuers.
    let layer = builder().issuer("https://other").build().unwrap();
    let token = mint(Algorithm::HS256, &with(&[("iss", json!("https://other"))]));
    send(&layer, bearer(&token)).await.assert_ok("user-1");
}

#[tokio::test]
async fn audience_array_needs_a_match() {
    let token = mint(Algorithm::HS256, &with(&[("aud", json!(["web", "api"]))]));
    check(&token).await.assert_ok("user-1");
    for aud in [
        json!(["web", "apis"]),
        json!([]),
        json!("API"),
        json!([1]),
        Value::Null,
    ] {
        let token = mint(Algorithm::HS256, &with(&[("aud", aud.clone())]));
        check(&token)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    }
    // No audience configured: a token that names one is not for us.
    let layer = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        .clock(|| NOW)
        .build()
        .unwrap();
    send(&layer, bearer(&mint(Algorithm::HS256, &good_claims())))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    send(
        &layer,
        bearer(&mint(Algorithm::HS256, &with(&[("aud", Value::Null)]))),
    )
    .await
    .assert_ok("user-1");
}

#[tokio::test]
async fn unknown_crit_is_refused_and_understood_crit_passes() {
    let token = mint_with(
        json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}),
        Algorithm::HS256,
        &good_claims(),
    );
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidHeader);
    let token = mint_with(
        json!({"alg": "HS256", "crit": []}),
        Algorithm::HS256,
        &good_claims(),
    );
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidHeader);
    let layer = builder().understood_crit("exp-ext").build().unwrap();
    let token = mint_with(
        json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}),
        Algorithm::HS256,
        &good_claims(),
    );
    send(&layer, bearer(&token)).await.assert_ok("user-1");
}

#[tokio::test]
async fn jku_and_x5u_are_never_fetched() {
    // A listener the token points at: nothing may connect to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let token = mint_with(
        json!({"alg": "HS256", "jku": url, "x5u": url}),
        Algorithm::HS256,
        &good_claims(),
    );
    check(&token).await.assert_ok("user-1");
    // A token signed by the attacker's key and pointing at the attacker's
    // JWKS is still judged by the configured keys only.
    let other = jsonwebtoken::EncodingKey::from_secret(b"attacker-secret-attacker-secret-!!");
    let forged = sign_raw(
        &json!({"alg": "HS256", "jku": url}),
        &serde_json::to_vec(&good_claims()).unwrap(),
        Algorithm::HS256,
        &other,
    );
    check(&forged)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::BadSignature);
    let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the layer connected to a URL named by the token"
    );
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let token = mint_with(
        json!({"alg": "RS256", "kid": "nope"}),
        Algorithm::RS256,
        &good_claims(),
    );
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::UnknownKey);
}

#[tokio::test]
async fn wrong_segment_counts_are_malformed() {
    let good = mint(Algorithm::HS256, &good_claims());
    let two = good.rsplit_once('.').unwrap().0.to_owned();
    let four = format!("{good}.x");
    let six_thousand = vec!["a"; 6000].join(".");
    let layer = builder().max_token_len(64 * 1024).build().unwrap();
    for token in [two, four, six_thousand, "..".into(), "a..b".into()] {
        send(&layer, bearer(&token))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Malformed);
    }
}

#[tokio::test]
async fn payload_must_be_a_json_object() {
    for payload in [&b"[1,2,3]"[..], b"\"sub\"", b"42", b"null"] {
        let token = sign_raw(
            &json!({"alg": "HS256"}),
            payload,
            Algorithm::HS256,
            &common::encoding_key(Algorithm::HS256),
        );
        check(&token)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    }
    let token = sign_raw(
        &json!({"alg": "HS256"}),
        b"{not json",
        Algorithm::HS256,
        &common::encoding_key(Algorithm::HS256),
    );
    check(&token)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Malformed);
}

#[tokio::test]
async fn deeply_nested_claims_are_refused_without_overflow() {
    let mut payload = serde_json::to_string(&good_claims()).unwrap();
    payload.pop();
    payload.push_str(&format!(
        r#","deep":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    ));
    let layer = builder().max_token_len(64 * 1024).build().unwrap();
    let token = sign_raw(
        &json!({"alg": "HS256"}),
        payload.as_bytes(),
        Algorithm::HS256,
        &common::encoding_key(Algorithm::HS256),
    );
    send(&layer, bearer(&token))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
}

#[tokio::test]
async fn oversized_tokens_get_431_before_decoding() {
    let token = format!(
        "{}.{}.{}",
        "e".repeat(4000),
        "e".repeat(4000),
        "e".repeat(4000)
    );
    let out = check(&token).await;
    out.assert_refused(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        AuthErrorKind::TooLarge,
    );
    let out = send(
        &builder().build().unwrap(),
        cookie(&[format!("da3={token}").as_bytes()]),
    )
    .await;
    out.assert_refused(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        AuthErrorKind::TooLarge,
    );
}

#[tokio::test]
async fn cookie_cases() {
    let layer = builder().build().unwrap();
    let token = mint(Algorithm::HS256, &good_claims());
    // plain, among others, in a second field (HTTP/2 style)
    send(
        &layer,
        cookie(&[b"a=1", format!("b=2; da3={token}").as_bytes()]),
    )
    .await
    .assert_ok("user-1");
    // quoted
    send(&layer, cookie(&[format!("da3=\"{token}\"").as_bytes()]))
        .await
        .assert_ok("user-1");
    // the same value twice
    send(
        &layer,
        cookie(&[
            format!("da3={token}").as_bytes(),
            format!("da3={token}").as_bytes(),
        ]),
    )
    .await
    .assert_ok("user-1");
    // tossing: two different values
    let other = mint(Algorithm::HS256, &with(&[("sub", json!("victim"))]));
    send(
        &layer,
        cookie(&[format!("da3={token}; da3={other}").as_bytes()]),
    )
    .await
    .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::AmbiguousCookie);
    // empty: absent
    let out = send(&layer, cookie(&[b"da3="])).await;
    out.assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Missing);
    assert_eq!(out.headers[header::WWW_AUTHENTICATE], "Bearer");
    // non-UTF-8 bytes in the token cookie
    let mut bad = format!("da3={token}").into_bytes();
    bad[10] = 0xff;
    send(&layer, cookie(&[&bad]))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Malformed);
    // non-UTF-8 bytes in another cookie do not matter
    send(
        &layer,
        cookie(&[b"x=\xfe\xff", format!("da3={token}").as_bytes()]),
    )
    .await
    .assert_ok("user-1");
}

#[tokio::test]
async fn refusals_never_echo_the_token() {
    let token = mint(
        Algorithm::HS256,
        &with(&[("exp", json!(NOW - 1000)), ("sub", json!("s3cr3t-subject"))]),
    );
    let out = check(&token).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    let all = format!("{:?}{:?}", out.headers, out.body);
    for part in token.split('.') {
        assert!(!all.contains(part));
    }
    assert!(!all.contains("s3cr3t"));
}

#[tokio::test]
async fn problem_json_and_head() {
    let out = check("garbage").await;
    assert_eq!(
        out.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = out.json();
    assert_eq!(body["status"], 401);
    assert_eq!(body["reason"], "malformed");
    let mut req = bearer("garbage");
    *req.method_mut() = Method::HEAD;
    let out = send(&builder().build().unwrap(), req).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert!(out.body.is_empty());
}

#[tokio::test]
async fn grpc_requests_get_grpc_status() {
    let mut req = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(())
        .unwrap();
    let out = send(&builder().build().unwrap(), req).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.headers["grpc-status"], "16");
    assert!(out.body.is_empty());
    assert_eq!(out.calls, 0);
    req = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(())
        .unwrap();
    req.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {}", mint(Algorithm::HS256, &good_claims())))
            .unwrap(),
    );
    let layer = builder()
        .authorize(|c: &Value| {
            c["roles"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("admin")))
        })
        .build()
        .unwrap();
    let out = send(&layer, req).await;
    assert_eq!(out.headers["grpc-status"], "7");
}

#[tokio::test]
async fn modes() {
    let layer = builder().build().unwrap();
    let good = mint(Algorithm::HS256, &good_claims());
    let expired = mint(Algorithm::HS256, &with(&[("exp", json!(NOW - 1000))]));
    let none = || Request::new(());

    let required = layer.clone().mode(AuthMode::Required);
    send(&required, none())
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Missing);
    send(&required, bearer(&expired))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Expired);
    send(&required, bearer(&good)).await.assert_ok("user-1");

    let optional = layer.clone().optional();
    send(&optional, none()).await.assert_ok("anonymous");
    send(&optional, bearer(&expired))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Expired);
    send(&optional, bearer(&good)).await.assert_ok("user-1");

    let lenient = layer.lenient();
    send(&lenient, none()).await.assert_ok("anonymous");
    send(&lenient, bearer(&expired))
        .await
        .assert_ok("anonymous");
    send(&lenient, bearer("junk")).await.assert_ok("anonymous");
    send(&lenient, bearer(&good)).await.assert_ok("user-1");
}

#[tokio::test]
async fn lenient_marks_why_a_token_was_dropped() {
    let layer = builder().build().unwrap().lenient();
    let expired = mint(Algorithm::HS256, &with(&[("exp", json!(NOW - 1000))]));
    let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let marker = req.extensions().get::<tollgate::auth::Anonymous>().copied();
        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
            format!("{:?}", marker.and_then(|m| m.rejected())),
        ))))
    }));
    let res = svc.oneshot(bearer(&expired)).await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "Some(Expired)"
    );
}

#[tokio::test]
async fn authorization_hook_gives_403() {
    let layer = builder()
        .authorize(|c: &Value| {
            c["roles"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("admin")))
        })
        .build()
        .unwrap();
    let out = send(&layer, bearer(&mint(Algorithm::HS256, &good_claims()))).await;
    out.assert_refused(StatusCode::FORBIDDEN, AuthErrorKind::Forbidden);
    assert!(
        out.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"insufficient_scope\"")
    );
    // Lenient mode does not turn a refusal by the hook into anonymity.
    send(
        &layer.clone().lenient(),
        bearer(&mint(Algorithm::HS256, &good_claims())),
    )
    .await
    .assert_refused(StatusCode::FORBIDDEN, AuthErrorKind::Forbidden);
    let admin = mint(Algorithm::HS256, &with(&[("roles", json!(["admin"]))]));
    send(&layer, bearer(&admin)).await.assert_ok("user-1");
}

#[tokio::test]
async fn typ_lifetime_and_required_claims() {
    let layer = builder()
        .typ("at+jwt")
        .max_lifetime(Duration::from_secs(4000))
        .require_claim("roles")
        .build()
        .unwrap();
    let at = |claims: &Value, typ: &str| {
        mint_with(
            json!({"alg": "HS256", "typ": typ}),
            Algorithm::HS256,
            claims,
        )
    };
    send(&layer, bearer(&at(&good_claims(), "application/AT+JWT")))
        .await
        .assert_ok("user-1");
    send(&layer, bearer(&at(&good_claims(), "JWT")))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidHeader);
    send(
        &layer,
        bearer(&mint_with(
            json!({"alg": "HS256"}),
            Algorithm::HS256,
            &good_claims(),
        )),
    )
    .await
    .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidHeader);
    let long = with(&[("iat", json!(NOW - 10)), ("exp", json!(NOW + 4000))]);
    send(&layer, bearer(&at(&long, "at+jwt")))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    let no_iat = with(&[("iat", Value::Null)]);
    send(&layer, bearer(&at(&no_iat, "at+jwt")))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
    let no_roles = with(&[("roles", Value::Null)]);
    send(&layer, bearer(&at(&no_roles, "at+jwt")))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
}

#[tokio::test]
async fn typed_claims_and_type_mismatch() {
    #[derive(serde::Deserialize)]
    struct User {
        sub: String,
        roles: Vec<String>,
    }
    let layer = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let user = req.extensions().get::<tollgate::Claims<User>>().unwrap();
        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
            format!("{}:{}", user.sub, user.roles.join(",")),
        ))))
    }));
    let res = svc
        .clone()
        .oneshot(bearer(&mint(Algorithm::HS256, &good_claims())))
        .await
        .unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "user-1:reader"
    );
    let res = svc
        .oneshot(bearer(&mint(
            Algorithm::HS256,
            &with(&[("roles", json!("reader"))]),
        )))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn custom_responder() {
    let layer = builder().build().unwrap().with_responder(
        |refusal: &tollgate::reject::Refusal<'_>, _req: &http::request::Parts| {
            assert_eq!(
                refusal.kind(),
                tollgate::reject::RefusalKind::Auth(AuthErrorKind::Missing)
            );
            let mut res = Response::new(Bytes::from(format!("nope: {}", refusal.reason())));
            *res.status_mut() = StatusCode::IM_A_TEAPOT;
            res
        },
    );
    let counter = Counter::default();
    let res = layer
        .layer(counter.service())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "nope: missing"
    );
    assert_eq!(counter.calls(), 0);
}

#[test]
fn configuration_errors_say_what_to_fix() {
    let e = JwtAuthLayer::<Value>::builder()
        .bearer()
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "key");
    let e = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "sources");
    let e = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("bad name")
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "cookie");
    assert!(Key::hmac(b"short").is_err());
    assert!(Key::rsa_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    assert!(Key::ec_pem(RSA_PUBLIC).is_err());
}

// --- Regressions from the outside audit (security round 2) ---

#[tokio::test]
async fn header_must_be_a_json_object() {
    // serde reads a struct from an array too: `["HS256"]` was accepted.
    for header in [
        json!(["HS256"]),
        json!(["HS256", null, null, null]),
        json!("HS256"),
    ] {
        let token = mint_with(header.clone(), Algorithm::HS256, &good_claims());
        check(&token)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Malformed);
    }
}

#[tokio::test]
async fn nested_jwt_cty_and_null_crit_are_refused() {
    for header in [
        json!({"alg": "HS256", "cty": "JWT"}),
        json!({"alg": "HS256", "cty": "jwt"}),
        json!({"alg": "HS256", "cty": "application/JWT"}),
        json!({"alg": "HS256", "crit": null}),
        json!({"alg": "HS256", "crit": [1]}),
        json!({"alg": "HS256", "crit": "exp-ext"}),
    ] {
        let token = mint_with(header.clone(), Algorithm::HS256, &good_claims());
        let out = check(&token).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(out.calls, 0, "{header}");
    }
    // Another content type is not a nested JWT.
    let token = mint_with(
        json!({"alg": "HS256", "cty": "json"}),
        Algorithm::HS256,
        &good_claims(),
    );
    check(&token).await.assert_ok("user-1");
}

#[tokio::test]
async fn iat_in_the_future_and_iat_after_exp_are_refused() {
    // Beyond the 60 s leeway: refused; within it: fine.
    check(&mint(Algorithm::HS256, &with(&[("iat", json!(NOW + 61))])))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::NotYetValid);
    check(&mint(Algorithm::HS256, &with(&[("iat", json!(NOW + 60))])))
        .await
        .assert_ok("user-1");
    // iat > exp slipped past max_lifetime (exp - iat saturated to 0).
    let layer = builder()
        .max_lifetime(Duration::from_secs(600))
        .leeway(Duration::from_secs(0))
        .build()
        .unwrap();
    let claims = with(&[("iat", json!(NOW + 100_000)), ("exp", json!(NOW + 50))]);
    let out = send(&layer, bearer(&mint(Algorithm::HS256, &claims))).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.calls, 0);
    let claims = with(&[("iat", json!(NOW)), ("exp", json!(NOW + 1))]);
    let layer = builder().build().unwrap();
    send(&layer, bearer(&mint(Algorithm::HS256, &claims)))
        .await
        .assert_ok("user-1");
    let claims = with(&[("iat", json!(NOW + 30)), ("exp", json!(NOW + 20))]);
    send(&layer, bearer(&mint(Algorithm::HS256, &claims)))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidClaim);
}

#[tokio::test]
async fn kidless_tokens_are_refused_when_every_key_has_a_kid() {
    let named = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap().kid("h"))
        .key(Key::rsa_pem(RSA_PUBLIC).unwrap().kid("rsa"))
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let kidless = mint(Algorithm::HS256, &good_claims());
    send(&named, bearer(&kidless))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::InvalidHeader);
    let with_kid = mint_with(
        json!({"alg": "HS256", "kid": "h"}),
        Algorithm::HS256,
        &good_claims(),
    );
    send(&named, bearer(&with_kid)).await.assert_ok("user-1");
    // One unnamed key: kid-less tokens are still tried against it.
    check(&kidless).await.assert_ok("user-1");
}

#[tokio::test]
async fn cache_hit_rechecks_nbf_and_iat_after_the_clock_steps_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = Arc::clone(&now);
    let layer = builder()
        .cache(16)
        .clock(move || clock.load(Ordering::SeqCst))
        .build()
        .unwrap();
    for (claim, other) in [("nbf", "iat"), ("iat", "nbf")] {
        now.store(NOW, Ordering::SeqCst);
        let token = mint(
            Algorithm::HS256,
            &with(&[(claim, json!(NOW - 5)), (other, Value::Null)]),
        );
        send(&layer, bearer(&token)).await.assert_ok("user-1");
        send(&layer, bearer(&token)).await.assert_ok("user-1");
        // The wall clock steps back 200 s (NTP correction): beyond the leeway
        // the token is not valid yet, cached or not.
        now.store(NOW - 200, Ordering::SeqCst);
        send(&layer, bearer(&token))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::NotYetValid);
        now.store(NOW, Ordering::SeqCst);
        send(&layer, bearer(&token)).await.assert_ok("user-1");
    }
}

#[tokio::test]
async fn es256_signature_of_zeros_is_refused() {
    // r = s = 0 (the "psychic signatures" shape): never valid.
    use base64::Engine as _;
    let zeros = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 64]);
    for kid in [Some("ec256"), None] {
        let mut header = json!({"alg": "ES256"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let token = unsigned(&header, &good_claims(), &zeros);
        check(&token)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::BadSignature);
    }
}

#[tokio::test]
async fn deep_nesting_is_refused_with_a_typed_claims_struct() {
    // With `serde_json::Value` claims serde_json's own recursion limit
    // refused this; a typed struct ignores unknown claims, so tollgate must.
    #[derive(serde::Deserialize)]
    struct User {
        sub: String,
    }
    let layer = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .max_token_len(64 * 1024)
        .build()
        .unwrap();
    let mut payload = serde_json::to_string(&good_claims()).unwrap();
    payload.pop();
    payload.push_str(&format!(
        r#","deep":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    ));
    let token = sign_raw(
        &json!({"alg": "HS256"}),
        payload.as_bytes(),
        Algorithm::HS256,
        &common::encoding_key(Algorithm::HS256),
    );
    let counter = Counter::default();
    let res = layer
        .layer(counter.service())
        .oneshot(bearer(&token))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(counter.calls(), 0);
    // The same token without the deep claim passes, and the type is used.
    let token = mint(Algorithm::HS256, &good_claims());
    let res = layer
        .layer(tower::service_fn(|req: Request<()>| async move {
            let sub = req
                .extensions()
                .get::<tollgate::Claims<User>>()
                .unwrap()
                .sub
                .clone();
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from(sub),
            )))
        }))
        .oneshot(bearer(&token))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn grpc_content_type_on_a_get_gets_an_http_refusal() {
    let req = Request::builder()
        .method(Method::GET)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(())
        .unwrap();
    let out = send(&builder().build().unwrap(), req).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.headers[header::CACHE_CONTROL], "no-store");
    assert!(out.headers.get("grpc-status").is_none());
}

#[tokio::test]
async fn exempt_requests_go_on_as_anonymous_unchecked() {
    let layer = builder()
        .exempt(|req| req.uri.path() == "/healthz")
        .build()
        .unwrap();
    let counter = Counter::default();
    let svc = layer.layer(counter.service());
    // No token, required mode: still served, as anonymous.
    let req = Request::builder().uri("/healthz").body(()).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "anonymous"
    );
    // Even a junk token is not read there.
    let req = Request::builder()
        .uri("/healthz")
        .header(header::AUTHORIZATION, "Bearer junk")
        .body(())
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
    // Other paths are checked.
    let req = Request::builder().uri("/me").body(()).unwrap();
    assert_eq!(
        svc.oneshot(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(counter.calls(), 2);
}

/// The testing kit's signer produces tokens the layer accepts, for every
/// algorithm family, without the test naming jsonwebtoken.
#[tokio::test]
async fn testing_kit_signs_tokens_the_layer_accepts() {
    use tollgate::testing::{Signer, claims};
    let layer = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .key(Key::rsa_pem(RSA_PUBLIC).unwrap().kid("rsa"))
        .key(Key::ec_pem(EC256_PUBLIC).unwrap().kid("ec256"))
        .key(Key::ec_pem(EC384_PUBLIC).unwrap().kid("ec384"))
        .key(Key::ed_pem(ED_PUBLIC).unwrap().kid("ed"))
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .build()
        .unwrap();
    let signers = [
        Signer::hmac(SECRET),
        Signer::rsa_pem(RSA_PRIVATE).unwrap().kid("rsa"),
        Signer::ec_pem(EC256_PRIVATE).unwrap().kid("ec256"),
        Signer::ec_pem(EC384_PRIVATE)
            .unwrap()
            .algorithm(tollgate::auth::Algorithm::ES384)
            .kid("ec384"),
        Signer::ed_pem(ED_PRIVATE).unwrap().kid("ed"),
    ];
    for signer in signers {
        let token = signer
            .sign(&claims(
                "kit-user",
                ISSUER,
                AUDIENCE,
                Duration::from_secs(60),
            ))
            .unwrap();
        send(&layer, bearer(&token)).await.assert_ok("kit-user");
    }
    assert!(Signer::rsa_pem(b"not a key").is_err());
}

/// Logout for stateless tokens: a revoked `jti` or a subject's older tokens
/// are refused on the next request, verified-token cache hits included.
#[tokio::test]
async fn revoked_tokens_are_refused_on_cache_hits_too() {
    use tollgate::auth::Revocations;
    let revocations = Revocations::new().clock(|| NOW);
    let layer = builder()
        .cache(16)
        .revocations(revocations.clone())
        .build()
        .unwrap();
    let session = |jti: &str, iat: u64| {
        mint(
            Algorithm::HS256,
            &with(&[("jti", json!(jti)), ("iat", json!(iat))]),
        )
    };
    let (a, b) = (session("a", NOW - 100), session("b", NOW - 50));
    for token in [&a, &a, &b] {
        send(&layer, bearer(token)).await.assert_ok("user-1");
    }
    // Logout of session a, from a handler that holds the caller's Identity.
    let svc = layer.clone().layer(tower::service_fn(|req: Request<()>| {
        let revocations = revocations.clone();
        async move {
            let identity = req.extensions().get::<tollgate::Identity>().unwrap();
            assert_eq!(identity.token_id(), Some("a"));
            assert!(revocations.revoke_token_of(identity));
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    }));
    assert_eq!(
        svc.oneshot(bearer(&a)).await.unwrap().status(),
        StatusCode::OK
    );
    send(&layer, bearer(&a))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Revoked);
    send(&layer, bearer(&b)).await.assert_ok("user-1");
    // Logout everywhere at NOW - 10: b (issued NOW - 50) goes, a session
    // issued after the cut-off stays.
    revocations.revoke_subject(Some(ISSUER), "user-1", NOW - 10);
    send(&layer, bearer(&b))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Revoked);
    send(&layer, bearer(&session("c", NOW - 5)))
        .await
        .assert_ok("user-1");
    // Another subject is untouched.
    let other = mint(
        Algorithm::HS256,
        &with(&[("sub", json!("user-2")), ("iat", json!(NOW - 100))]),
    );
    send(&layer, bearer(&other)).await.assert_ok("user-2");
}

/// Issue 22: a `Revocations` built in code kept a revoked `jti` for its own
/// default leeway (60 s), while the layer accepted the token for its leeway:
/// with a longer layer leeway, the revoked token came back.
#[tokio::test]
async fn revocations_attached_to_the_layer_use_its_leeway() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tollgate::auth::Revocations;
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = {
        let now = Arc::clone(&now);
        move || now.load(Ordering::SeqCst)
    };
    let revocations = Revocations::new().clock(clock.clone());
    let layer = builder()
        .clock(clock)
        .leeway(Duration::from_secs(300))
        .revocations(revocations.clone())
        .build()
        .unwrap();
    let exp = NOW + 100;
    let token = mint(
        Algorithm::HS256,
        &with(&[("jti", json!("lw")), ("exp", json!(exp))]),
    );
    revocations.revoke_token("lw", exp);
    // Past exp + 60 s, within the layer's leeway of 300 s: still refused as
    // revoked, not accepted.
    now.store(exp + 200, Ordering::SeqCst);
    revocations.cleanup();
    send(&layer, bearer(&token))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Revoked);
    // Past exp + 300 s the layer refuses it as expired anyway.
    now.store(exp + 300, Ordering::SeqCst);
    send(&layer, bearer(&token))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, AuthErrorKind::Expired);
}
