//! The service that "broke the gateway": an axum + async-graphql API that
//! verifies the session JWT from the `da3` cookie itself and rate-limits per
//! user or per client IP, with no gateway in front.
//!
//! Run: `cargo run --release --example graphql`
//! Mint a dev token: `cargo run --example graphql -- mint <subject>`
//!
//! Environment (all optional):
//! - `TOLLGATE_ADDR` (default `127.0.0.1:4000`)
//! - `TOLLGATE_SECRET`: HS256 secret, at least 32 bytes (a dev secret otherwise)
//! - `TOLLGATE_ISSUER`, `TOLLGATE_AUDIENCE`: expected `iss` / `aud` (default `tollgate-example`)
//! - `TOLLGATE_IP_PER_MIN`, `TOLLGATE_IP_BURST`: every caller, per client IP, before
//!   any token is verified (1200, 200): a flood of junk tokens is refused cheaply
//! - `TOLLGATE_ANON_PER_MIN`, `TOLLGATE_ANON_BURST`: anonymous callers, per client IP (60, 20)
//! - `TOLLGATE_USER_PER_MIN`, `TOLLGATE_USER_BURST`: registered callers, per subject (600, 100)
//! - `TOLLGATE_IN_FLIGHT`: requests in flight at once per caller (16)
//! - `TOLLGATE_COST_PER_MIN`, `TOLLGATE_COST_BURST`, `TOLLGATE_MAX_COST`:
//!   GraphQL units per caller (600 a minute, burst 120) and the most one
//!   query may cost (60); see "What a query costs" below
//! - `TOLLGATE_TRUSTED_PROXIES`: comma-separated CIDRs whose `X-Forwarded-For` is trusted (none)
//! - `TOLLGATE_JWKS_URL` or `TOLLGATE_OIDC_ISSUER`: trust an identity provider's
//!   keys (fetched and rotated in the background) instead of `TOLLGATE_SECRET`;
//!   `mint` then needs the secret anyway, as the provider signs real tokens
//! - `TOLLGATE_REFRESH_WITHIN_SECS`: sliding refresh (default off): a session
//!   cookie with at most this many seconds left gets a re-minted successor
//!   (same claims, new `iat`/`exp`, signed with `TOLLGATE_SECRET`) in a
//!   `Set-Cookie` on successful responses; needs the secret, not remote keys
//! - `TOLLGATE_CONFIG`: a TOML file with `[auth]` and `[rate_limit]` tables (see
//!   `examples/tollgate.toml`); it replaces the key and quota variables above.
//!   Its `[auth.revocation]` table makes the auth layer refuse revoked tokens;
//!   with `redis_url` the revocations are shared by every replica through
//!   Redis, without it they are per process
//! - `TOLLGATE_PUBLIC_SCHEME`: the scheme browsers reach the service at, for
//!   the CSRF guard's same-origin check (default `http`, what this example
//!   serves; `https` behind an ingress that terminates TLS)
//! - `TOLLGATE_LAYERS=off`: serve without tollgate (for throughput comparisons only)
//! - `TOLLGATE_LOGIN_PASSWORD`: the demo password of `POST /login` (default
//!   `tollgate-demo` with the built-in dev secret; unset otherwise, and
//!   `/login` is not served)
//!
//! `POST /login` (JSON `{"subject": "...", "password": "..."}`) is a demo
//! login: the right password sets a `da3` session cookie (204); a wrong one
//! answers 401 and counts against the client's address and the account it
//! named; after 5 failures within 5 minutes the address, or the account, is
//! locked out (429, problem type `abnormal-usage-detected`) for 1 minute,
//! doubling with each lockout (`[lockouts.login]` in `TOLLGATE_CONFIG`
//! changes that). A locked account still lets in the addresses its owner
//! logged in from within 30 days.
//!
//! With `TOLLGATE_JWKS_URL` or `TOLLGATE_OIDC_ISSUER`, `POST
//! /oidc/backchannel-logout` receives the provider's OpenID Connect
//! back-channel logouts (register it as the client's
//! `backchannel_logout_uri`): the session the logout token names is refused
//! from then on.
//!
//! `POST /logout` revokes the caller's token (its `jti`) and `POST
//! /logout-everywhere` every token of the caller's subject issued until now;
//! both answer 204 and clear the cookie, need a token (401 without) and are
//! behind the CSRF guard. Revocations are kept in this process, or shared
//! through Redis by `[auth.revocation]` in `TOLLGATE_CONFIG`.
//!
//! What a query costs (`POST /graphql`, charged against the caller's
//! `graphql-cost` bucket, by subject or else client IP): 1 unit at the door;
//! before the query runs, its estimate by this table — every field 1 plus
//! what it selects, a feed (`feed`, `anonymousFeed`, `slowFeed`) `first`
//! (default 3, at most 5) times what each post selects: `{ feed(first: 5) {
//! id title } }` costs 1 + 10. After it ran, the query is settled at what
//! the response returned by the same table, so what it did not return (an
//! anonymous caller's `feed` is refused) is given back. A query the bucket
//! cannot cover now is answered 429 with `Retry-After`; one that costs more
//! than `TOLLGATE_MAX_COST` in all, 429 `too_costly`. The response's
//! `RateLimit` field for `graphql-cost` says what is left.
//!
//! `GET /metrics` serves tollgate's statistics in the Prometheus text format.
//! Logs go to stderr: `warn`, and `info` for tollgate, unless `RUST_LOG` says
//! otherwise.
//!
//! The stack, outermost first, on every route: a coarse limit per client IP
//! (`/healthz` exempt) → JWT auth → CSRF guard (`/graphql`, `/logout*`) → a
//! limit per verified subject (per client IP for anonymous callers) → the
//! GraphQL cost limit (`/graphql`) → the in-flight cap.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{
    Context, EmptyMutation, EmptySubscription, ErrorExtensions, Object, Schema, SimpleObject,
    Value, Variables,
};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tollgate::auth::{BackChannelLogout, JwtAuthLayer, Key, RemoteKeys, Revocations};
use tollgate::concurrency::ConcurrencyLimitLayer;
use tollgate::config::TollgateConfig;
use tollgate::csrf::CsrfGuardLayer;
use tollgate::lockout::{AccountGuard, LockoutLayer, LoginFailed, LoginSucceeded};
use tollgate::rate_limit::store::AnyStore;
use tollgate::rate_limit::{Cost, KeyBy, LocalStore, Quota, RateLimitLayer, TrustedProxies};
use tollgate::refresh::{Refresh, RefreshSessionLayer, SigningKey};
use tollgate::routes::RouteTable;
use tollgate::{Claims, Identity};
use tower::ServiceBuilder;

