//! Per-route rules, declared rather than coded: a table of path patterns
//! (and methods) → how the auth layer treats the request, which roles or
//! scopes it needs, which rate limits and whether the CSRF guard apply.
//!
//! [`RouteRulesLayer`] goes outermost: it finds the request's rule (the most
//! specific pattern that matches, or the table's default) and puts it in the
//! request's extensions as a [`MatchedRoute`]; the layers inside read it —
//! [`JwtAuthLayer`](crate::auth::JwtAuthLayer) takes its mode and
//! requirements from it, a [`RateLimitLayer`](crate::rate_limit::RateLimitLayer)
//! counts only on routes that list one of its policies, and the
//! [`CsrfGuardLayer`](crate::csrf::CsrfGuardLayer) checks only routes that
//! ask for it. One layer, one match per request; no framework needed: a gRPC
//! method is a path (`/package.Service/Method`).
//!
//! ```
//! use tollgate::routes::{Access, Route, RouteTable};
//!
//! # fn main() -> Result<(), tollgate::ConfigError> {
//! let table = RouteTable::builder()
//!     .route(Route::new("/graphql").access(Access::Lenient).limits(["registered"]).csrf(true))
//!     .route(Route::new("/admin/{*rest}").roles_any(["admin"]))
//!     .route(Route::new("/healthz").access(Access::Off).limits::<&str>([]))
//!     .build()?;
//! assert_eq!(table.matched(&http::Method::GET, "/admin/users/7").pattern(), "/admin/{*rest}");
//! // Unmatched: the default (required auth, every limit, the CSRF guard as built).
//! assert_eq!(table.matched(&http::Method::GET, "/other").pattern(), "(default)");
//! # Ok(()) }
//! ```
//!
//! **Patterns**: segments separated by `/`; a segment is literal text, a
//! parameter `{name}` (exactly one segment) or, last, `{*name}` (any number
//! of segments, none included). The most specific match wins, segment by
//! segment: literal over parameter over catch-all, and a pattern that ends
//! with the path over a catch-all. A rule listing `GET` covers `HEAD` too
//! (routers run GET's handler for it). The raw path is matched, as sent (a
//! trailing `/` is a segment of its own); a path in no canonical form — an
//! empty, `.` or `..` segment, or a percent-encoded `.`, `/` or `\` — gets
//! a rule that refuses every request (401, or 403 with a token), since a
//! backend that normalised it could serve a route whose rule it did not
//! match. Other paths no rule matches get the default: auth required, but
//! no roles — so give every route that needs roles a rule covering all the
//! paths that reach it (mount the layer on the outermost router: under
//! axum's `nest`, an inner router sees the path without its prefix).
//!
//! **Refused at build**: a pattern that cannot match a path (not starting
//! with `/`, an empty segment, `?`, `#` or whitespace, a malformed `{…}`, a
//! catch-all before the end, an empty method list), and two rules that
//! shadow each other (the same pattern up to parameter names, with methods in
//! common): which one applies would depend on their order.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ConfigError;

/// How the auth layer treats a route's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Access {
    /// A valid token is needed (401 without). The default.
    #[default]
    Required,
    /// No token: anonymous; an invalid token: refused.
    Optional,
    /// No token or an invalid one: anonymous.
    Lenient,
    /// The token is not looked at: every request is anonymous.
    Off,
}

/// Roles or scopes a route needs: any of some, all of others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// At least one of these (when not empty).
    pub any_of: Vec<String>,
    /// Every one of these.
    pub all_of: Vec<String>,
}

impl Needs {
    fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty()
    }

    /// Whether `granted` satisfies these needs.
    #[cfg(feature = "auth")]
    pub(crate) fn met_by(&self, granted: &[Box<str>]) -> bool {
        let has = |name: &String| granted.iter().any(|g| **g == **name);
        (self.any_of.is_empty() || self.any_of.iter().any(has)) && self.all_of.iter().all(has)
    }
}

