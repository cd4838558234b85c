//! Route rules declared in TOML, run by a real axum server and a real tonic
//! server on loopback: access modes, roles and scopes, which limits count
//! which routes, the default for unmatched paths, and errors that name the
//! rule and its line.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::config::TollgateConfig;
use tollgate::csrf::CsrfGuardLayer;
use tollgate::rate_limit::{KeyBy, Quota, RateLimitLayer};
use tollgate::routes::RouteTable;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

const ROUTES: &str = r#"
[routes]
roles_claims = ["roles", "realm_access.roles"]

[[routes.rule]]
path = "/public/{*rest}"
access = "off"
limits = []

[[routes.rule]]
path = "/feed"
access = "lenient"
limits = ["user"]

[[routes.rule]]
path = "/me"
limits = ["user"]

[[routes.rule]]
path = "/admin/{*rest}"
roles = { any_of = ["admin", "owner"] }
limits = ["user"]

[[routes.rule]]
path = "/write"
methods = ["POST"]
scopes = { all_of = ["read", "write"] }
limits = ["user"]
csrf = false

[[routes.rule]]
path = "/strict"
limits = ["strict"]
"#;

fn table() -> RouteTable {
    TollgateConfig::from_toml(ROUTES)
        .unwrap()
        .route_table(&["user", "strict"])
        .unwrap()
        .unwrap()
}

fn auth(table: &RouteTable) -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .routes(table)
        .build()
        .unwrap()
}

fn token(extra: Value) -> String {
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("roles");
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    mint(Algorithm::HS256, &claims)
}

/// Every route answers 200 "ok": what differs is what the layers do.
async fn serve_axum() -> String {
    let table = table();
    let user = RateLimitLayer::builder("user", Quota::per_minute(1000))
        .key(KeyBy::global())
        .build()
        .unwrap();
    let strict = RateLimitLayer::builder("strict", Quota::per_minute(1).burst(1))
        .key(KeyBy::global())
        .build()
        .unwrap();
    let ok = || axum::routing::any(|| async { "ok" });
    let app = axum::Router::new()
        .route("/public/{*rest}", ok())
        .route("/feed", ok())
        .route("/me", ok())
        .route("/admin/{*rest}", ok())
        .route("/write", ok())
        .route("/strict", ok())
        .route("/other", ok())
        .layer(
            ServiceBuilder::new()
                .layer(table.layer())
                .layer(auth(&table))
                .layer(CsrfGuardLayer::new())
                .layer(user)
                .layer(strict),
        );
    serve(app).await
}

async fn status(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<String>,
) -> u16 {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.header("cookie", format!("da3={token}"));
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn each_route_gets_what_its_rule_declares_in_axum() {
    let base = serve_axum().await;
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        status(
            &client,
            reqwest::Method::GET,
            format!("{base}{path}"),
            token.map(str::to_owned),
        )
    };
    let plain = token(json!({}));
    let admin = token(json!({"roles": ["reader", "admin"]}));
    let nested_owner = token(json!({"realm_access": {"roles": ["owner"]}}));
    let roles_string = token(json!({"roles": "owner"}));
    let garbage = "not.a.token";

    // Limits first: `strict` (burst 1) counts /strict and, as every limit
    // does, the routes no rule matches; not /me (`user` only) nor /public
    // (none).
    assert_eq!(get("/strict", Some(&plain)).await, 200);
    assert_eq!(get("/strict", Some(&plain)).await, 429);
    for _ in 0..3 {
        assert_eq!(get("/me", Some(&plain)).await, 200);
        assert_eq!(get("/public/x", None).await, 200);
    }

    // off: the token is not even looked at.
    assert_eq!(get("/public/a/b", None).await, 200);
    assert_eq!(get("/public/a/b", Some(garbage)).await, 200);
    // lenient: a bad token is anonymous; required: refused.
    assert_eq!(get("/feed", Some(garbage)).await, 200);
    assert_eq!(get("/me", Some(garbage)).await, 401);
    assert_eq!(get("/me", None).await, 401);
    assert_eq!(get("/me", Some(&plain)).await, 200);
    // roles: any of admin or owner, from `roles` or `realm_access.roles`.
    assert_eq!(get("/admin/x", Some(&plain)).await, 403);
    assert_eq!(get("/admin/x", Some(&admin)).await, 200);
    assert_eq!(get("/admin/x", Some(&nested_owner)).await, 200);
    assert_eq!(get("/admin/x", Some(&roles_string)).await, 200);
    assert_eq!(get("/admin/x", None).await, 401);
    // Unmatched: the default, a token required.
    assert_eq!(get("/other", None).await, 401);
    assert_eq!(get("/nowhere", None).await, 401);
    // With a token it passes auth, and every limit counts it: `strict` is spent.
    assert_eq!(get("/other", Some(&plain)).await, 429);

    // scopes: all of read and write, from `scope` (string) or `scp` (array);
    // POST only (a GET gets the default, required auth and no scopes).
    let post = |token: &str| {
        status(
            &client,
            reqwest::Method::POST,
            format!("{base}/write"),
            Some(token.to_owned()),
        )
    };
    assert_eq!(post(&token(json!({"scope": "read write"}))).await, 200);
    assert_eq!(post(&token(json!({"scp": ["write", "read"]}))).await, 200);
    assert_eq!(post(&token(json!({"scope": "read"}))).await, 403);
    assert_eq!(post(&plain).await, 403);
    // GET /write is no rule's: the default (auth, every limit).
    assert_eq!(get("/write", None).await, 401);
    assert_eq!(get("/write", Some(&plain)).await, 429);
}

