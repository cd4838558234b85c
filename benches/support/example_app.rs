//! The example service's router for benches: `examples/graphql.rs` as a
//! module, its configuration with quotas no bench exhausts, and its request.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, header};

#[path = "../../examples/graphql.rs"]
#[allow(dead_code, unreachable_pub)]
pub mod graphql;

/// One GraphQL query, as `scripts/figures.sh` sends it with wrk.
pub const QUERY: &str = r#"{"query":"{ anonymousFeed(first: 1) { title } }"}"#;

/// The example's configuration with the layers `"on"` or `"off"`.
pub fn config(layers: &'static str) -> graphql::Config {
    graphql::Config::from_vars(move |name| {
        let value = match name {
            "TOLLGATE_SECRET" => "bench-secret-of-at-least-32-bytes!!!!",
            "TOLLGATE_LAYERS" => layers,
            "TOLLGATE_IP_PER_MIN"
            | "TOLLGATE_IP_BURST"
            | "TOLLGATE_USER_PER_MIN"
            | "TOLLGATE_USER_BURST"
            | "TOLLGATE_COST_PER_MIN"
            | "TOLLGATE_COST_BURST" => "4000000000",
            _ => return None,
        };
        Some(value.to_owned())
    })
    .expect("config")
}

/// The session cookie of a minted token.
pub fn cookie() -> String {
    let token = config("on").mint("bench-user").expect("token");
    format!("theme=dark; da3={token}")
}

/// The query with the session cookie, from a client address.
pub fn request(cookie: &str) -> Request<Body> {
    let mut req = Request::post("/graphql")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, cookie)
        .body(Body::from(QUERY))
        .expect("request");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
    req
}