/// A claim holding roles or scopes: a top-level name, or a dot-separated
/// path into nested objects (`realm_access.roles`). A top-level claim named
/// with dots (`https://example.com/roles`) is found by its whole name first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimPath {
    pub(crate) full: Box<str>,
    pub(crate) parts: Vec<Box<str>>,
}

impl ClaimPath {
    pub(crate) fn new(path: &str) -> Self {
        Self {
            full: path.into(),
            parts: path.split('.').map(Into::into).collect(),
        }
    }

    /// The value at this path in the captured top-level claims.
    #[cfg(feature = "auth")]
    fn find<'c>(
        &self,
        captured: &'c [(Box<str>, serde_json::Value)],
    ) -> Option<&'c serde_json::Value> {
        let top = |name: &str| {
            captured
                .iter()
                .find(|(n, _)| **n == *name)
                .map(|(_, value)| value)
        };
        if let Some(value) = top(&self.full) {
            return Some(value);
        }
        if self.parts.len() < 2 {
            return None;
        }
        let mut value = top(&self.parts[0])?;
        for key in &self.parts[1..] {
            value = value.get(&**key)?;
        }
        Some(value)
    }
}

/// Where a token's roles and scopes are read. A roles claim is an array of
/// strings or one string (one role, spaces and all: `"Domain Admins"`); a
/// scopes claim is an array of strings or a space-separated string
/// (RFC 8693 `scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrantClaims {
    pub(crate) roles: Vec<ClaimPath>,
    pub(crate) scopes: Vec<ClaimPath>,
}

#[cfg(feature = "auth")]
impl GrantClaims {
    /// Whether the top-level claim `name` holds grants.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.roles
            .iter()
            .chain(&self.scopes)
            .any(|path| *path.full == *name || *path.parts[0] == *name)
    }

    /// The grants in the captured top-level claims.
    pub(crate) fn read(&self, captured: &[(Box<str>, serde_json::Value)]) -> Grants {
        let collect = |paths: &[ClaimPath], split: bool| {
            let mut out: Vec<Box<str>> = Vec::new();
            for path in paths {
                match path.find(captured) {
                    Some(serde_json::Value::String(s)) if split => {
                        out.extend(s.split_ascii_whitespace().map(Into::into));
                    }
                    Some(serde_json::Value::String(s)) => out.push(s.as_str().into()),
                    Some(serde_json::Value::Array(items)) => {
                        out.extend(items.iter().filter_map(|v| v.as_str()).map(Into::into));
                    }
                    _ => {}
                }
            }
            out
        };
        Grants {
            roles: collect(&self.roles, false),
            scopes: collect(&self.scopes, true),
        }
    }
}

/// The roles and scopes a verified token carries.
#[cfg(feature = "auth")]
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants {
    pub(crate) roles: Vec<Box<str>>,
    pub(crate) scopes: Vec<Box<str>>,
}

impl Route {
    /// Whether `grants` meet the route's roles and scopes.
    #[cfg(feature = "auth")]
    pub(crate) fn granted(&self, grants: &Grants) -> bool {
        !self.deny && self.roles.met_by(&grants.roles) && self.scopes.met_by(&grants.scopes)
    }
}

/// One rule of a [`RouteTable`]: a path pattern, the methods it covers, and
/// what applies to its requests.
#[derive(Debug, Clone)]
pub struct Route {
    pattern: String,
    methods: Option<Vec<Method>>,
    access: Access,
    roles: Needs,
    scopes: Needs,
    limits: Option<Vec<String>>,
    csrf: Option<bool>,
    /// The rule of paths no rule can be trusted to match: refused.
    deny: bool,
    /// Where the rule was declared, for errors ("routes.rule[2] (line 14)").
    origin: Option<String>,
}

