use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::quota::Policy;
use super::store::Decision;

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// None.
    Off,
    /// The IETF fields of draft-ietf-httpapi-ratelimit-headers-10:
    /// `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=42;t=18`
    /// (the default).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
    /// (seconds until the burst is full again).
    Legacy,
    /// Both of the above.
    Both,
}

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit-Policy` value of a policy, built once per layer.
pub(crate) fn policy_value(policy: &Policy) -> HeaderValue {
    let q = policy.quota.burst_size();
    let w = policy.quota.window_secs();
    // The name is an HTTP token, so the value is always valid.
    HeaderValue::try_from(format!("\"{}\";q={q};w={w}", policy.name))
        .unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
}

/// Adds the headers of `style` for `decision` under `policy`.
pub(crate) fn apply(
    headers: &mut HeaderMap,
    style: HeaderStyle,
    policy: &Policy,
    policy_value: &HeaderValue,
    decision: &Decision,
) {
    let t = match decision.retry_after {
        Some(retry) => ceil_secs(retry).max(1),
        None => ceil_secs(decision.reset_after),
    };
    let r = decision.remaining;
    if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
        // Both fields are lists: stacked limiters each add their item (as
        // another field line, which HTTP combines with a comma) instead of
        // overwriting the inner limiter's.
        headers.append(RATELIMIT_POLICY.clone(), policy_value.clone());
        if let Ok(v) = HeaderValue::try_from(format!("\"{}\";r={r};t={t}", policy.name)) {
            headers.append(RATELIMIT.clone(), v);
        }
    }
    if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both) {
        // One value each: the most restrictive limiter's (fewest remaining).
        let tighter = headers
            .get(&X_REMAINING)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|existing| u64::from(r) < existing);
        if tighter {
            headers.insert(X_LIMIT.clone(), HeaderValue::from(decision.limit));
            headers.insert(X_REMAINING.clone(), HeaderValue::from(r));
            headers.insert(X_RESET.clone(), HeaderValue::from(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;

    #[test]
    fn ietf_syntax() {
        let p = Policy::new("user", Quota::per_minute(600).burst(100), 0).unwrap();
        let mut h = HeaderMap::new();
        let d = Decision::allowed(100, 42, Duration::from_millis(17_100));
        apply(&mut h, HeaderStyle::Ietf, &p, &policy_value(&p), &d);
        assert_eq!(h["ratelimit-policy"], "\"user\";q=100;w=10");
        assert_eq!(h["ratelimit"], "\"user\";r=42;t=18");
        assert!(h.get("x-ratelimit-limit").is_none());
    }

    #[test]
    fn legacy_and_refusals() {
        let p = Policy::new("anon", Quota::per_second(1), 0).unwrap();
        let mut h = HeaderMap::new();
        let d = Decision::limited(1, Duration::from_millis(1));
        apply(&mut h, HeaderStyle::Both, &p, &policy_value(&p), &d);
        assert_eq!(h["x-ratelimit-limit"], "1");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "1");
        assert_eq!(h["ratelimit"], "\"anon\";r=0;t=1");
    }

    #[test]
    fn stacked_limiters_compose() {
        // Regression: the outer limiter overwrote the inner one's fields,
        // even on the inner one's 429.
        let user = Policy::new("user", Quota::per_minute(600).burst(100), 0).unwrap();
        let ip = Policy::new("per-ip", Quota::per_minute(1200).burst(200), 0).unwrap();
        let mut h = HeaderMap::new();
        let inner = Decision::limited(100, Duration::from_secs(2));
        let outer = Decision::allowed(200, 150, Duration::from_secs(15));
        apply(
            &mut h,
            HeaderStyle::Both,
            &user,
            &policy_value(&user),
            &inner,
        );
        apply(&mut h, HeaderStyle::Both, &ip, &policy_value(&ip), &outer);
        let all = |name: &str| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(all("ratelimit"), "\"user\";r=0;t=2, \"per-ip\";r=150;t=15");
        assert_eq!(
            all("ratelimit-policy"),
            "\"user\";q=100;w=10, \"per-ip\";q=200;w=10"
        );
        // Legacy fields hold one value: the most restrictive.
        assert_eq!(all("x-ratelimit-remaining"), "0");
        assert_eq!(all("x-ratelimit-limit"), "100");
    }

    #[test]
    fn ceil() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
