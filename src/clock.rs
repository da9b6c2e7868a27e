//! Time sources for the middleware.
//!
//! Every time-dependent decision in this crate (how long a circuit stays open,
//! which bucket of a time window a call belongs to, whether a call was slow)
//! reads a [`Clock`]. Three are offered:
//!
//! - [`Clock::tokio`], the default: [`tokio::time::Instant`]. It follows
//!   paused and advanced time in `#[tokio::test(start_paused = true)]` tests,
//!   so an application's own tests can drive a breaker with virtual time.
//!   Where it follows real time (not paused), the breaker's hot paths read
//!   the coarse clock in its place: the end of an open wait, and the buckets
//!   of a time window of 10 ms buckets or wider. No opt-in is needed for
//!   speed.
//! - [`Clock::coarse`]: one atomic load per read, refreshed every millisecond
//!   by a background thread that runs only while something reads it (a
//!   coarse clock, an open breaker, a time-window breaker on the default
//!   clock). For slow-call measurement at millisecond resolution without a
//!   precise reading per call. It follows real time only, not tokio's paused
//!   time. Where no thread can be started, every reading is precise.
//! - [`ManualClock`]: time moves only when told to; for deterministic tests
//!   and benchmarks.
//!
//! Readings are nanoseconds since the clock's own origin, as `u64`.
//!
//! ```
//! use std::time::Duration;
//! use tower_recovery::clock::{Clock, ManualClock};
//!
//! let manual = ManualClock::new();
//! let clock = Clock::from(manual.clone());
//! let t0 = clock.now_nanos();
//! manual.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now_nanos() - t0, 1_500_000_000);
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A source of monotonic time in nanoseconds. Cheap to clone.
#[derive(Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Tokio(tokio::time::Instant),
    // Held for its `Drop`: keeps the ticker running while this clock lives.
    Coarse(#[allow(dead_code)] Arc<CoarseUser>),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The default clock: [`tokio::time::Instant`], which honours paused time.
    pub fn tokio() -> Self {
        Self {
            kind: Kind::Tokio(tokio::time::Instant::now()),
        }
    }

    /// A cached clock read with one atomic load, refreshed every millisecond.
    ///
    /// A background thread keeps it fresh while at least one coarse clock is
    /// alive and exits when the last one is dropped. Readings may lag real time
    /// by about a millisecond and never run ahead of it.
    pub fn coarse() -> Self {
        Self {
            kind: Kind::Coarse(coarse::acquire()),
        }
    }

    /// Nanoseconds since this clock's origin.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        match &self.kind {
            Kind::Tokio(origin) => saturating_nanos(origin.elapsed()),
            Kind::Coarse(_) => coarse::read(),
            Kind::Manual(now) => now.load(Ordering::Acquire),
        }
    }

    /// Whether this is the coarse clock.
    pub fn is_coarse(&self) -> bool {
        matches!(self.kind, Kind::Coarse(_))
    }

    /// Whether readings follow real time right now, so that the coarse
    /// clock (which does) can stand in for this one on a hot path: the
    /// coarse clock itself, or tokio's while its time is not paused (a
    /// paused clock lags real time or, auto-advanced, runs ahead of it; an
    /// unpaused one reads the same as `std::time::Instant`).
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn follows_real_time(&self) -> bool {
        match &self.kind {
            Kind::Coarse(_) => true,
            Kind::Manual(_) => false,
            Kind::Tokio(_) => {
                let tokio_now = tokio::time::Instant::now().into_std();
                let real_now = std::time::Instant::now();
                real_now
                    .checked_duration_since(tokio_now)
                    .is_some_and(|d| d < Duration::from_micros(2))
            }
        }
    }
}

/// Reading the coarse clock: one atomic load. It lags real time by up to
/// about a millisecond and never runs ahead of it, so a reading below a
/// deadline does not prove the deadline is still ahead, but a reading at or
/// past it proves it has passed.
#[cfg(feature = "circuit-breaker")]
#[inline]
pub(crate) fn coarse_now() -> u64 {
    coarse::read()
}

/// The coarse reading where a ticker keeps it moving, else `u64::MAX` (a
/// deadline check then falls back to a precise reading instead of trusting
/// a frozen time).
#[cfg(feature = "circuit-breaker")]
#[inline]
pub(crate) fn coarse_if_ticking() -> u64 {
    if coarse::ticking() {
        coarse::NOW.load(Ordering::Acquire)
    } else {
        u64::MAX
    }
}

