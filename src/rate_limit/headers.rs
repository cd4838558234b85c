use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::quota::Policy;
use super::store::Decision;

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// None.
    Off,
    /// The IETF fields of draft-ietf-httpapi-ratelimit-headers-11:
    /// `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=42;t=1`,
    /// `t` being the seconds until more quota is available (the next unit;
    /// 0 with the quota full; on a refusal, until a retry may pass). The
    /// default.
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

/// Whole seconds of `ns` nanoseconds, rounded up.
fn ceil_ns(ns: u64) -> u64 {
    ns / 1_000_000_000 + u64::from(!ns.is_multiple_of(1_000_000_000))
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A policy's header text, rendered once.
///
/// Interned for the life of the process (one per distinct policy name and
/// quota, a few dozen bytes each, however often layers are built), so that
/// its values are `'static`: putting them on a response copies a pointer —
/// no allocation and no reference count shared by every thread.
#[derive(Debug)]
pub(crate) struct PolicyHeaders {
    /// Tells the policies apart in the per-thread cache of values.
    id: u32,
    /// `"name";q=100;w=60`.
    policy: HeaderValue,
    /// The burst, for `X-RateLimit-Limit`.
    burst: u32,
    /// How long one unit of quota takes to come back, in nanoseconds.
    interval_ns: u64,
    limit: HeaderValue,
    /// `"name";r=`: the start of every `RateLimit` value.
    prefix: &'static [u8],
}

/// A `'static` header value of `text`, leaked (callers intern).
fn leak(text: String) -> HeaderValue {
    // Policy names are HTTP tokens, so this always holds.
    if HeaderValue::from_str(&text).is_err() {
        return HeaderValue::from_static("\"invalid\"");
    }
    HeaderValue::from_static(Box::leak(text.into_boxed_str()))
}

/// The interned header text of `policy`.
pub(crate) fn policy_headers(policy: &Policy) -> &'static PolicyHeaders {
    type Interned = HashMap<(Arc<str>, u32, u64, Duration), &'static PolicyHeaders>;
    static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(Mutex::default);
    let burst = policy.quota.burst_size();
    let window = policy.quota.window_secs();
    let interval = policy.quota.replenish_interval();
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    let next = u32::try_from(interned.len()).unwrap_or(u32::MAX);
    interned
        .entry((Arc::clone(&policy.name), burst, window, interval))
        .or_insert_with(|| {
            let name = &policy.name;
            Box::leak(Box::new(PolicyHeaders {
                id: next,
                policy: leak(format!("\"{name}\";q={burst};w={window}")),
                burst,
                interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
                limit: int_value(u64::from(burst)),
                prefix: Box::leak(format!("\"{name}\";r=").into_bytes().into_boxed_slice()),
            }))
        })
}

/// Integers below this are served from one table of `'static` values.
const SMALL: u64 = 1024;

/// `n` as a header value; below [`SMALL`] without allocating.
fn int_value(n: u64) -> HeaderValue {
    static TABLE: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
        let mut text = String::new();
        let mut ends = Vec::new();
        for n in 0..SMALL {
            text.push_str(itoa::Buffer::new().format(n));
            ends.push(text.len());
        }
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&text[start..end]);
                start = end;
                value
            })
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| TABLE.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// `RateLimit` values rendered recently on this thread, by (policy, r, t).
/// A client's values repeat (its remaining count and reset time move in
/// steps), so most responses reuse one; a miss renders into one allocation.
const RECENT: usize = 64;

struct Rendered {
    key: (u32, u32, u64),
    value: HeaderValue,
}

thread_local! {
    static RECENT_VALUES: RefCell<[Option<Rendered>; RECENT]> =
        const { RefCell::new([const { None }; RECENT]) };
}

/// `"name";r=<r>;t=<t>`.
fn rate_value(headers: &PolicyHeaders, r: u32, t: u64) -> HeaderValue {
    let render = || {
        let mut r_text = itoa::Buffer::new();
        let mut t_text = itoa::Buffer::new();
        let (r_text, t_text) = (r_text.format(r).as_bytes(), t_text.format(t).as_bytes());
        let mut bytes = Vec::with_capacity(headers.prefix.len() + r_text.len() + 3 + t_text.len());
        bytes.extend_from_slice(headers.prefix);
        bytes.extend_from_slice(r_text);
        bytes.extend_from_slice(b";t=");
        bytes.extend_from_slice(t_text);
        HeaderValue::from_maybe_shared(Bytes::from(bytes))
            .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
    };
    let key = (headers.id, r, t);
    let hash =
        (u64::from(headers.id) << 40 ^ u64::from(r) << 20 ^ t).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top bits of a multiplicative hash are the well-mixed ones.
    let slot = usize::try_from(hash >> 58).unwrap_or(0) % RECENT;
    RECENT_VALUES
        .try_with(|recent| {
            let Ok(mut recent) = recent.try_borrow_mut() else {
                return render();
            };
            match &mut recent[slot] {
                Some(rendered) if rendered.key == key => rendered.value.clone(),
                entry => {
                    let value = render();
                    *entry = Some(Rendered {
                        key,
                        value: value.clone(),
                    });
                    value
                }
            }
        })
        // The thread is exiting: render without the cache.
        .unwrap_or_else(|_| render())
}

