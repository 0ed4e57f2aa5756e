//! The wall clock that credential caches ask "is it still valid / is it time to refresh".
//!
//! Why a trait: a credential's expiry is a wall-clock time (`exp`, STS's `Expiration`), but
//! tokio's timers run on CLOCK_MONOTONIC, which stops while a VM or laptop is suspended and
//! ignores wall-clock steps. A cache that measures a lifetime once and then counts it down on
//! the monotonic clock serves credentials long expired after a 2-hour suspend. So
//! every validity and refresh decision compares the expiry with [`Clock::now`] at the moment of
//! the decision, and refresh timers wake at least every [`RECHECK_INTERVAL`] to look again.
//! Tests inject a [`TestClock`] to jump the wall clock forward or back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

/// How often a sleeping refresh timer wakes to compare the expiry with the wall clock, at most.
/// A minute bounds how long a credential can be served past its refresh point after a resume
/// from suspend or a clock step.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A source of wall-clock time.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current wall-clock time (UTC).
    fn now(&self) -> OffsetDateTime;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock (`SystemTime::now`).
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The real wall clock as a [`SharedClock`].
pub fn wall_clock() -> SharedClock {
    Arc::new(WallClock)
}

/// Time left until `expiry` by `clock`, zero if it has passed.
pub fn remaining_until(clock: &dyn Clock, expiry: OffsetDateTime) -> Duration {
    Duration::try_from(expiry - clock.now()).unwrap_or(Duration::ZERO)
}

/// A wall clock for tests: it advances with tokio's clock (so `start_paused` tests move it
/// with `tokio::time::sleep`/`advance`) and can be stepped forward or back with [`jump`],
/// which simulates a suspend (wall time moves, monotonic time does not) or an NTP step.
///
/// [`jump`]: TestClock::jump
#[derive(Debug)]
pub struct TestClock {
    base: OffsetDateTime,
    started: tokio::time::Instant,
    offset_ms: AtomicI64,
}

impl TestClock {
    /// A clock reading the real wall-clock time now. Must be called inside a Tokio runtime
    /// when time is paused, like any use of tokio's clock.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: OffsetDateTime::now_utc(),
            started: tokio::time::Instant::now(),
            offset_ms: AtomicI64::new(0),
        })
    }

    /// Steps the wall clock by `by` (negative: backwards) without moving tokio's clock.
    pub fn jump(&self, by: time::Duration) {
        let ms = i64::try_from(by.whole_milliseconds()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed =
            time::Duration::try_from(self.started.elapsed()).unwrap_or(time::Duration::MAX);
        self.base + elapsed + time::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn test_clock_follows_tokio_time_and_jumps() {
        let clock = TestClock::new();
        let t0 = clock.now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!((clock.now() - t0).whole_seconds(), 10);
        clock.jump(time::Duration::hours(2));
        assert_eq!((clock.now() - t0).whole_seconds(), 7210);
        clock.jump(time::Duration::hours(-3));
        assert_eq!((clock.now() - t0).whole_seconds(), 10 - 3600);
        assert_eq!(remaining_until(&*clock, t0), Duration::from_secs(3590));
        assert_eq!(
            remaining_until(&*clock, t0 - time::Duration::hours(5)),
            Duration::ZERO
        );
    }
}
