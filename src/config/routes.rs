//! The `[routes]` table: per-route rules (see [`crate::routes`]).

use serde::Deserialize;
use toml::Spanned;

use super::invalid;
use crate::error::ConfigError;
use crate::routes::{Access, Route, RouteTable};

/// How the auth layer treats a route: see [`Access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessConfig {
    /// [`Access::Required`] (the default).
    #[default]
    Required,
    /// [`Access::Optional`].
    Optional,
    /// [`Access::Lenient`].
    Lenient,
    /// [`Access::Off`].
    Off,
}

impl From<AccessConfig> for Access {
    fn from(access: AccessConfig) -> Self {
        match access {
            AccessConfig::Required => Self::Required,
            AccessConfig::Optional => Self::Optional,
            AccessConfig::Lenient => Self::Lenient,
            AccessConfig::Off => Self::Off,
        }
    }
}

/// Roles or scopes a route needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeedsConfig {
    /// At least one of these.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Every one of these.
    #[serde(default)]
    pub all_of: Vec<String>,
}

/// One `[[routes.rule]]`, or the `default` rule (whose `path` and
/// `methods` are not given).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The path pattern: `/literal`, `{param}`, a final `{*rest}`.
    pub path: Option<Spanned<String>>,
    /// Methods (default: every method), e.g. `["GET", "POST"]`.
    pub methods: Option<Spanned<Vec<String>>>,
    /// `required` (default), `optional`, `lenient` or `off`.
    #[serde(default)]
    pub access: AccessConfig,
    /// Roles the token must carry.
    pub roles: Option<NeedsConfig>,
    /// Scopes the token must carry.
    pub scopes: Option<NeedsConfig>,
    /// Policy names of the limits that count these requests (default:
    /// every limit; `[]`: none).
    pub limits: Option<Spanned<Vec<String>>>,
    /// Whether the CSRF guard checks these requests (default: yes, where
    /// it is mounted).
    pub csrf: Option<bool>,
}

/// The `[routes]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// Claims holding roles (default `["roles"]`; dot-separated paths).
    pub roles_claims: Option<Vec<String>>,
    /// Claims holding scopes (default `["scope", "scp"]`).
    pub scopes_claims: Option<Vec<String>>,
    /// The rule of unmatched requests (default: access required, every
    /// limit, the CSRF guard).
    pub default: Option<Spanned<RuleConfig>>,
    /// The rules.
    #[serde(default)]
    pub rule: Vec<Spanned<RuleConfig>>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

impl RuleConfig {
    fn route(&self, origin: String, known_limits: Option<&[String]>) -> Result<Route, ConfigError> {
        let pattern = self
            .path
            .as_ref()
            .map_or_else(|| "(default)".to_owned(), |p| p.get_ref().clone());
        let mut route = Route::new(pattern)
            .access(self.access.into())
            .origin(origin.clone());
        if let Some(methods) = &self.methods {
            let mut parsed = Vec::new();
            for method in methods.get_ref() {
                let valid = !method.is_empty()
                    && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
                let method = http::Method::from_bytes(method.as_bytes())
                    .ok()
                    .filter(|_| valid)
                    .ok_or_else(|| {
                        invalid(
                            "routes",
                            format!(
                                "{origin}, field methods: {method:?} is not a method (write it in \
                                 capitals, e.g. \"GET\")"
                            ),
                        )
                    })?;
                parsed.push(method);
            }
            route = route.methods(parsed);
        }
        if let Some(roles) = &self.roles {
            route = route
                .roles_any(roles.any_of.iter().cloned())
                .roles_all(roles.all_of.iter().cloned());
        }
        if let Some(scopes) = &self.scopes {
            route = route
                .scopes_any(scopes.any_of.iter().cloned())
                .scopes_all(scopes.all_of.iter().cloned());
        }
        if let Some(limits) = &self.limits {
            if let Some(known) = known_limits
                && let Some(unknown) = limits.get_ref().iter().find(|l| !known.contains(l))
            {
                return Err(invalid(
                    "routes",
                    format!(
                        "{origin}, field limits: no rate limit has a policy named {unknown:?} \
                         (known: {known:?}); a misspelt name would leave the route unlimited"
                    ),
                ));
            }
            route = route.limits(limits.get_ref().iter().cloned());
        }
        if let Some(csrf) = self.csrf {
            route = route.csrf(csrf);
        }
        Ok(route)
    }
}

impl RoutesConfig {
    /// The route table. `source` is the TOML text the table came from (for
    /// line numbers in errors; `""` gives none) and `known_limits` the
    /// policy names of every rate limit the service mounts (`None`: not
    /// checked), so that a misspelt name is an error rather than a route
    /// without limits.
    ///
    /// # Errors
    /// A rule without `path`, a `default` with one, a method that is not
    /// one, an unknown limit name, and every error of
    /// [`RouteTableBuilder::build`](crate::routes::RouteTableBuilder::build)
    /// (patterns that cannot match, rules that shadow each other), each
    /// naming the rule and its line.
    pub fn table(
        &self,
        source: &str,
        known_limits: Option<&[String]>,
    ) -> Result<RouteTable, ConfigError> {
        let at = |what: String, span: std::ops::Range<usize>| {
            if source.is_empty() {
                what
            } else {
                format!("{what} (line {})", line_of(source, span.start))
            }
        };
        let mut builder = RouteTable::builder();
        if let Some(claims) = &self.roles_claims {
            builder = builder.roles_claims(claims.iter().cloned());
        }
        if let Some(claims) = &self.scopes_claims {
            builder = builder.scopes_claims(claims.iter().cloned());
        }
        if let Some(default) = &self.default {
            let origin = at("routes.default".to_owned(), default.span());
            if default.get_ref().path.is_some() || default.get_ref().methods.is_some() {
                return Err(invalid(
                    "routes",
                    format!(
                        "{origin}: the default rule applies to every unmatched request: no path or methods"
                    ),
                ));
            }
            builder = builder.default_route(default.get_ref().route(origin, known_limits)?);
        }
        for (i, rule) in self.rule.iter().enumerate() {
            let span = rule
                .get_ref()
                .path
                .as_ref()
                .map_or_else(|| rule.span(), Spanned::span);
            let origin = at(format!("routes.rule[{i}]"), span);
            if rule.get_ref().path.is_none() {
                return Err(invalid("routes", format!("{origin}: a rule needs a path")));
            }
            builder = builder.route(rule.get_ref().route(origin, known_limits)?);
        }
        builder.build()
    }
}