#[tokio::test]
async fn the_csrf_guard_follows_the_rules() {
    let base = serve_axum().await;
    let client = reqwest::Client::new();
    let scoped = token(json!({"scope": "read write"}));
    let cross_site = |path: &str| {
        client
            .post(format!("{base}{path}"))
            .header("cookie", format!("da3={scoped}"))
            .header("sec-fetch-site", "cross-site")
            .send()
    };
    // /write turns the guard off; /me keeps it (the default).
    assert_eq!(cross_site("/write").await.unwrap().status().as_u16(), 200);
    assert_eq!(cross_site("/me").await.unwrap().status().as_u16(), 403);
}

async fn serve_tonic() -> SocketAddr {
    let table = TollgateConfig::from_toml(
        r#"
        [[routes.rule]]
        path = "/grpc.health.v1.Health/Check"
        access = "off"

        [[routes.rule]]
        path = "/grpc.health.v1.Health/{method}"
        roles = { all_of = ["ops"] }
        "#,
    )
    .unwrap()
    .route_table(&[])
    .unwrap()
    .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(table.layer())
            .layer(auth(&table))
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test]
async fn grpc_methods_are_routes_in_tonic() {
    let addr = serve_tonic().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let request = |token: Option<&str>| {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    // Check: off, no token needed.
    client.check(request(None)).await.unwrap();
    // Watch: a token with the role `ops`.
    let status = client.watch(request(None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let reader = token(json!({"roles": ["reader"]}));
    let status = client.watch(request(Some(&reader))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let ops = token(json!({"roles": ["ops"]}));
    client.watch(request(Some(&ops))).await.unwrap();
}

#[test]
fn configuration_errors_name_the_rule_and_its_line() {
    let error = |toml: &str| TollgateConfig::from_toml(toml).unwrap_err().to_string();
    let e = error("[[routes.rule]]\npath = \"/a\"\n\n[[routes.rule]]\npath = \"a/b\"\n");
    assert!(
        e.contains("routes.rule[1]") && e.contains("line 5") && e.contains("never match"),
        "{e}"
    );
    let e = error("[[routes.rule]]\npath = \"/a/{x}\"\n[[routes.rule]]\npath = \"/a/{y}\"\n");
    assert!(
        e.contains("shadows") && e.contains("line 4") && e.contains("line 2"),
        "{e}"
    );
    let e = error("[[routes.rule]]\npath = \"/a\"\nmethods = [\"get\"]\n");
    assert!(e.contains("field methods") && e.contains("line 2"), "{e}");
    let e = error("[[routes.rule]]\npath = \"/a\"\naccess = \"maybe\"\n");
    assert!(e.contains("line 3") && e.contains("maybe"), "{e}");
    let e = error("[[routes.rule]]\npath = \"/a\"\nrole = { any_of = [\"x\"] }\n");
    assert!(e.contains("line 3") && e.contains("role"), "{e}");
    let e = error("[[routes.rule]]\naccess = \"off\"\n");
    assert!(e.contains("needs a path"), "{e}");
    let e = error("[routes]\ndefault = { path = \"/x\" }\n");
    assert!(e.contains("routes.default") && e.contains("no path"), "{e}");
    let e = error(
        "[[routes.rule]]\npath = \"/a\"\naccess = \"lenient\"\nroles = { any_of = [\"x\"] }\n",
    );
    assert!(e.contains("required") && e.contains("line 2"), "{e}");

    // A limit no layer has would leave the route unlimited: refused.
    let config = TollgateConfig::from_toml(
        "[rate_limit]\ndefault = { name = \"anon\", per_minute = 1 }\n\n[[routes.rule]]\npath = \"/a\"\nlimits = [\"anonn\"]\n",
    )
    .unwrap();
    let e = config.route_table(&["per-ip"]).unwrap_err().to_string();
    assert!(
        e.contains("\"anonn\"") && e.contains("line 5") && e.contains("anon"),
        "{e}"
    );
    assert!(config.route_table(&["anonn"]).is_ok());
}

#[tokio::test]
async fn a_route_needing_roles_behind_a_layer_that_does_not_read_them_is_refused() {
    let table = table();
    // Built without .routes(&table): it reads no roles, so it cannot grant.
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/admin/{*rest}", axum::routing::get(|| async { "ok" }))
        .layer(ServiceBuilder::new().layer(table.layer()).layer(auth));
    let base = serve(app).await;
    let admin = token(json!({"roles": ["admin"]}));
    let client = reqwest::Client::new();
    assert_eq!(
        status(
            &client,
            reqwest::Method::GET,
            format!("{base}/admin/x"),
            Some(admin)
        )
        .await,
        403
    );
}

#[tokio::test]
async fn a_file_holds_several_named_limits_that_routes_refer_to() {
    let config = TollgateConfig::from_toml(
        r#"
        [rate_limit]
        key = "global"
        default = { name = "user", per_minute = 600, burst = 100 }

        [limits.per-ip]
        key = "global"
        default = { name = "per-ip", per_minute = 1, burst = 2 }

        [[routes.rule]]
        path = "/ip"
        access = "off"
        limits = ["per-ip"]

        [[routes.rule]]
        path = "/user"
        access = "off"
        limits = ["user"]
        "#,
    )
    .unwrap();
    assert!(config.limit("nope").is_none());
    let table = config.route_table(&[]).unwrap().unwrap();
    let per_ip = config.limit("per-ip").unwrap().layer().await.unwrap();
    let user = config.rate_limit.as_ref().unwrap().layer().await.unwrap();
    let app = axum::Router::new()
        .route("/ip", axum::routing::get(|| async { "ok" }))
        .route("/user", axum::routing::get(|| async { "ok" }))
        .layer(
            ServiceBuilder::new()
                .layer(table.layer())
                .layer(per_ip)
                .layer(user),
        );
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let get = |path: &str| status(&client, reqwest::Method::GET, format!("{base}{path}"), None);
    for _ in 0..5 {
        assert_eq!(get("/user").await, 200);
    }
    assert_eq!(get("/ip").await, 200);
    assert_eq!(get("/ip").await, 200);
    assert_eq!(get("/ip").await, 429);
    assert_eq!(get("/user").await, 200);

    // A route naming a limit that no table defines is refused.
    let misspelt = TollgateConfig::from_toml(
        "[limits.per-ip]\ndefault = { name = \"per-ip\", per_minute = 1 }\n[[routes.rule]]\npath = \"/a\"\nlimits = [\"per_ip\"]\n",
    )
    .unwrap();
    let e = misspelt.route_table(&[]).unwrap_err().to_string();
    assert!(e.contains("\"per_ip\"") && e.contains("line 4"), "{e}");
}

/// The table of `serve_axum`, mounted in `layers`' order (auth built with
/// the table), on an app whose every route answers 200.
async fn serve_with(layers: &str) -> String {
    let table = table();
    let auth = auth(&table);
    let ok = || axum::routing::any(|| async { "ok" });
    let app = axum::Router::new()
        .route("/public/{*rest}", ok())
        .route("/me", ok())
        .route("/admin/{*rest}", ok())
        .route("/reports", ok());
    let app = match layers {
        // axum's Router::layer wraps what is already there: the last call is
        // outermost. This puts the route rules inside auth.
        "reversed" => app
            .layer(auth)
            .layer(CsrfGuardLayer::new())
            .layer(table.layer()),
        "auth only" => app.layer(auth),
        _ => app.layer(ServiceBuilder::new().layer(table.layer()).layer(auth)),
    };
    serve(app).await
}

#[tokio::test]
async fn rules_hold_when_the_route_layer_is_missing_or_misordered() {
    let client = reqwest::Client::new();
    let plain = token(json!({}));
    let admin = token(json!({"roles": ["admin"]}));
    for layers in ["reversed", "auth only"] {
        let base = serve_with(layers).await;
        let get = |path: &str, token: Option<&str>| {
            status(
                &client,
                reqwest::Method::GET,
                format!("{base}{path}"),
                token.map(str::to_owned),
            )
        };
        assert_eq!(get("/admin/x", Some(&plain)).await, 403, "{layers}");
        assert_eq!(get("/admin/x", Some(&admin)).await, 200, "{layers}");
        assert_eq!(get("/public/x", None).await, 200, "{layers}");
        assert_eq!(get("/me", None).await, 401, "{layers}");
    }
}

#[tokio::test]
async fn paths_in_no_canonical_form_get_no_weaker_rule() {
    use tower::ServiceExt;
    // In process: an HTTP client would normalise these paths before sending.
    let table = table();
    let app = axum::Router::new()
        .route("/public/{*rest}", axum::routing::get(|| async { "ok" }))
        .route("/admin/{*rest}", axum::routing::get(|| async { "ok" }))
        .layer(
            ServiceBuilder::new()
                .layer(table.layer())
                .layer(auth(&table)),
        );
    let call = |path: &str, token: Option<String>| {
        let mut request = http::Request::get(path);
        if let Some(token) = token {
            request = request.header("cookie", format!("da3={token}"));
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap().status().as_u16() }
    };
    let plain = token(json!({}));
    let admin = token(json!({"roles": ["admin"]}));
    // Each could reach the admin handler behind a normalising backend, or
    // dodge a rule; none gets through, even to an `off` route.
    for path in [
        "//admin/x",
        "/public/../admin/x",
        "/public/..",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E%2Fadmin/x",
        "/public/.%2fadmin",
        "/public/./x",
        "/public/%5cadmin",
    ] {
        assert_eq!(call(path, None).await, 401, "{path}");
        assert_eq!(call(path, Some(admin.clone())).await, 403, "{path}");
    }
    // Ordinary encodings and a trailing slash are not refused.
    assert_eq!(call("/public/a%20b", None).await, 200);
    assert_eq!(call("/public/x/", Some(plain)).await, 200);
    assert_eq!(call("/admin/x", Some(admin)).await, 200);
}

#[tokio::test]
async fn head_follows_the_rule_of_get() {
    let table = TollgateConfig::from_toml(
        "[[routes.rule]]\npath = \"/reports\"\nmethods = [\"GET\"]\nroles = { any_of = [\"admin\"] }\n",
    )
    .unwrap()
    .route_table(&[])
    .unwrap()
    .unwrap();
    let route = table.matched(&http::Method::HEAD, "/reports");
    assert_eq!(route.pattern(), "/reports");
    assert!(!route.roles().any_of.is_empty());
}

#[tokio::test]
async fn roles_are_whole_strings_scopes_are_space_separated() {
    let config = TollgateConfig::from_toml(
        r#"
        [routes]
        roles_claims = ["roles", "https://app.example.com/roles"]

        [[routes.rule]]
        path = "/admins"
        roles = { any_of = ["Admins"] }

        [[routes.rule]]
        path = "/writers"
        scopes = { all_of = ["write"] }
        "#,
    )
    .unwrap();
    let table = config.route_table(&[]).unwrap().unwrap();
    let auth = auth(&table);
    let app = axum::Router::new()
        .route("/admins", axum::routing::get(|| async { "ok" }))
        .route("/writers", axum::routing::get(|| async { "ok" }))
        .layer(ServiceBuilder::new().layer(table.layer()).layer(auth));
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let get = |path: &str, claims: Value| {
        status(
            &client,
            reqwest::Method::GET,
            format!("{base}{path}"),
            Some(token(claims)),
        )
    };
    // One role with a space in it is not two roles.
    assert_eq!(get("/admins", json!({"roles": "Domain Admins"})).await, 403);
    assert_eq!(get("/admins", json!({"roles": "Admins"})).await, 200);
    // A claim named like a URL, dots and all.
    assert_eq!(
        get(
            "/admins",
            json!({"https://app.example.com/roles": ["Admins"]})
        )
        .await,
        200
    );
    assert_eq!(get("/writers", json!({"scope": "read write"})).await, 200);
    assert_eq!(get("/writers", json!({"scope": "read"})).await, 403);
    // A roles claim given twice: refused rather than read two ways.
    let claims = format!(
        r#"{{"sub":"u","iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"roles":[],"roles":["Admins"]}}"#,
        NOW + 3600
    );
    let twice = sign_raw(
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims.as_bytes(),
        Algorithm::HS256,
        &encoding_key(Algorithm::HS256),
    );
    assert_eq!(
        status(
            &client,
            reqwest::Method::GET,
            format!("{base}/admins"),
            Some(twice)
        )
        .await,
        401
    );
}