/// The coarse clock's time base read precisely now (and published).
#[cfg(feature = "circuit-breaker")]
pub(crate) fn coarse_precise_now() -> u64 {
    coarse::refresh()
}

/// Keeps the coarse clock ticking while the returned handle lives; `None`
/// when no ticker thread runs (it could not be started), as then the coarse
/// clock does not move by itself.
#[cfg(feature = "circuit-breaker")]
pub(crate) fn coarse_ticking() -> Option<CoarseTicking> {
    let user = coarse::acquire();
    coarse::ticking().then(|| CoarseTicking(user))
}

/// A reason for the coarse clock to keep ticking.
#[cfg(feature = "circuit-breaker")]
pub(crate) struct CoarseTicking(#[allow(dead_code)] Arc<CoarseUser>);

#[cfg(feature = "circuit-breaker")]
impl fmt::Debug for CoarseTicking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CoarseTicking")
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::tokio()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            Kind::Tokio(_) => "tokio",
            Kind::Coarse(_) => "coarse",
            Kind::Manual(_) => "manual",
        };
        f.debug_tuple("Clock").field(&name).finish()
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Self {
            kind: Kind::Manual(manual.now),
        }
    }
}

pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(saturating_nanos(by), Ordering::AcqRel);
    }

    /// Current reading in nanoseconds.
    pub fn now_nanos(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

mod coarse {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Instant;

    pub(super) static NOW: AtomicU64 = AtomicU64::new(0);
    static USERS: AtomicUsize = AtomicUsize::new(0);
    static RUNNING: AtomicBool = AtomicBool::new(false);
    static ORIGIN: OnceLock<Instant> = OnceLock::new();

    pub(super) struct CoarseUser(());

    // The hand-over between `acquire` (users up, then "is a ticker
    // running?") and the exiting ticker ("not running", then "any users?")
    // is a store-buffer pattern: each side writes one flag and reads the
    // other. Only sequential consistency forbids both reading the old
    // values (a user left with no ticker and a frozen clock), so those four
    // accesses are `SeqCst`.
    impl Drop for CoarseUser {
        fn drop(&mut self) {
            USERS.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether a ticker thread keeps `NOW` fresh.
    pub(super) fn ticking() -> bool {
        RUNNING.load(Ordering::Acquire)
    }

    /// The coarse reading; a precise one when no ticker runs (a thread
    /// could not be started), rather than a frozen time.
    #[inline]
    pub(super) fn read() -> u64 {
        if ticking() {
            NOW.load(Ordering::Acquire)
        } else {
            refresh()
        }
    }

    pub(super) fn refresh() -> u64 {
        let origin = *ORIGIN.get_or_init(Instant::now);
        let now = saturating_nanos(origin.elapsed());
        NOW.fetch_max(now, Ordering::AcqRel);
        now
    }

    pub(super) fn acquire() -> Arc<CoarseUser> {
        USERS.fetch_add(1, Ordering::SeqCst);
        refresh();
        if !RUNNING.swap(true, Ordering::SeqCst) {
            let spawned = std::thread::Builder::new()
                .name("tower-recovery-clock".into())
                .spawn(ticker);
            if spawned.is_err() {
                // No thread: every reading is a precise one (`read`).
                RUNNING.store(false, Ordering::Release);
            }
        }
        Arc::new(CoarseUser(()))
    }

    fn ticker() {
        loop {
            while USERS.load(Ordering::SeqCst) > 0 {
                refresh();
                std::thread::sleep(Duration::from_millis(1));
            }
            RUNNING.store(false, Ordering::SeqCst);
            // A user may have arrived between the last check and the store
            // above and seen RUNNING still true: take the ticker back.
            if USERS.load(Ordering::SeqCst) == 0 || RUNNING.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

use coarse::CoarseUser;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_moves_and_never_goes_back() {
        let clock = Clock::coarse();
        let a = clock.now_nanos();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut b = clock.now_nanos();
        while b == a && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            b = clock.now_nanos();
        }
        assert!(b > a, "coarse clock did not move within 5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let a = clock.now_nanos();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now_nanos() - a, 30_000_000_000);
    }
}