const DEV_SECRET: &str = "tollgate-example-dev-secret-not-for-production";

/// The session claims the auth service puts in the `da3` cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    sub: String,
    iss: String,
    aud: Audience,
    exp: u64,
    /// Issue time: what logout-everywhere cuts at, and the lifetime a
    /// refresh keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Token id: what logout revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3); tollgate has
/// already checked that it names this service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(SimpleObject)]
struct Post {
    id: i32,
    title: String,
    personalized: bool,
}

#[derive(SimpleObject)]
struct Me {
    id: String,
    roles: Vec<String>,
}

struct Query;

fn posts(first: Option<i32>, personalized: bool) -> Vec<Post> {
    let titles = [
        "Break the gateway",
        "JWTs are stateless",
        "GCRA in one page",
        "IPv6 and /64",
        "Cookies over HTTP/2",
    ];
    let n = usize::try_from(first.unwrap_or(3).clamp(0, 5)).unwrap_or(0);
    titles
        .iter()
        .zip(1..)
        .take(n)
        .map(|(title, id)| Post {
            id,
            title: (*title).to_owned(),
            personalized,
        })
        .collect()
}

/// Posts a feed returns for `first` (default 3, at most 5): what its
/// complexity counts.
fn feed_length(first: Option<i32>) -> usize {
    usize::try_from(first.unwrap_or(3).clamp(0, 5)).unwrap_or(0)
}

#[Object]
impl Query {
    /// The public feed, for anyone.
    async fn anonymous_feed(&self, first: Option<i32>) -> Vec<Post> {
        posts(first, false)
    }