impl Route {
    /// A rule for `pattern`, every method, required auth, every limit.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            methods: None,
            access: Access::Required,
            roles: Needs::default(),
            scopes: Needs::default(),
            limits: None,
            csrf: None,
            deny: false,
            origin: None,
        }
    }

    /// Only these methods (default: every method).
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// How the auth layer treats these requests (default: required).
    #[must_use]
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// The token must carry at least one of these roles (403 otherwise).
    #[must_use]
    pub fn roles_any<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles.any_of = roles.into_iter().map(Into::into).collect();
        self
    }

    /// The token must carry every one of these roles.
    #[must_use]
    pub fn roles_all<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles.all_of = roles.into_iter().map(Into::into).collect();
        self
    }

    /// The token must carry at least one of these scopes.
    #[must_use]
    pub fn scopes_any<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes.any_of = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The token must carry every one of these scopes.
    #[must_use]
    pub fn scopes_all<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes.all_of = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Only the rate-limit layers with one of these policy names (their
    /// default policy or a tier) count these requests; an empty list: none.
    /// Default: every limit layer.
    #[must_use]
    pub fn limits<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.limits = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the CSRF guard checks these requests (default: as the guard
    /// is built, i.e. yes where it is mounted).
    #[must_use]
    pub fn csrf(mut self, on: bool) -> Self {
        self.csrf = Some(on);
        self
    }

    pub(crate) fn origin(mut self, origin: String) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The pattern, as written (`(default)` for the table's default).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// How the auth layer treats the route's requests.
    pub fn access_mode(&self) -> Access {
        self.access
    }

    /// The roles the route needs.
    pub fn roles(&self) -> &Needs {
        &self.roles
    }

    /// The scopes the route needs.
    pub fn scopes(&self) -> &Needs {
        &self.scopes
    }

    /// Whether a limit layer with these policy names counts the route.
    pub fn limited_by<'a>(&self, mut policies: impl Iterator<Item = &'a str>) -> bool {
        match &self.limits {
            None => true,
            Some(names) => policies.any(|p| names.iter().any(|n| n == p)),
        }
    }

    /// Whether the CSRF guard checks the route (`None`: as the guard is built).
    pub fn csrf_check(&self) -> Option<bool> {
        self.csrf
    }

    /// Whether the route needs roles or scopes (so the token's grants).
    pub(crate) fn needs_grants(&self) -> bool {
        self.deny || !self.roles.is_empty() || !self.scopes.is_empty()
    }

    /// Whether this is the rule of non-canonical paths, which no token
    /// satisfies.
    #[cfg(feature = "auth")]
    pub(crate) fn denies(&self) -> bool {
        self.deny
    }

    fn name(&self) -> String {
        match &self.origin {
            Some(origin) => format!("{origin} ({:?})", self.pattern),
            None => format!("route {:?}", self.pattern),
        }
    }
}

/// One segment of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
    CatchAll,
}

/// How a pattern segment ranks when it matches a path segment.
const LITERAL: u8 = 3;
const PARAM: u8 = 2;
const CATCH_ALL: u8 = 1;

fn compile(route: &Route) -> Result<Vec<Segment>, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            "routes",
            format!(
                "{}: the pattern can never match a path: {why}",
                route.name()
            ),
        )
    };
    let pattern = route.pattern.as_str();
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(bad("a path starts with '/'"));
    };
    if pattern
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            "a path holds no '?', '#', whitespace or control characters",
        ));
    }
    let mut segments = Vec::new();
    if rest.is_empty() {
        // "/": the root, one empty segment as `http` gives it.
        segments.push(Segment::Literal("".into()));
        return Ok(segments);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() && !last {
            return Err(bad("an empty segment ('//')"));
        }
        if let Some(inner) = part.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(bad("a '{' without its '}' closing the segment"));
            };
            let (catch_all, name) = match name.strip_prefix('*') {
                Some(name) => (true, name),
                None => (false, name),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(
                    "a parameter is {name} or {*name}, the name in letters, digits and '_'",
                ));
            }
            if catch_all && !last {
                return Err(bad("a catch-all {*name} must be the last segment"));
            }
            segments.push(if catch_all {
                Segment::CatchAll
            } else {
                Segment::Param
            });
        } else if part.contains(['{', '}']) {
            return Err(bad("'{' and '}' only around a whole segment"));
        } else {
            segments.push(Segment::Literal((*part).into()));
        }
    }
    Ok(segments)
}