/// The rate-limit headers a response gets: what one decision of one policy
/// says, kept small so that it rides in the response future.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    headers: &'static PolicyHeaders,
    style: HeaderStyle,
    limit: u32,
    remaining: u32,
    /// Seconds until the quota is full again, or until a retry may pass
    /// (`X-RateLimit-Reset`). Seconds are kept as `u32` (136 years,
    /// saturating) so that the stamp, which rides in every response future,
    /// stays 32 bytes.
    reset: u32,
    /// Seconds until more quota is available (`RateLimit`'s `t`, draft-11):
    /// the next unit; 0 when the quota is full.
    next: u32,
}

impl Stamp {
    /// The headers of `style` for `decision`; `None` for [`HeaderStyle::Off`].
    pub(crate) fn new(
        style: HeaderStyle,
        headers: &'static PolicyHeaders,
        decision: &Decision,
    ) -> Option<Self> {
        if style == HeaderStyle::Off {
            return None;
        }
        let (reset, next) = match decision.retry_after {
            Some(retry) => {
                let retry = ceil_secs(retry).max(1);
                (retry, retry)
            }
            None => {
                // Units come back one interval apart, the last one at
                // `reset_after`: the next one comes when all but the
                // missing ones after it are back. (Integer nanoseconds: this
                // is on every limited response.)
                let reset = ceil_secs(decision.reset_after);
                let next = match decision.limit.saturating_sub(decision.remaining) {
                    0 => 0,
                    1 => reset,
                    missing => {
                        let reset_ns =
                            u64::try_from(decision.reset_after.as_nanos()).unwrap_or(u64::MAX);
                        ceil_ns(reset_ns.saturating_sub(
                            headers.interval_ns.saturating_mul(u64::from(missing - 1)),
                        ))
                    }
                };
                (reset, next)
            }
        };
        let secs = |s: u64| u32::try_from(s).unwrap_or(u32::MAX);
        let (reset, next) = (secs(reset), secs(next));
        Some(Self {
            headers,
            style,
            limit: decision.limit,
            remaining: decision.remaining,
            reset,
            next,
        })
    }

