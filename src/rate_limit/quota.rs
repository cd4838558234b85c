use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

/// How many requests a key may make: a sustained rate and a burst.
///
/// The names mean what they say: `Quota::per_minute(600)` is 600 requests per
/// minute, and `.burst(100)` lets a key that has been quiet send up to 100 at
/// once. Without `.burst(..)`, the burst equals the count (a quiet key can
/// spend a whole minute's worth at once).
///
/// Limiting uses GCRA (governor): one request is replenished every
/// `period / count`; a key may run ahead of that schedule by `burst`
/// requests.
///
/// ```
/// use std::time::Duration;
/// use tollgate::rate_limit::Quota;
///
/// let q = Quota::per_minute(600).burst(100);
/// assert_eq!(q.replenish_interval(), Duration::from_millis(100));
/// assert_eq!(q.burst_size(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: Option<u32>,
}

impl Quota {
    /// `count` requests per second.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub const fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// `count` requests per `period`.
    pub const fn new(count: u32, period: Duration) -> Self {
        Self {
            count,
            period,
            burst: None,
        }
    }

    /// How many requests a quiet key may send at once (default: the count).
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The burst size.
    pub const fn burst_size(&self) -> u32 {
        match self.burst {
            Some(b) => b,
            None => self.count,
        }
    }

    /// Time to replenish one request: `period / count`.
    pub fn replenish_interval(&self) -> Duration {
        self.period.checked_div(self.count).unwrap_or(Duration::MAX)
    }

    /// The window of the IETF `RateLimit-Policy` field: the time a whole burst
    /// takes to replenish, in whole seconds rounded up.
    pub fn window_secs(&self) -> u64 {
        let nanos = self
            .replenish_interval()
            .as_nanos()
            .saturating_mul(u128::from(self.burst_size()));
        u64::try_from(nanos.div_ceil(1_000_000_000))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Checks that the quota can be enforced: a count and burst of at least
    /// 1, an interval of at least 1 ns, and burst × interval within 584
    /// years.
    ///
    /// # Errors
    /// What is wrong, naming `policy`.
    pub fn validate(&self, policy: &str) -> Result<(), ConfigError> {
        if self.count == 0 {
            return Err(ConfigError::new(
                "quota",
                format!("policy {policy:?}: the count must be at least 1"),
            ));
        }
        if self.burst_size() == 0 {
            return Err(ConfigError::new(
                "quota",
                format!("policy {policy:?}: the burst must be at least 1"),
            ));
        }
        if self.replenish_interval().is_zero() {
            return Err(ConfigError::new(
                "quota",
                format!("policy {policy:?}: the period is too short for the count"),
            ));
        }
        let span = self
            .replenish_interval()
            .as_nanos()
            .saturating_mul(u128::from(self.burst_size()));
        if span > u128::from(u64::MAX) {
            return Err(ConfigError::new(
                "quota",
                format!("policy {policy:?}: burst × interval exceeds 584 years"),
            ));
        }
        Ok(())
    }

    pub(crate) fn to_governor(self) -> Option<governor::Quota> {
        let burst = std::num::NonZeroU32::new(self.burst_size())?;
        governor::Quota::with_period(self.replenish_interval()).map(|q| q.allow_burst(burst))
    }
}

/// A named quota. The name appears in the `RateLimit` / `RateLimit-Policy`
/// headers and in logs, so it must be an HTTP token (letters, digits,
/// `-_.` ...).
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    /// Position in the layer's policy list, for stores.
    pub(crate) index: usize,
}

impl Policy {
    pub(crate) fn new(name: &str, quota: Quota, index: usize) -> Result<Self, ConfigError> {
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(ConfigError::new(
                "policy",
                format!("policy name {name:?} must be a non-empty HTTP token"),
            ));
        }
        quota.validate(name)?;
        Ok(Self {
            name: Arc::from(name),
            quota,
            index,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy's quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Position of the policy in its layer (0 is the default policy).
    pub fn index(&self) -> usize {
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_mean_what_they_say() {
        let q = Quota::per_second(10);
        assert_eq!(q.replenish_interval(), Duration::from_millis(100));
        assert_eq!(q.burst_size(), 10);
        assert_eq!(q.window_secs(), 1);
        let q = Quota::per_minute(600).burst(100);
        assert_eq!(q.window_secs(), 10);
        let q = Quota::per_hour(60);
        assert_eq!(q.replenish_interval(), Duration::from_secs(60));
        assert_eq!(q.window_secs(), 3600);
        // 3 requests per 7 s with burst 1: window rounds up to 3 s.
        assert_eq!(
            Quota::new(3, Duration::from_secs(7)).burst(1).window_secs(),
            3
        );
    }

    #[test]
    fn invalid_quotas_are_config_errors() {
        assert!(Quota::per_minute(0).validate("p").is_err());
        assert!(Quota::per_minute(5).burst(0).validate("p").is_err());
        assert!(Quota::new(10, Duration::ZERO).validate("p").is_err());
        assert!(Quota::per_hour(1).burst(u32::MAX).validate("p").is_err());
        assert!(Policy::new("bad name", Quota::per_second(1), 0).is_err());
        assert!(Policy::new("user", Quota::per_second(1), 0).is_ok());
    }

    #[test]
    fn converts_to_governor() {
        let g = Quota::per_minute(600).burst(100).to_governor().unwrap();
        assert_eq!(g.replenish_interval(), Duration::from_millis(100));
        assert_eq!(g.burst_size().get(), 100);
    }
}