/// Whether `path` is in the one form a router and a file server agree on:
/// no empty, `.` or `..` segment (but a final `/`), no percent-encoded `.`,
/// `/` or `\`, no `\`. Other paths get the denying rule: a backend that
/// normalised them could serve a route whose rule they did not match.
fn canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                let segment = &bytes[segment_start..i];
                if i > 0 && (segment.is_empty() || segment == b"." || segment == b"..") {
                    return false;
                }
                segment_start = i + 1;
            }
            b'\\' => return false,
            b'%' => {
                if let Some(code) = bytes.get(i + 1..i + 3)
                    && [b"2e", b"2f", b"5c"]
                        .iter()
                        .any(|encoded| code.eq_ignore_ascii_case(*encoded))
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    let last = &bytes[segment_start.min(bytes.len())..];
    last != b"." && last != b".."
}

/// Whether `segments` match `path` (which starts with `/`), walking the
/// path once without a split iterator.
fn matches(segments: &[Segment], path: &str) -> bool {
    let Some(mut rest) = path.strip_prefix('/') else {
        return false;
    };
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        // The path's segment here, and what follows its '/'.
        // A byte search: paths are short, and '/' is ASCII.
        let (part, after) = match rest.bytes().position(|b| b == b'/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
            None => (rest, None),
        };
        match segment {
            Segment::CatchAll => return true,
            Segment::Literal(text) if part != &**text => return false,
            Segment::Param if part.is_empty() => return false,
            _ => {}
        }
        match after {
            Some(after) if i < last => rest = after,
            // More path than pattern (unless a catch-all comes next).
            Some(_) => return false,
            None => {
                return i == last || (i + 1 == last && segments[last] == Segment::CatchAll);
            }
        }
    }
    false
}

/// The rank of a pattern at position `i` of a path of `n` segments it
/// matches: literal over parameter over catch-all, and at the end (`i ==
/// n`) a pattern that ends there over a catch-all.
fn rank_at(segments: &[Segment], i: usize, n: usize) -> u8 {
    match segments.get(i) {
        _ if i == n => match segments.last() {
            Some(Segment::CatchAll) => 0,
            _ => 1,
        },
        Some(Segment::Literal(_)) => LITERAL,
        Some(Segment::Param) => PARAM,
        Some(Segment::CatchAll) | None => CATCH_ALL,
    }
}

/// Whether `a` is more specific than `b`, both matching a path of `n`
/// segments: the first position where they rank differently decides.
fn more_specific(a: &[Segment], b: &[Segment], n: usize) -> bool {
    for i in 0..=n {
        let (ra, rb) = (rank_at(a, i, n), rank_at(b, i, n));
        if ra != rb {
            return ra > rb;
        }
    }
    false
}

struct Compiled {
    route: Arc<Route>,
    segments: Vec<Segment>,
}

/// Route rules: see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct RouteTable {
    inner: Arc<Table>,
}

struct Table {
    routes: Vec<Compiled>,
    default: Arc<Route>,
    /// For paths in no canonical form (`//`, `/./`, `/../`, an encoded
    /// `.`, `/` or `\`): a backend that normalises them could serve a route
    /// whose rule they do not match.
    denied: Arc<Route>,
    #[cfg_attr(
        not(feature = "auth"),
        expect(dead_code, reason = "read by the auth layer")
    )]
    grants: GrantClaims,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field(
                "routes",
                &self
                    .inner
                    .routes
                    .iter()
                    .map(|c| c.route.pattern.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("default", &self.inner.default)
            .finish()
    }
}

/// Builds a [`RouteTable`].
#[derive(Debug)]
pub struct RouteTableBuilder {
    routes: Vec<Route>,
    default: Option<Route>,
    roles_claims: Vec<String>,
    scopes_claims: Vec<String>,
}

impl Default for RouteTableBuilder {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            default: None,
            roles_claims: vec!["roles".to_owned()],
            scopes_claims: vec!["scope".to_owned(), "scp".to_owned()],
        }
    }
}

impl RouteTable {
    /// An empty table: add rules with [`RouteTableBuilder::route`].
    pub fn builder() -> RouteTableBuilder {
        RouteTableBuilder::default()
    }