    /// The personal feed, for registered users only.
    async fn feed(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<Post>> {
        if ctx.data_opt::<Claims<User>>().is_none() {
            return Err(async_graphql::Error::new("log in to see your feed")
                .extend_with(|_, e| e.set("code", "UNAUTHENTICATED")));
        }
        Ok(posts(first, true))
    }

    /// The public feed from a slow backend: it answers after `delayMs`
    /// milliseconds (at most 2,000) — a query that holds its caller's
    /// in-flight slot meanwhile.
    async fn slow_feed(&self, first: Option<i32>, delay_ms: Option<i32>) -> Vec<Post> {
        let delay = u64::try_from(delay_ms.unwrap_or(500).clamp(0, 2_000)).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        posts(first, false)
    }

    /// The caller, if logged in.
    async fn me(&self, ctx: &Context<'_>) -> Option<Me> {
        ctx.data_opt::<Claims<User>>().map(|user| Me {
            id: user.sub.clone(),
            roles: user.roles.clone(),
        })
    }
}

type AppSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// The fields that return a feed: `first` posts (default 3, at most 5).
const FEEDS: [&str; 3] = ["feed", "anonymousFeed", "slowFeed"];

/// Nesting past this, or a walk over more selections than
/// [`MAX_VISITS`], is charged as too costly (before validation, a hostile
/// document may spread fragments in a cycle, or into each other many times
/// over).
const MAX_DEPTH: u32 = 32;
const MAX_VISITS: u32 = 10_000;

/// What a selection costs by the cost table (see the module docs): every
/// field 1 plus what it selects, a feed `first` times what each post
/// selects.
fn selection_cost(
    set: &SelectionSet,
    doc: &ExecutableDocument,
    variables: &Variables,
    depth: u32,
    visits: &mut u32,
) -> u64 {
    if depth > MAX_DEPTH || *visits >= MAX_VISITS {
        *visits = MAX_VISITS;
        return u64::from(u32::MAX);
    }
    let mut cost = 0_u64;
    for item in &set.items {
        *visits += 1;
        let item_cost = match &item.node {
            Selection::Field(field) => {
                let field = &field.node;
                let children =
                    selection_cost(&field.selection_set.node, doc, variables, depth + 1, visits);
                if FEEDS.contains(&field.name.node.as_str()) {
                    let first = field
                        .arguments
                        .iter()
                        .find(|(name, _)| name.node.as_str() == "first")
                        .and_then(|(_, value)| {
                            value
                                .node
                                .clone()
                                .into_const_with(|name| variables.get(&name).cloned().ok_or(()))
                                .ok()
                        })
                        .and_then(|value| match value {
                            Value::Number(n) => n.as_i64(),
                            _ => None,
                        })
                        .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
                    (feed_length(first) as u64).saturating_mul(children)
                } else {
                    children.saturating_add(1)
                }
            }
            Selection::FragmentSpread(spread) => doc
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |fragment| {
                    selection_cost(
                        &fragment.node.selection_set.node,
                        doc,
                        variables,
                        depth + 1,
                        visits,
                    )
                }),
            Selection::InlineFragment(inline) => selection_cost(
                &inline.node.selection_set.node,
                doc,
                variables,
                depth + 1,
                visits,
            ),
        };
        cost = cost.saturating_add(item_cost);
    }
    cost
}

/// What the query is estimated to cost before it runs, beyond the door's
/// unit: its operation's selections by the cost table. `None`: the document
/// does not parse or names no such operation (execution reports that).
fn estimate(request: &mut async_graphql::Request) -> Option<u64> {
    // The document is parsed once: execution reuses it.
    let variables = std::mem::take(&mut request.variables);
    let operation = request.operation_name.clone();
    let cost = request.parsed_query().ok().and_then(|doc| {
        let selections = doc.operations.iter().find_map(|(name, op)| {
            let wanted = match (&operation, name) {
                (None, _) => true,
                (Some(wanted), Some(name)) => name.as_str() == wanted,
                (Some(_), None) => false,
            };
            wanted.then_some(&op.node.selection_set.node)
        })?;
        Some(selection_cost(selections, doc, &variables, 0, &mut 0))
    });
    request.variables = variables;
    cost
}

