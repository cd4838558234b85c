//! Wall-clock time for `exp` / `nbf` checks, injectable for tests.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in whole seconds since the Unix epoch.
///
/// Token lifetimes (`exp`, `nbf`, `iat`) are wall-clock values, so this is a
/// wall clock. Tests inject a fixed or stepping clock; closures implement the
/// trait:
///
/// ```
/// use tollgate::WallClock;
/// let fixed = || 1_700_000_000_u64;
/// assert_eq!(fixed.unix_now(), 1_700_000_000);
/// ```
pub trait WallClock: Send + Sync + 'static {
    /// Seconds since 1970-01-01T00:00:00Z.
    fn unix_now(&self) -> u64;
}

impl<F> WallClock for F
where
    F: Fn() -> u64 + Send + Sync + 'static,
{
    fn unix_now(&self) -> u64 {
        self()
    }
}

/// The system clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn unix_now(&self) -> u64 {
        // A clock set before 1970 reads as 0: every token with an `exp` then
        // looks fresh, so `nbf` / `iat` checks are the ones that bite.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}
