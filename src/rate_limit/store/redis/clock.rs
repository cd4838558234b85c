//! Two clocks: this process's monotonic one (local decisions, timeouts) and
//! each Redis server's `TIME`, related by an offset learned from replies.

#[cfg(test)]
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Microseconds on this process's monotonic clock since the store was made.
#[derive(Debug, Clone)]
pub(super) enum LocalClock {
    /// `std::time::Instant`.
    Monotonic(Instant),
    /// Moved by hand (unit tests).
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl LocalClock {
    pub(super) fn new() -> Self {
        Self::Monotonic(Instant::now())
    }

    pub(super) fn now_us(&self) -> u64 {
        match self {
            Self::Monotonic(epoch) => {
                u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
            }
            #[cfg(test)]
            Self::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}

/// Samples are kept for one to two windows, so a Redis clock stepped
/// backwards stops mattering within 20 s.
const WINDOW_US: u64 = 10_000_000;

/// The estimate may lag a clock that runs faster than ours by this much per
/// elapsed microsecond (1/1000: far more than NTP-disciplined clocks drift).
const DRIFT_DIVISOR: u64 = 1_000;

const UNSET: i64 = i64::MIN;

/// What one Redis server's `TIME` reads when this process's clock reads t:
/// `t + offset`, with `offset` estimated from replies that carry the server's
/// time.
///
/// A reply read at local time `r` carrying server time `s` was produced no
/// later than `r`, so `s − r` is a lower bound of the offset; the estimate is
/// the greatest such bound of the last 10–20 s. A deadline translated with a
/// lower bound falls no later, on the server's clock, than the real one: the
/// server may call work late that the caller still waits for (a failure the
/// caller sees), never the reverse. A small allowance for drift since the
/// last sample keeps an idle store from calling everything late.
#[derive(Debug)]
pub(super) struct RedisClock {
    current: AtomicI64,
    previous: AtomicI64,
    window: AtomicU64,
    last_sample: AtomicU64,
}

impl Default for RedisClock {
    fn default() -> Self {
        Self {
            current: AtomicI64::new(UNSET),
            previous: AtomicI64::new(UNSET),
            window: AtomicU64::new(0),
            last_sample: AtomicU64::new(0),
        }
    }
}

impl RedisClock {
    /// Learns from a reply read at local `local_now` that carried the
    /// server's `server_now`.
    pub(super) fn record(&self, server_now_us: i64, local_now_us: u64) {
        let Ok(local) = i64::try_from(local_now_us) else {
            return;
        };
        let sample = server_now_us.saturating_sub(local);
        let window = local_now_us / WINDOW_US;
        let seen = self.window.load(Ordering::Relaxed);
        if window != seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // After an idle spell `previous` keeps the last window that had
            // samples: an estimate (plus the drift allowance) beats none.
            let old = self.current.swap(sample, Ordering::Relaxed);
            if old != UNSET {
                self.previous.store(old, Ordering::Relaxed);
            }
        } else {
            self.current.fetch_max(sample, Ordering::Relaxed);
        }
        self.last_sample.fetch_max(local_now_us, Ordering::Relaxed);
    }

    /// The server's time when this process's clock reads `local_us`, as
    /// estimated at `local_now_us`; `None` before any sample.
    pub(super) fn server_time(&self, local_us: u64, local_now_us: u64) -> Option<i64> {
        let best = self
            .current
            .load(Ordering::Relaxed)
            .max(self.previous.load(Ordering::Relaxed));
        if best == UNSET {
            return None;
        }
        let age = local_now_us.saturating_sub(self.last_sample.load(Ordering::Relaxed));
        let allowance = i64::try_from(age / DRIFT_DIVISOR).unwrap_or(i64::MAX);
        let local = i64::try_from(local_us).ok()?;
        Some(local.saturating_add(best).saturating_add(allowance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn no_estimate_before_a_sample() {
        assert_eq!(RedisClock::default().server_time(5, 5), None);
    }

    #[test]
    fn the_estimate_is_the_greatest_lower_bound_seen() {
        let clock = RedisClock::default();
        // Server is 1,000 s ahead; replies read 300, 20 and 100 µs late.
        clock.record(1_000 * S as i64 + 1_000 - 300, 1_000);
        clock.record(1_000 * S as i64 + 2_000 - 20, 2_000);
        clock.record(1_000 * S as i64 + 3_000 - 100, 3_000);
        assert_eq!(
            clock.server_time(10_000, 3_000),
            Some(1_000 * S as i64 + 10_000 - 20)
        );
    }

    #[test]
    fn a_clock_stepped_back_is_forgotten_after_two_windows() {
        let clock = RedisClock::default();
        clock.record(5_000_000, 1); // offset ≈ 5 s
        let later = 3 * WINDOW_US;
        clock.record(later as i64 + 1_000, later); // now 1 ms
        clock.record(later as i64 + 1_000 + 7, later + 7);
        let t = later + 10;
        let est = clock.server_time(t, t).unwrap();
        assert!(est > t as i64 + 4_000_000, "still remembered: {est}");
        let next = later + WINDOW_US;
        clock.record(next as i64 + 1_000, next);
        let est = clock.server_time(next, next).unwrap();
        assert_eq!(est, next as i64 + 1_000);
    }

    #[test]
    fn an_idle_estimate_gains_a_drift_allowance_and_survives_idleness() {
        let clock = RedisClock::default();
        clock.record(10_000, 0);
        assert_eq!(clock.server_time(0, 0), Some(10_000));
        // One hour without samples: 3.6 s of allowance.
        let hour = 3_600 * S;
        assert_eq!(
            clock.server_time(hour, hour),
            Some(hour as i64 + 10_000 + 3_600_000)
        );
        clock.record(hour as i64 + 10_000, hour);
        assert_eq!(clock.server_time(hour, hour), Some(hour as i64 + 10_000));
    }
}