/// What a response returned by the cost table: every field 1 plus what it
/// holds, a list of posts what each post holds; nothing for a null.
fn returned_cost(fields: &async_graphql::indexmap::IndexMap<async_graphql::Name, Value>) -> u64 {
    fields
        .values()
        .map(|value| match value {
            Value::Null => 0,
            Value::Object(fields) => returned_cost(fields).saturating_add(1),
            Value::List(items) if items.iter().all(|i| matches!(i, Value::Object(_))) => items
                .iter()
                .map(|item| match item {
                    Value::Object(fields) => returned_cost(fields),
                    _ => 0,
                })
                .fold(0, u64::saturating_add),
            _ => 1,
        })
        .fold(0, u64::saturating_add)
}

/// `POST /graphql`. With the cost limit in front (a [`Cost`] in the
/// request), the query is charged its estimate before it runs — a bucket
/// that cannot cover it answers the standard 429 — and settled at what the
/// response returned after.
async fn graphql(
    State(schema): State<AppSchema>,
    user: Option<Extension<Claims<User>>>,
    cost: Option<Extension<Cost>>,
    Json(request): Json<async_graphql::Request>,
) -> axum::response::Response {
    let mut request = request;
    if let Some(Extension(user)) = user {
        request = request.data(user);
    }
    let Some(Extension(cost)) = cost else {
        return Json(schema.execute(request).await).into_response();
    };
    if let Some(estimate) = estimate(&mut request)
        && let Err(refused) = cost
            .charge(u32::try_from(estimate).unwrap_or(u32::MAX))
            .await
    {
        return refused.into_response();
    }
    let response = schema.execute(request).await;
    // A null `data` (an error reached the root) returned nothing.
    let returned = match &response.data {
        Value::Object(fields) => returned_cost(fields),
        _ => 0,
    };
    cost.settle(
        u32::try_from(returned)
            .unwrap_or(u32::MAX)
            .saturating_add(1),
    )
    .await;
    Json(response).into_response()
}

async fn graphiql() -> Html<String> {
    Html(
        async_graphql::http::GraphiQLSource::build()
            .endpoint("/graphql")
            .finish(),
    )
}

async fn me(Claims(user): Claims<User>) -> impl IntoResponse {
    Json(user.as_ref().clone())
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 204, and the browser drops the session cookie.
fn logged_out() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            "da3=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax",
        )],
    )
}

/// `POST /logout`: this session's token is refused from now on, on this
/// process (until it would have expired anyway).
async fn logout(
    State(revocations): State<Revocations>,
    identity: Identity,
) -> axum::response::Response {
    if revocations.revoke_token_of(&identity) {
        logged_out().into_response()
    } else {
        // A token without `jti` cannot be revoked alone.
        (
            StatusCode::CONFLICT,
            "this token has no jti: use /logout-everywhere",
        )
            .into_response()
    }
}

/// `POST /logout-everywhere`: every token of the caller's subject issued
/// until now is refused; tokens issued later are not.
async fn logout_everywhere(
    State(revocations): State<Revocations>,
    identity: Identity,
) -> axum::response::Response {
    if revocations.revoke_subject_of(&identity, unix_now()) {
        logged_out().into_response()
    } else {
        (StatusCode::CONFLICT, "this token has no subject").into_response()
    }
}

/// `POST /login`'s password and what it signs sessions with.
struct Login {
    password: String,
    secret: String,
    issuer: String,
    audience: String,
}

#[derive(Deserialize)]
struct Credentials {
    subject: String,
    password: String,
}