    /// Adds the headers to `map`.
    pub(crate) fn apply(&self, map: &mut HeaderMap) {
        let Self {
            headers,
            style,
            limit,
            remaining,
            reset,
            next,
        } = *self;
        if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
            // Both fields are lists: stacked limiters each add their item (as
            // another field line, which HTTP combines with a comma) instead of
            // overwriting the inner limiter's.
            map.append(RATELIMIT_POLICY.clone(), headers.policy.clone());
            map.append(
                RATELIMIT.clone(),
                rate_value(headers, remaining, u64::from(next)),
            );
        }
        if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both) {
            // One value each: the most restrictive limiter's (fewest remaining).
            let tighter = map
                .get(&X_REMAINING)
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                .is_none_or(|existing| remaining < existing);
            if tighter {
                let limit = if limit == headers.burst {
                    headers.limit.clone()
                } else {
                    int_value(u64::from(limit))
                };
                map.insert(X_LIMIT.clone(), limit);
                map.insert(X_REMAINING.clone(), int_value(u64::from(remaining)));
                map.insert(X_RESET.clone(), int_value(u64::from(reset)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::quota::Quota;

    fn apply(h: &mut HeaderMap, style: HeaderStyle, policy: &Policy, decision: &Decision) {
        if let Some(stamp) = Stamp::new(style, policy_headers(policy), decision) {
            stamp.apply(h);
        }
    }

    #[test]
    fn ietf_syntax() {
        let p = Policy::new("user", Quota::per_minute(600).burst(100), 0).unwrap();
        let mut h = HeaderMap::new();
        // 58 units missing, one every 100 ms: the next in 50 ms.
        let d = Decision::allowed(100, 42, Duration::from_millis(5_750));
        apply(&mut h, HeaderStyle::Ietf, &p, &d);
        assert_eq!(h["ratelimit-policy"], "\"user\";q=100;w=10");
        assert_eq!(h["ratelimit"], "\"user\";r=42;t=1");
        assert!(h.get("x-ratelimit-limit").is_none());
    }

    #[test]
    fn t_is_the_time_until_more_quota_not_until_a_full_one() {
        // One unit a minute, five at most.
        let p = Policy::new("slow", Quota::per_minute(1).burst(5), 0).unwrap();
        let stamp = |remaining, reset_after| {
            let mut h = HeaderMap::new();
            let d = Decision::allowed(5, remaining, Duration::from_secs(reset_after));
            apply(&mut h, HeaderStyle::Both, &p, &d);
            (
                h["ratelimit"].to_str().unwrap().to_owned(),
                h["x-ratelimit-reset"].to_str().unwrap().to_owned(),
            )
        };
        // Three missing, full in 170 s: the next unit in 50 s.
        assert_eq!(stamp(2, 170), ("\"slow\";r=2;t=50".into(), "170".into()));
        // One missing: it is the next.
        assert_eq!(stamp(4, 60), ("\"slow\";r=4;t=60".into(), "60".into()));
        // Full: nothing more to come.
        assert_eq!(stamp(5, 0), ("\"slow\";r=5;t=0".into(), "0".into()));
        // Refused: until a retry may pass.
        let mut h = HeaderMap::new();
        apply(
            &mut h,
            HeaderStyle::Ietf,
            &p,
            &Decision::limited(5, Duration::from_millis(59_001)),
        );
        assert_eq!(h["ratelimit"], "\"slow\";r=0;t=60");
    }

    #[test]
    fn legacy_and_refusals() {
        let p = Policy::new("anon", Quota::per_second(1), 0).unwrap();
        let mut h = HeaderMap::new();
        let d = Decision::limited(1, Duration::from_millis(1));
        apply(&mut h, HeaderStyle::Both, &p, &d);
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
        let outer = Decision::allowed(200, 150, Duration::from_millis(2_460));
        apply(&mut h, HeaderStyle::Both, &user, &inner);
        apply(&mut h, HeaderStyle::Both, &ip, &outer);
        let all = |name: &str| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(all("ratelimit"), "\"user\";r=0;t=2, \"per-ip\";r=150;t=1");
        assert_eq!(
            all("ratelimit-policy"),
            "\"user\";q=100;w=10, \"per-ip\";q=200;w=10"
        );
        // Legacy fields hold one value: the most restrictive.
        assert_eq!(all("x-ratelimit-remaining"), "0");
        assert_eq!(all("x-ratelimit-limit"), "100");
    }

    #[test]
    fn values_match_their_text_whatever_the_cache_holds() {
        // Two policies, many (r, t) pairs: every slot of the per-thread
        // cache is reused by several keys, and each value must still be the
        // one its key renders.
        let a = Policy::new("a", Quota::per_minute(600).burst(100), 0).unwrap();
        let b = Policy::new("b-longer", Quota::per_minute(600).burst(100), 1).unwrap();
        for round in 0..2 {
            for r in [0u32, 1, 7, 99, 100, 1023, 1024, u32::MAX] {
                // Seconds saturate at u32::MAX (136 years).
                for t in [0u64, 1, 18, 59, 60, 3600, u64::from(u32::MAX)] {
                    for policy in [&a, &b] {
                        let mut h = HeaderMap::new();
                        // One unit missing: the next comes at the reset.
                        let d = Decision::allowed(r.saturating_add(1), r, Duration::from_secs(t));
                        apply(&mut h, HeaderStyle::Both, policy, &d);
                        let name = policy.name();
                        let next = if r == u32::MAX { 0 } else { t };
                        assert_eq!(
                            h["ratelimit"],
                            format!("\"{name}\";r={r};t={next}"),
                            "round {round}"
                        );
                        assert_eq!(h["x-ratelimit-remaining"], r.to_string());
                        assert_eq!(h["x-ratelimit-reset"], t.to_string());
                    }
                }
            }
        }
    }

    #[test]
    fn policy_text_is_interned_once() {
        let p = Policy::new("interned", Quota::per_minute(60), 0).unwrap();
        let again = Policy::new("interned", Quota::per_minute(60), 3).unwrap();
        let other = Policy::new("interned", Quota::per_minute(61), 0).unwrap();
        assert!(std::ptr::eq(policy_headers(&p), policy_headers(&again)));
        assert!(!std::ptr::eq(policy_headers(&p), policy_headers(&other)));
        assert_eq!(policy_headers(&other).policy, "\"interned\";q=61;w=60");
    }

    #[test]
    fn limits_other_than_the_burst_are_reported_as_given() {
        // A store may report another limit than the policy's burst.
        let p = Policy::new("p", Quota::per_second(5), 0).unwrap();
        let mut h = HeaderMap::new();
        apply(
            &mut h,
            HeaderStyle::Legacy,
            &p,
            &Decision::allowed(5_000, 4_999, Duration::ZERO),
        );
        assert_eq!(h["x-ratelimit-limit"], "5000");
        assert!(h.get("ratelimit").is_none());
    }

    #[test]
    fn ceil() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