    /// The rule for a request: the most specific match, else the default.
    pub fn matched(&self, method: &Method, path: &str) -> &Arc<Route> {
        if !canonical(path) {
            return &self.inner.denied;
        }
        let n = path.bytes().filter(|&b| b == b'/').count();
        let mut best: Option<&Compiled> = None;
        for compiled in &self.inner.routes {
            if compiled.route.methods.as_ref().is_some_and(|methods| {
                // HEAD runs GET's handler in most routers: GET's rule covers it.
                let head_as_get = *method == Method::HEAD && methods.contains(&Method::GET);
                !(methods.contains(method) || head_as_get)
            }) {
                continue;
            }
            if matches(&compiled.segments, path)
                && best.is_none_or(|b| more_specific(&compiled.segments, &b.segments, n))
            {
                best = Some(compiled);
            }
        }
        best.map_or(&self.inner.default, |compiled| &compiled.route)
    }

    /// Where the auth layer reads roles and scopes, if any rule needs them.
    #[cfg(feature = "auth")]
    pub(crate) fn grant_claims(&self) -> Option<GrantClaims> {
        let needed = self.inner.default.needs_grants()
            || self.inner.routes.iter().any(|c| c.route.needs_grants());
        needed.then(|| self.inner.grants.clone())
    }

    /// The layer that puts each request's rule in its extensions.
    pub fn layer(&self) -> RouteRulesLayer {
        RouteRulesLayer {
            table: self.clone(),
        }
    }
}

impl RouteTableBuilder {
    /// Adds a rule.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// The claims holding roles (default `roles`): dot-separated paths for
    /// nested claims (`realm_access.roles`), each an array of strings or a
    /// space-separated string.
    #[must_use]
    pub fn roles_claims<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.roles_claims = paths.into_iter().map(Into::into).collect();
        self
    }

    /// The claims holding scopes (default `scope`, the space-separated
    /// string of RFC 8693, and `scp`, an array or a string).
    #[must_use]
    pub fn scopes_claims<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.scopes_claims = paths.into_iter().map(Into::into).collect();
        self
    }

    /// The rule of unmatched requests (its pattern is ignored). Default:
    /// auth required, every limit, the CSRF guard as built.
    #[must_use]
    pub fn default_route(mut self, route: Route) -> Self {
        self.default = Some(route);
        self
    }

    /// The table.
    ///
    /// # Errors
    /// A pattern that can never match, two rules that shadow each other, an
    /// empty method list, roles or scopes on a route whose access is not
    /// `required`.
    pub fn build(self) -> Result<RouteTable, ConfigError> {
        let mut default = self
            .default
            .unwrap_or_else(|| Route::new("(default)"))
            .origin(String::from("the default route"));
        default.pattern = "(default)".to_owned();
        check_needs(&default)?;
        let mut routes: Vec<Compiled> = Vec::with_capacity(self.routes.len());
        for route in self.routes {
            let segments = compile(&route)?;
            if route.methods.as_ref().is_some_and(Vec::is_empty) {
                return Err(ConfigError::new(
                    "routes",
                    format!("{}: an empty method list matches no request", route.name()),
                ));
            }
            check_needs(&route)?;
            if let Some(other) = routes.iter().find(|c| {
                c.segments == segments && methods_overlap(&c.route.methods, &route.methods)
            }) {
                return Err(ConfigError::new(
                    "routes",
                    format!(
                        "{} shadows {}: the same pattern for the same methods; merge them \
                         or give them distinct methods",
                        route.name(),
                        other.route.name()
                    ),
                ));
            }
            routes.push(Compiled {
                route: Arc::new(route),
                segments,
            });
        }
        let paths = |claims: Vec<String>| -> Result<Vec<ClaimPath>, ConfigError> {
            claims
                .into_iter()
                .map(|claim| {
                    if claim.split('.').any(str::is_empty) {
                        return Err(ConfigError::new(
                            "routes",
                            format!("the claim path {claim:?} has an empty part"),
                        ));
                    }
                    Ok(ClaimPath::new(&claim))
                })
                .collect()
        };
        let grants = GrantClaims {
            roles: paths(self.roles_claims)?,
            scopes: paths(self.scopes_claims)?,
        };
        Ok(RouteTable {
            inner: Arc::new(Table {
                routes,
                default: Arc::new(default),
                denied: Arc::new(Route {
                    pattern: "(non-canonical path)".to_owned(),
                    deny: true,
                    ..Route::new("")
                }),
                grants,
            }),
        })
    }
}

fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

fn check_needs(route: &Route) -> Result<(), ConfigError> {
    if route.needs_grants() && route.access != Access::Required {
        return Err(ConfigError::new(
            "routes",
            format!(
                "{}: roles and scopes need access = \"required\" (an anonymous caller has none)",
                route.name()
            ),
        ));
    }
    Ok(())
}

/// The rule that applies to a request, put in its extensions by
/// [`RouteRulesLayer`] for the layers inside it.
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub Arc<Route>);

/// Puts each request's [`MatchedRoute`] in its extensions: see the
/// [module docs](self). Mount it outside the auth, CSRF and rate-limit
/// layers.
#[derive(Debug, Clone)]
pub struct RouteRulesLayer {
    table: RouteTable,
}

impl<S> Layer<S> for RouteRulesLayer {
    type Service = RouteRules<S>;

    fn layer(&self, inner: S) -> RouteRules<S> {
        RouteRules {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service built by [`RouteRulesLayer`].
#[derive(Debug, Clone)]
pub struct RouteRules<S> {
    inner: S,
    table: RouteTable,
}

impl<S> RouteRules<S> {
    crate::macros::inner_accessors!(S);
}

impl<S, B> Service<Request<B>> for RouteRules<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = Arc::clone(self.table.matched(req.method(), req.uri().path()));
        req.extensions_mut().insert(MatchedRoute(route));
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: Vec<Route>) -> Result<RouteTable, ConfigError> {
        routes
            .into_iter()
            .fold(RouteTable::builder(), RouteTableBuilder::route)
            .build()
    }

    fn pattern_for(table: &RouteTable, method: &Method, path: &str) -> String {
        table.matched(method, path).pattern().to_owned()
    }

    #[test]
    fn the_most_specific_pattern_wins_whatever_the_order() {
        let patterns = [
            "/",
            "/users",
            "/users/{id}",
            "/users/me",
            "/users/{id}/posts",
            "/users/{*rest}",
            "/{*all}",
            "/pkg.Greeter/{method}",
        ];
        let cases = [
            ("/", "/"),
            ("/users", "/users"),
            ("/users/7", "/users/{id}"),
            ("/users/me", "/users/me"),
            ("/users/7/posts", "/users/{id}/posts"),
            ("/users/7/likes", "/users/{*rest}"),
            ("/users/", "/users/{*rest}"),
            ("/other/x", "/{*all}"),
            ("/pkg.Greeter/SayHello", "/pkg.Greeter/{method}"),
        ];
        // Forwards and backwards: the order of the rules does not matter.
        for order in [patterns.to_vec(), patterns.iter().rev().copied().collect()] {
            let t = table(order.iter().map(|p| Route::new(*p)).collect()).unwrap();
            for (path, expected) in cases {
                assert_eq!(pattern_for(&t, &Method::GET, path), expected, "{path}");
            }
        }
    }

    #[test]
    fn unmatched_requests_get_the_default_which_requires_auth() {
        let t = table(vec![Route::new("/public").access(Access::Off)]).unwrap();
        for path in ["/Public", "/public/", "/%70ublic", "/publicx", ""] {
            let route = t.matched(&Method::GET, path);
            assert_eq!(route.pattern(), "(default)", "{path}");
            assert_eq!(route.access_mode(), Access::Required);
            assert!(route.limited_by(["any"].into_iter()));
        }
        assert_eq!(
            t.matched(&Method::GET, "/public").access_mode(),
            Access::Off
        );
    }

    #[test]
    fn methods_select_between_rules_of_one_pattern() {
        let t = table(vec![
            Route::new("/graphql")
                .methods([Method::GET])
                .access(Access::Lenient),
            Route::new("/graphql").methods([Method::POST]),
        ])
        .unwrap();
        assert_eq!(
            t.matched(&Method::GET, "/graphql").access_mode(),
            Access::Lenient
        );
        assert_eq!(
            t.matched(&Method::POST, "/graphql").access_mode(),
            Access::Required
        );
        assert_eq!(t.matched(&Method::PUT, "/graphql").pattern(), "(default)");
    }

    #[test]
    fn patterns_that_cannot_match_are_refused() {
        for pattern in [
            "users",
            "/a//b",
            "/a?b",
            "/a#b",
            "/a b",
            "/{*rest}/x",
            "/{id",
            "/{}",
            "/{*}",
            "/a{id}",
            "/{na-me}",
        ] {
            let error = table(vec![Route::new(pattern)]).unwrap_err();
            assert!(
                error.to_string().contains("never match"),
                "{pattern}: {error}"
            );
        }
        let error = table(vec![Route::new("/a").methods([])]).unwrap_err();
        assert!(error.to_string().contains("empty method list"), "{error}");
    }

    #[test]
    fn rules_that_shadow_each_other_are_refused() {
        let error = table(vec![Route::new("/a/{id}"), Route::new("/a/{name}")]).unwrap_err();
        assert!(error.to_string().contains("shadows"), "{error}");
        let error = table(vec![
            Route::new("/a").methods([Method::GET, Method::POST]),
            Route::new("/a").methods([Method::POST]),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("shadows"), "{error}");
        let error = table(vec![
            Route::new("/a"),
            Route::new("/a").methods([Method::GET]),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("shadows"), "{error}");
        // Different shapes, or disjoint methods, do not.
        table(vec![
            Route::new("/a/{id}"),
            Route::new("/a/b"),
            Route::new("/a/{*rest}"),
            Route::new("/c").methods([Method::GET]),
            Route::new("/c").methods([Method::POST]),
        ])
        .unwrap();
    }

    #[test]
    fn roles_need_required_access() {
        let error = table(vec![
            Route::new("/a").access(Access::Lenient).roles_any(["x"]),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("required"), "{error}");
    }

    /// The obvious matcher (split on '/'), against which the walking one is
    /// checked.
    fn naive(segments: &[Segment], path: &str) -> bool {
        let Some(path) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = path.split('/');
        for segment in segments {
            match segment {
                Segment::CatchAll => return true,
                Segment::Literal(text) => {
                    if parts.next() != Some(&**text) {
                        return false;
                    }
                }
                Segment::Param => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    proptest::proptest! {
        #[test]
        fn the_walking_matcher_agrees_with_splitting(
            pattern in proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "", "{x}"]), 1..4),
            catch_all in proptest::bool::ANY,
            path in proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "", "c"]), 0..5),
        ) {
            let mut pattern = format!("/{}", pattern.join("/"));
            if catch_all {
                pattern.push_str("/{*rest}");
            }
            let path = format!("/{}", path.join("/"));
            if let Ok(segments) = compile(&Route::new(pattern.clone())) {
                proptest::prop_assert_eq!(
                    matches(&segments, &path),
                    naive(&segments, &path),
                    "{} against {}", pattern, path
                );
            }
        }
    }

    #[test]
    fn needs_any_of_and_all_of() {
        let granted: Vec<Box<str>> = vec!["read".into(), "write".into()];
        let needs = |any: &[&str], all: &[&str]| Needs {
            any_of: any.iter().map(|s| (*s).to_owned()).collect(),
            all_of: all.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(needs(&[], &[]).met_by(&granted));
        assert!(needs(&["admin", "write"], &[]).met_by(&granted));
        assert!(!needs(&["admin"], &[]).met_by(&granted));
        assert!(needs(&[], &["read", "write"]).met_by(&granted));
        assert!(!needs(&[], &["read", "admin"]).met_by(&granted));
        assert!(!needs(&["read"], &["admin"]).met_by(&granted));
    }
}