/// Equal, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// `POST /login`: a demo password check. The response tells the lockout in
/// front how the attempt ended: `LoginFailed` counts against the client's
/// address and the account it named; `LoginSucceeded` clears the account's
/// failures and makes the address known to it (the address's own failures
/// stay: `clear_on_success` is off, as several accounts may share one).
async fn login(
    State(login): State<std::sync::Arc<Login>>,
    account: Option<Extension<AccountGuard>>,
    Json(credentials): Json<Credentials>,
) -> axum::response::Response {
    let subject_ok = !credentials.subject.is_empty()
        && credentials.subject.len() <= 64
        && credentials
            .subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    // The account this login targets, named before the password is looked
    // at: a locked account refuses addresses its owner did not log in from.
    if subject_ok
        && let Some(Extension(account)) = account
        && let Err(locked) = account.check(&credentials.subject)
    {
        return locked.into_response();
    }
    if !subject_ok || !same_secret(credentials.password.as_bytes(), login.password.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Extension(LoginFailed),
            "wrong subject or password",
        )
            .into_response();
    }
    match mint_token(
        &login.secret,
        &login.issuer,
        &login.audience,
        &credentials.subject,
    ) {
        Ok(token) => (
            StatusCode::NO_CONTENT,
            Extension(LoginSucceeded),
            [(
                header::SET_COOKIE,
                format!("da3={token}; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"),
            )],
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A session token of an hour for `subject`, signed with `secret`.
fn mint_token(
    secret: &str,
    issuer: &str,
    audience: &str,
    subject: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    tollgate::crypto::install_default_provider();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let claims = User {
        sub: subject.to_owned(),
        iss: issuer.to_owned(),
        aud: Audience::One(audience.to_owned()),
        exp: now.as_secs() + 3600,
        iat: Some(now.as_secs()),
        // Unique enough for an example: the issue time in nanoseconds.
        jti: Some(format!("{subject}-{:x}", now.as_nanos())),
        roles: vec!["reader".to_owned()],
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

pub(crate) struct Config {
    addr: String,
    secret: String,
    dev_secret: bool,
    issuer: String,
    audience: String,
    per_ip: Quota,
    anon: Quota,
    user: Quota,
    in_flight: u32,
    cost: Quota,
    max_cost: u32,
    proxies: TrustedProxies,
    layers: bool,
    jwks_url: Option<String>,
    oidc_issuer: Option<String>,
    file: Option<TollgateConfig>,
    refresh_within: Option<Duration>,
    scheme: http::uri::Scheme,
    login_password: Option<String>,
}

impl Config {
    fn from_env() -> Result<Self, Box<dyn std::error::Error>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The configuration from variables looked up by `lookup` (the
    /// environment, or a bench's fixed set).
    pub(crate) fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let var = |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.to_owned());
        let env_u32 = |name: &str, default: u32| -> Result<u32, String> {
            match lookup(name) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name} must be a whole number, got {v:?}")),
                None => Ok(default),
            }
        };
        let (secret, dev_secret) = match lookup("TOLLGATE_SECRET") {
            Some(s) => (s, false),
            None => (DEV_SECRET.to_owned(), true),
        };
        let proxies = var("TOLLGATE_TRUSTED_PROXIES", "");
        Ok(Self {
            addr: var("TOLLGATE_ADDR", "127.0.0.1:4000"),
            secret,
            dev_secret,
            issuer: var("TOLLGATE_ISSUER", "tollgate-example"),
            audience: var("TOLLGATE_AUDIENCE", "tollgate-example"),
            per_ip: Quota::per_minute(env_u32("TOLLGATE_IP_PER_MIN", 1200)?)
                .burst(env_u32("TOLLGATE_IP_BURST", 200)?),
            anon: Quota::per_minute(env_u32("TOLLGATE_ANON_PER_MIN", 60)?)
                .burst(env_u32("TOLLGATE_ANON_BURST", 20)?),
            user: Quota::per_minute(env_u32("TOLLGATE_USER_PER_MIN", 600)?)
                .burst(env_u32("TOLLGATE_USER_BURST", 100)?),
            in_flight: env_u32("TOLLGATE_IN_FLIGHT", 16)?,
            cost: Quota::per_minute(env_u32("TOLLGATE_COST_PER_MIN", 600)?)
                .burst(env_u32("TOLLGATE_COST_BURST", 120)?),
            max_cost: env_u32("TOLLGATE_MAX_COST", 60)?,
            proxies: TrustedProxies::cidrs(proxies.split(','))?,
            layers: var("TOLLGATE_LAYERS", "on") != "off",
            jwks_url: lookup("TOLLGATE_JWKS_URL").filter(|v| !v.is_empty()),
            oidc_issuer: lookup("TOLLGATE_OIDC_ISSUER").filter(|v| !v.is_empty()),
            file: match lookup("TOLLGATE_CONFIG") {
                Some(path) if !path.is_empty() => Some(TollgateConfig::from_file(path)?),
                _ => None,
            },
            refresh_within: match env_u32("TOLLGATE_REFRESH_WITHIN_SECS", 0)? {
                0 => None,
                secs => Some(Duration::from_secs(secs.into())),
            },
            login_password: lookup("TOLLGATE_LOGIN_PASSWORD")
                .filter(|v| !v.is_empty())
                .or_else(|| dev_secret.then(|| "tollgate-demo".to_owned())),
            scheme: match var("TOLLGATE_PUBLIC_SCHEME", "http").as_str() {
                "http" => http::uri::Scheme::HTTP,
                "https" => http::uri::Scheme::HTTPS,
                other => {
                    return Err(format!(
                        "TOLLGATE_PUBLIC_SCHEME must be http or https, got {other:?}"
                    )
                    .into());
                }
            },
        })
    }

    pub(crate) fn mint(&self, subject: &str) -> Result<String, Box<dyn std::error::Error>> {
        mint_token(&self.secret, &self.issuer, &self.audience, subject)
    }
}

/// The service: routes and tollgate's layers. `prometheus` renders the
/// statistics at `/metrics` (its recorder is installed by the caller: `main`
/// globally, the `example` bench around its requests).
pub(crate) async fn app(
    config: &Config,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Router, Box<dyn std::error::Error>> {
    let graphql_routes = get(graphiql).post(graphql);
    // Statistics in the Prometheus text format at /metrics.
    let metrics = get(move || std::future::ready(prometheus.render()));
    if !config.layers {
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription).finish();
        return Ok(Router::new()
            .route("/graphql", graphql_routes)
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", metrics)
            .with_state(schema));
    }
    let schema = Schema::build(Query, EmptyMutation, EmptySubscription).finish();
    // Logged-out tokens, checked by the auth layer on every request (in
    // this process unless the policy file shares them; `max_token_lifetime`
    // bounds how long a logout-everywhere is kept: the example's tokens
    // live an hour).
    let local = Revocations::new().max_token_lifetime(Duration::from_secs(3600));
    // Which layers do what on which route is declared in the `[routes]`
    // table of the policy file (or, without one, of examples/tollgate.toml).
    let routes = route_table(config)?;
    let (auth, refresh, limit) = match &config.file {
        Some(file) => from_file(file, &local, &routes).await?,
        None => from_env(config, &local, &routes).await?,
    };
    let revocations = auth.revocations().cloned().unwrap_or(local);
    // Logout needs a token (401 without), and a cookie-authenticated POST
    // from another site is refused by the CSRF guard.
    // The guard compares an `Origin` with the scheme browsers use here.
    let csrf = CsrfGuardLayer::new().scheme(config.scheme.clone());
    let mut logout_routes = Router::new()
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .with_state(revocations);
    // With an identity provider's keys, its back-channel logouts end
    // sessions here too (its rule in examples/tollgate.toml: no token, no
    // CSRF guard, the per-IP limit).
    if config.jwks_url.is_some() || config.oidc_issuer.is_some() {
        logout_routes = logout_routes.route_service(
            "/oidc/backchannel-logout",
            BackChannelLogout::builder(&auth).build()?,
        );
    }
    // The demo login, behind a lockout of the client address that failed
    // too often: the policy file's `[lockouts.login]`, else the defaults
    // (5 failures in 5 minutes lock it out for 1 minute, doubling).
    if let Some(password) = &config.login_password {
        let lockout = match config.file.as_ref().and_then(|f| f.lockout("login")) {
            Some(table) => table.layer("login").await?,
            None => LockoutLayer::builder(KeyBy::client_ip(config.proxies.clone()))
                .name("login")
                .per_account(true)
                .build()?,
        };
        let state = std::sync::Arc::new(Login {
            password: password.clone(),
            secret: config.secret.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        });
        logout_routes = logout_routes.merge(
            Router::new()
                .route("/login", post(login).layer(lockout))
                .with_state(state),
        );
    }
    // A coarse limit per client IP, so that a flood of junk tokens is
    // refused before any signature is checked: the policy file's
    // `[limits.per-ip]`, else the environment's quota.
    let per_ip = match config.file.as_ref().and_then(|file| file.limit("per-ip")) {
        Some(limit) => limit.layer().await?,
        None => RateLimitLayer::builder("per-ip", config.per_ip)
            .key(KeyBy::client_ip(config.proxies.clone()))
            .store(AnyStore::Local(LocalStore::new()))
            .build()?,
    };
    // At most this many requests in flight per caller (the verified
    // subject, the client IP for anonymous callers): a slow query holds its
    // slot until its response has been sent.
    let in_flight = match config
        .file
        .as_ref()
        .and_then(|f| f.concurrency("in-flight"))
    {
        Some(table) => table.layer("in-flight").await?,
        None => ConcurrencyLimitLayer::builder(config.in_flight)
            .name("in-flight")
            .key(KeyBy::subject_or_client_ip(config.proxies.clone()))
            .build()?,
    };
    // GraphQL queries charged by cost, per caller (the route rules apply it
    // to /graphql): the policy file's `[limits.graphql-cost]`, else the
    // environment's.
    let cost = match config.file.as_ref().and_then(|f| f.limit("graphql-cost")) {
        Some(limit) => limit.layer().await?,
        None => RateLimitLayer::builder("graphql-cost", config.cost)
            .key(KeyBy::subject_or_client_ip(config.proxies.clone()))
            .charged_by_handler(config.max_cost)
            .store(AnyStore::Local(LocalStore::new()))
            .build()?,
    };
    // One stack on every route, in this order (ServiceBuilder: first is
    // outermost): the route rules → per-IP limit → auth → sliding refresh
    // (when on) → CSRF guard → the per-subject limit → the GraphQL cost
    // limit → the in-flight cap.
    // Each layer does on each route what its rule says.
    Ok(Router::new()
        .route("/graphql", graphql_routes)
        .route("/me", get(me))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", metrics)
        .with_state(schema)
        .merge(logout_routes)
        .layer(
            ServiceBuilder::new()
                .layer(routes.layer())
                .layer(per_ip)
                .layer(auth)
                .option_layer(refresh)
                .layer(csrf)
                .layer(limit)
                .layer(cost)
                .layer(in_flight),
        ))
}

/// The route rules: the policy file's `[routes]`, else those of
/// examples/tollgate.toml. Every limit a rule names must exist: the per-IP
/// limit built here, or a policy of the per-caller limit.
fn route_table(config: &Config) -> Result<RouteTable, Box<dyn std::error::Error>> {
    if let Some(file) = &config.file
        && let Some(table) = file.route_table(&["per-ip", "graphql-cost"])?
    {
        return Ok(table);
    }
    let mut known = vec!["per-ip".to_owned(), "graphql-cost".to_owned()];
    match config
        .file
        .as_ref()
        .and_then(|file| file.rate_limit.as_ref())
    {
        Some(limit) => {
            known.push(limit.default.name.clone());
            known.extend(limit.authenticated.as_ref().map(|q| q.name.clone()));
        }
        None => known.extend(["anonymous".to_owned(), "registered".to_owned()]),
    }
    const BUILTIN: &str = include_str!("tollgate.toml");
    let builtin = TollgateConfig::from_toml(BUILTIN)?;
    let routes = builtin
        .routes
        .ok_or("examples/tollgate.toml has no [routes]")?;
    Ok(routes.table(BUILTIN, Some(&known))?)
}

/// The auth layer, the sliding refresh behind it (when on), and the
/// per-caller limit.
type Layers = (
    JwtAuthLayer<User>,
    Option<RefreshSessionLayer>,
    RateLimitLayer<AnyStore>,
);

/// The policy from `TOLLGATE_CONFIG`.
async fn from_file(
    file: &TollgateConfig,
    revocations: &Revocations,
    routes: &RouteTable,
) -> Result<Layers, Box<dyn std::error::Error>> {
    let auth = file
        .auth
        .as_ref()
        .ok_or("TOLLGATE_CONFIG has no [auth] table")?;
    let limit = file
        .rate_limit
        .as_ref()
        .ok_or("TOLLGATE_CONFIG has no [rate_limit] table")?;
    // With `[auth.revocation]`, the layer checks the revocations the table
    // describes (shared through Redis when it names `redis_url`); without
    // it, the per-process set.
    let mut builder = auth.builder::<User>().await?.routes(routes);
    if auth.revocation.is_none() {
        builder = builder.revocations(revocations.clone());
    }
    let layer = builder.build()?;
    // `[auth.refresh]`: its own layer, built from the auth layer.
    let refresh = auth.refresh_layer(&layer)?;
    Ok((layer, refresh, limit.layer().await?))
}

/// The policy from the environment variables.
async fn from_env(
    config: &Config,
    revocations: &Revocations,
    routes: &RouteTable,
) -> Result<Layers, Box<dyn std::error::Error>> {
    let builder = JwtAuthLayer::<User>::builder();
    let builder = match (&config.jwks_url, &config.oidc_issuer) {
        (Some(url), _) => builder.remote_keys(RemoteKeys::jwks(url).start().await?),
        (None, Some(issuer)) => builder.remote_keys(RemoteKeys::oidc_issuer(issuer).start().await?),
        (None, None) => builder.key(Key::hmac(&config.secret)?),
    };
    let builder = builder
        .cookie("da3")
        .bearer()
        .issuer(&config.issuer)
        .audience(&config.audience)
        // a browser sends the same session cookie on every request
        .cache(10_000)
        .routes(routes)
        .revocations(revocations.clone());
    let auth = builder.build()?;
    let refresh = match config.refresh_within {
        None => None,
        Some(_) if config.jwks_url.is_some() || config.oidc_issuer.is_some() => {
            return Err(
                "TOLLGATE_REFRESH_WITHIN_SECS re-mints with TOLLGATE_SECRET: \
                        not with keys of an identity provider"
                    .into(),
            );
        }
        // Re-mint near-expiry session cookies with the same secret.
        Some(within) => Some(RefreshSessionLayer::new(
            &auth,
            Refresh::new(SigningKey::hmac(&config.secret)?, within),
        )?),
    };
    // Anonymous callers by client IP, registered callers by verified subject.
    let limit = RateLimitLayer::builder("anonymous", config.anon)
        .key(KeyBy::subject_or_client_ip(config.proxies.clone()))
        .authenticated("registered", config.user)
        .store(AnyStore::Local(LocalStore::new()))
        .build()?;
    Ok((auth, refresh, limit))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A configuration error is shown as written (a TOML error spans several
    // lines and points at the line), not as `Debug` would escape it.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // tollgate's warnings (a Redis store failing, a misordered stack) and
    // notices on stderr; RUST_LOG overrides, e.g. `RUST_LOG=tollgate=debug`.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tollgate=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = Config::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, subject] = args.as_slice()
        && cmd == "mint"
    {
        println!("{}", config.mint(subject)?);
        return Ok(());
    }
    if !args.is_empty() {
        return Err("usage: graphql [mint <subject>]".into());
    }

    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let app = app(&config, prometheus).await?;
    let listener = tokio::net::TcpListener::bind(&config.addr).await?;
    let addr = listener.local_addr()?;
    let keys = match (&config.jwks_url, &config.oidc_issuer) {
        (Some(url), _) => format!("; keys from {url}"),
        (None, Some(issuer)) => format!("; keys of issuer {issuer}"),
        (None, None) if config.dev_secret => {
            "; TOLLGATE_SECRET unset: using the dev secret".to_owned()
        }
        (None, None) => String::new(),
    };
    println!(
        "tollgate graphql example on http://{addr} (tollgate layers {}{keys})",
        if config.layers { "on" } else { "OFF" },
    );
    println!("GraphiQL: http://{addr}/graphql");
    // A ready-made token only for the built-in dev secret: with a real
    // secret, printing a valid session token to the logs would leak one.
    let dev_keys = config.dev_secret && config.jwks_url.is_none() && config.oidc_issuer.is_none();
    if dev_keys && config.file.is_none() {
        let token = config.mint("dev-user")?;
        println!("Try, as a logged-in user (dev secret only):");
        println!(
            "  curl -s http://{addr}/graphql --cookie 'da3={token}' -H 'content-type: application/json' \
             -d '{{\"query\":\"{{ me {{ id }} feed(first: 2) {{ title }} }}\"}}'"
        );
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
