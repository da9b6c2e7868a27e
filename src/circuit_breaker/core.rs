//! The lock-free state machine behind a [`Breaker`](super::Breaker).
//!
//! One `u64` holds the state code (3 bits) and a generation (the rest); every
//! transition bumps the generation. An admission is a [`Ticket`] carrying the
//! state word it was admitted under: an outcome whose ticket no longer matches
//! the current word was admitted in an earlier state and is dropped.
//!
//! Only transitions take the mutex, and they are rare; admission and recording
//! on the closed path are atomics only. Nothing outside this file runs under
//! the mutex: a transition publishes its event to a bounded broadcast channel
//! (observers) and a watch value of counters (a recovery), and wakes
//! backpressured callers; whoever reacts does so on its own task. Reading
//! (`state`, `snapshot`, counts) never performs a transition: an overdue
//! timed transition is projected for the reader and performed by the next
//! admission. The half-open probe budget is a second
//! word packing the generation's low 32 bits, the permits still available and
//! the probe successes, so a late release from an earlier half-open period can
//! never hand out an extra permit.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use super::window::{CountRing, TimeBuckets, WindowCounts};
use super::{Cause, Counts, Rejection, State, Transition};
use crate::classify::Outcome;
use crate::clock::Clock;
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Mutex, MutexGuard, lock};

pub(crate) use crate::util::Padded;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const CODE_BITS: u32 = 3;
const CODE_MASK: u64 = (1 << CODE_BITS) - 1;

#[inline]
fn code(word: u64) -> u64 {
    word & CODE_MASK
}

#[inline]
fn generation(word: u64) -> u64 {
    word >> CODE_BITS
}

fn state_of(word: u64) -> State {
    match code(word) {
        CLOSED => State::Closed,
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        FORCED_OPEN => State::ForcedOpen,
        _ => State::Disabled,
    }
}

fn code_of(state: State) -> u64 {
    match state {
        State::Closed => CLOSED,
        State::Open => OPEN,
        State::HalfOpen => HALF_OPEN,
        State::ForcedOpen => FORCED_OPEN,
        State::Disabled => DISABLED,
    }
}

const COUNT_MASK: u64 = 0xffff_ffff;

/// Whether `part` is at least `ppm` parts per million of `whole`.
#[inline]
fn at_least(part: u64, ppm: u64, whole: u64) -> bool {
    u128::from(part) * 1_000_000 >= u128::from(ppm) * u128::from(whole)
}

/// The consecutive-failure word of generation `word` with a zero count.
#[inline]
fn cons_tag(word: u64) -> u64 {
    generation(word) << 32
}

// half-open word: [generation low 32 | available permits 16 | successes 16]
#[inline]
fn ho_pack(word: u64, available: u64, successes: u64) -> u64 {
    (generation(word) << 32) | (available << 16) | successes
}
#[inline]
fn ho_matches(h: u64, word: u64) -> bool {
    (h >> 32) == (generation(word) & 0xffff_ffff)
}
#[inline]
fn ho_available(h: u64) -> u64 {
    (h >> 16) & 0xffff
}
#[inline]
fn ho_successes(h: u64) -> u64 {
    h & 0xffff
}

/// How the breaker decides to trip while closed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum TripRule {
    Consecutive(u32),
    Rate {
        minimum_calls: u64,
        failure_ppm: u64,
        slow_ppm: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum WindowKind {
    None,
    Count(u32),
    Time { width: u64, buckets: u32 },
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) rule: TripRule,
    pub(crate) window: WindowKind,
    pub(crate) slow_nanos: Option<u64>,
    pub(crate) open_base: u64,
    pub(crate) open_multiplier: f64,
    pub(crate) open_max: u64,
    pub(crate) healthy_period: u64,
    pub(crate) permits: u16,
    pub(crate) half_open_max_wait: Option<u64>,
    /// The longest open duration an upstream's `Retry-After` may ask for
    /// (`None`: `Retry-After` is not read).
    pub(crate) retry_after_cap: Option<u64>,
    /// Record and report, never reject (metrics-only mode).
    pub(crate) metrics_only: bool,
    /// Transitions kept for `recent_events`.
    pub(crate) recent_events: usize,
    /// A staged half-open: a rising share of calls instead of fixed probes.
    pub(crate) ramp: Option<Ramp>,
    /// One of a keyed registry's breakers: its calls are counted in flight.
    pub(crate) in_registry: bool,
    /// A keyed registry's breaker: metrics labelled by the registry, and its
    /// keys-per-state gauge kept instead of a state gauge per key.
    #[cfg(feature = "metrics")]
    pub(crate) keyed: Option<Arc<super::keyed::Member>>,
}

/// A half-open ramp: the share of calls admitted rises linearly from
/// `initial_ppm` to all of them over `duration`; the breaker closes once
/// the ramp is over and enough admitted calls succeeded, and re-opens on a
/// failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ramp {
    pub(crate) initial_ppm: u64,
    pub(crate) duration: u64,
}

impl Ramp {
    /// The share admitted `elapsed` into the ramp, in parts per million.
    fn share_ppm(&self, elapsed: u64) -> u64 {
        if elapsed >= self.duration || self.duration == 0 {
            return 1_000_000;
        }
        let rise = u128::from(1_000_000 - self.initial_ppm) * u128::from(elapsed)
            / u128::from(self.duration);
        self.initial_ppm + rise as u64
    }
}

/// Whether the `n`th call of a ramp is admitted at a share of `ppm`: calls
/// are picked evenly (the `n`th is admitted when the running total of
/// shares passes a whole call), so the share holds over any run of calls,
/// not only on average.
#[inline]
fn picked(n: u64, ppm: u64) -> bool {
    let before = u128::from(n) * u128::from(ppm) / 1_000_000;
    let after = (u128::from(n) + 1) * u128::from(ppm) / 1_000_000;
    after > before
}

/// The open-duration settings, read and changed under the transition lock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenSettings {
    pub(crate) base: u64,
    pub(crate) multiplier: f64,
    pub(crate) max: u64,
    pub(crate) healthy_period: u64,
}

impl OpenSettings {
    /// The open duration at growth `level`.
    fn nanos(&self, level: u32) -> u64 {
        let grown = self.base as f64 * self.multiplier.powi(level as i32);
        if grown >= self.max as f64 {
            self.max
        } else {
            grown as u64
        }
    }
}

// The trip rule's thresholds, in one word so that a change is seen whole:
// consecutive: the limit; rate: [minimum calls 23 | failure ppm 20 | slow ppm 21].
pub(crate) const MAX_MINIMUM_CALLS: u64 = (1 << 23) - 1;

fn rule_word(rule: &TripRule) -> u64 {
    match *rule {
        TripRule::Consecutive(limit) => u64::from(limit),
        TripRule::Rate {
            minimum_calls,
            failure_ppm,
            slow_ppm,
        } => {
            (minimum_calls.clamp(1, MAX_MINIMUM_CALLS) << 41)
                | (failure_ppm.min(1_000_000) << 21)
                | slow_ppm.map_or(0, |p| p.clamp(1, 1_000_000))
        }
    }
}

#[derive(Debug)]
enum Window {
    None,
    Count(CountRing),
    Time(TimeBuckets),
}

/// An admission: the state word it was made under, and when the call started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    word: u64,
    start: u64,
}

/// A ticket's `start` bit saying that its call is counted in flight (a
/// keyed registry's call: see `Core::in_flight`). Start times, in
/// nanoseconds of the breaker's clock, never reach it.
const COUNTED: u64 = 1 << 63;

impl Ticket {
    /// The same admission, counted in flight: its end takes the count back.
    #[inline]
    pub(crate) fn counted(self) -> Self {
        Self {
            word: self.word,
            start: self.start | COUNTED,
        }
    }

    /// The state word the call was admitted under.
    #[inline]
    pub(crate) fn word(&self) -> u64 {
        self.word
    }

    #[inline]
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    #[inline]
    pub(crate) fn new(word: u64, start: u64) -> Self {
        Self { word, start }
    }

    /// A ticket for an admission latched as its state word.
    #[inline]
    pub(crate) fn from_word(word: u64) -> Self {
        Self { word, start: 0 }
    }

    pub(crate) fn generation(&self) -> u64 {
        generation(self.word)
    }

    pub(crate) fn is_probe(&self) -> bool {
        code(self.word) == HALF_OPEN
    }
}

/// Transitions an observer may fall behind by before it is told how many it
/// missed.
pub(crate) const EVENT_CAPACITY: usize = 64;

/// What a recovery watches: the state word and monotonic counts of the
/// transitions it must act on. Values coalesce (a watch keeps the latest),
/// but the counts never lose that something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Signal {
    /// The state word after the latest transition.
    pub(crate) word: u64,
    /// Transitions into `Open` from `Closed` or `HalfOpen`.
    pub(crate) opens: u64,
    /// Transitions into `Closed` by another cause than
    /// [`Cause::Recovered`]: the dependency healed without the recovery.
    pub(crate) heals: u64,
    /// When the breaker last left `Closed` for `Open`: the start of the
    /// current outage as the breaker saw it (tokio time, for MTTR).
    pub(crate) opened_at: tokio::time::Instant,
    /// When the breaker last reached `Closed`.
    pub(crate) closed_at: tokio::time::Instant,
    /// Generation of the latest opening (0: none yet).
    pub(crate) opened_gen: u64,
    /// Generation of the latest heal (0: none yet).
    pub(crate) healed_gen: u64,
    /// When the outage that the latest heal ended had begun (its
    /// `Closed -> Open`), if that heal ended one.
    pub(crate) healed_outage_start: Option<tokio::time::Instant>,
}

impl Default for Signal {
    fn default() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            word: 0,
            opens: 0,
            heals: 0,
            opened_at: now,
            closed_at: now,
            opened_gen: 0,
            healed_gen: 0,
            healed_outage_start: None,
        }
    }
}

#[cfg(feature = "recovery")]
impl Signal {
    pub(crate) fn state(&self) -> State {
        state_of(self.word)
    }
}

/// The part of the breaker only transitions touch, under the mutex.
struct Locked {
    /// Re-opens without a healthy period in between (open-duration growth).
    level: u32,
    closed_at: u64,
    signal: Signal,
    /// When the breaker left `Closed` for `Open`, until it is `Closed`
    /// again, whatever states it passes through (a person may force it open
    /// or disable it meanwhile).
    outage_start: Option<tokio::time::Instant>,
    /// Keeps the coarse clock ticking while the reject path reads it.
    ticking: Option<crate::clock::CoarseTicking>,
    /// Open duration, growth and healthy period (changed by `tune`).
    open: OpenSettings,
}

/// Metric handles, registered once when the breaker is built.
#[cfg(feature = "metrics")]
struct Metrics {
    failures: metrics::Counter,
    rejections: metrics::Counter,
    /// `None` for a keyed registry's breaker: its state is counted in the
    /// registry's keys-per-state gauge, and a `breaker_state` series under
    /// the registry's name, never set, would read closed.
    state: Option<metrics::Gauge>,
}

pub(crate) struct Core {
    /// Registered with the recorder in use at each event (re-registered if
    /// it changes), not at build: a breaker built or first used before the
    /// application installs its recorder still reports.
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::Bound<Metrics>,
    state: Padded<AtomicU64>,
    /// Consecutive failures, tagged with the generation they count in:
    /// `[generation low 32 | count 32]`. Every transition re-tags it, so a
    /// failure admitted in an earlier state can never add to it.
    consecutive: Padded<AtomicU64>,
    half_open: Padded<AtomicU64>,
    failures: Padded<AtomicU64>,
    rejected: crate::util::Striped,
    open_until: AtomicU64,
    /// The end of the open wait on the coarse clock, when this breaker's
    /// clock follows real time (0 otherwise): the reject path's check is
    /// then one load of the coarse clock instead of a precise reading.
    open_until_coarse: AtomicU64,
    half_open_until: AtomicU64,
    /// The open duration the next opening from half-open would use.
    next_open: AtomicU64,
    transitions: AtomicU64,
    /// Unique among the breakers of this process (never 0).
    pub(crate) id: u64,
    /// Call credits given back through the shared tally (see `crate::lease`).
    pub(crate) returned: Padded<AtomicU64>,
    /// The trip rule's thresholds (see `rule_word`); its kind is `cfg.rule`'s.
    rule: AtomicU64,
    /// The slow-call threshold, when slow calls are measured.
    slow_limit: AtomicU64,
    /// Probes of the next half-open period.
    permits: AtomicU64,
    /// Probes of the current half-open period (fixed when it began, so a
    /// change never strands a period that needs more successes than it
    /// admits).
    period_permits: AtomicU64,
    /// The base open duration, for a half-open rejection's retry hint.
    open_base: AtomicU64,
    /// Metrics-only mode: record and report, never reject.
    metrics_only: AtomicBool,
    /// Admissions a metrics-only breaker let through that it would have
    /// rejected.
    shadow_rejected: AtomicU64,
    /// The end of the wait an upstream asked for (`Retry-After`) on this
    /// breaker's clock, 0 if none: the next opening lasts until then.
    hinted_until: AtomicU64,
    /// The latest transitions, newest last.
    recent: Mutex<VecDeque<super::RecentEvent>>,
    /// When the current half-open period began (a ramp's start).
    half_open_since: AtomicU64,
    /// Calls that asked for admission in this ramp (picks admissions).
    ramp_calls: AtomicU64,
    /// A keyed registry's breaker: its calls in flight, so that a sweep
    /// never drops a key whose call has yet to record its outcome. Striped:
    /// threads calling the same key do not share a cache line.
    in_flight: Option<crate::util::Striped>,
    window: Window,
    /// No window and no slow-call detection: a success only resets the
    /// consecutive count.
    simple: bool,
    pub(crate) cfg: Config,
    pub(crate) clock: Clock,
    /// Whether the coarse clock stands in for `clock` in a time window
    /// (its buckets at least 10 ms wide, and `clock` tokio's, not paused, or
    /// the coarse clock itself), and what keeps it ticking. Decided at the
    /// window's first call, where the breaker is used (inside the runtime
    /// whose time it follows), not where it was built.
    fast: std::sync::OnceLock<Option<crate::clock::CoarseTicking>>,
    pub(crate) name: Arc<str>,
    pub(crate) changed: Arc<Notify>,
    /// Made at the first `subscribe`: its buffer (64 transitions) is most
    /// of a breaker's memory, and most breakers are never observed.
    events: std::sync::OnceLock<broadcast::Sender<Transition>>,
    signal: watch::Sender<Signal>,
    /// Transitions made but not yet sent, in generation order.
    /// Transitions with the signal after each, in order.
    outbox: Mutex<VecDeque<(Transition, Signal)>>,
    publishing: AtomicBool,
    locked: Mutex<Locked>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("name", &self.name)
            .field("state", &state_of(self.state.0.load(Ordering::Relaxed)))
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: &str, keyed: bool) -> Self {
        let label = [("breaker", name.to_string())];
        Self {
            failures: metrics::counter!(crate::metrics::BREAKER_FAILURES, &label),
            rejections: metrics::counter!(crate::metrics::BREAKER_REJECTIONS, &label),
            state: (!keyed).then(|| metrics::gauge!(crate::metrics::BREAKER_STATE, &label)),
        }
    }
}

impl Core {
    pub(crate) fn new(name: Arc<str>, cfg: Config, clock: Clock) -> Self {
        let window = match cfg.window {
            WindowKind::None => Window::None,
            WindowKind::Count(size) => Window::Count(CountRing::new(size)),
            WindowKind::Time { width, buckets } => Window::Time(TimeBuckets::new(width, buckets)),
        };
        let now = clock.now_nanos();
        let simple = matches!(window, Window::None) && cfg.slow_nanos.is_none();
        let open = OpenSettings {
            base: cfg.open_base,
            multiplier: cfg.open_multiplier,
            max: cfg.open_max,
            healthy_period: cfg.healthy_period,
        };
        Self {
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Bound::new(),
            simple,
            state: Padded(AtomicU64::new(CLOSED)),
            consecutive: Padded(AtomicU64::new(0)),
            half_open: Padded(AtomicU64::new(0)),
            failures: Padded(AtomicU64::new(0)),
            rejected: crate::util::Striped::new(),
            open_until: AtomicU64::new(0),
            open_until_coarse: AtomicU64::new(0),
            half_open_until: AtomicU64::new(u64::MAX),
            next_open: AtomicU64::new(cfg.open_base.min(cfg.open_max)),
            rule: AtomicU64::new(rule_word(&cfg.rule)),
            slow_limit: AtomicU64::new(cfg.slow_nanos.unwrap_or(0)),
            permits: AtomicU64::new(u64::from(cfg.permits)),
            period_permits: AtomicU64::new(u64::from(cfg.permits)),
            in_flight: cfg.in_registry.then(crate::util::Striped::new),
            open_base: AtomicU64::new(cfg.open_base),
            metrics_only: AtomicBool::new(cfg.metrics_only),
            shadow_rejected: AtomicU64::new(0),
            hinted_until: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            half_open_since: AtomicU64::new(0),
            ramp_calls: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            id: {
                static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            returned: Padded(AtomicU64::new(0)),
            window,
            cfg,
            clock,
            fast: std::sync::OnceLock::new(),
            name,
            changed: Arc::new(Notify::new()),
            events: std::sync::OnceLock::new(),
            signal: watch::channel(Signal::default()).0,
            outbox: Mutex::new(VecDeque::new()),
            publishing: AtomicBool::new(false),
            locked: Mutex::new(Locked {
                level: 0,
                closed_at: now,
                signal: Signal::default(),
                outage_start: None,
                ticking: None,
                open,
            }),
        }
    }

    /// The `breaker` label of this breaker's metrics: its name, or its
    /// keyed registry's (one series per registry, not per key).
    #[cfg(feature = "metrics")]
    fn metrics_label(&self) -> &str {
        self.cfg.keyed.as_ref().map_or(&self.name, |m| m.registry())
    }

    /// Runs `f` with the metric handles of the recorder in use.
    #[cfg(feature = "metrics")]
    #[inline]
    fn metrics<R>(&self, f: impl FnOnce(&Metrics) -> R) -> R {
        self.metrics.with(
            || Metrics::new(self.metrics_label(), self.cfg.keyed.is_some()),
            f,
        )
    }

    /// The trip rule with its current thresholds.
    #[inline]
    fn rule(&self) -> TripRule {
        let w = self.rule.load(Ordering::Relaxed);
        match self.cfg.rule {
            TripRule::Consecutive(_) => TripRule::Consecutive(w as u32),
            TripRule::Rate { .. } => TripRule::Rate {
                minimum_calls: w >> 41,
                failure_ppm: (w >> 21) & ((1 << 20) - 1),
                slow_ppm: match w & ((1 << 21) - 1) {
                    0 => None,
                    ppm => Some(ppm),
                },
            },
        }
    }

    // ===== admission =====

    /// Decides whether a call may proceed. Closed: one load.
    #[inline]
    pub(crate) fn admit(&self) -> Result<Ticket, Rejection> {
        self.admit_counted(true)
    }

    /// The closed path of admission: the state word when closed.
    #[inline]
    pub(crate) fn admit_closed(&self) -> Option<u64> {
        let word = self.state.0.load(Ordering::Acquire);
        (code(word) == CLOSED).then_some(word)
    }

    /// Admission; `count` says whether a rejection is counted (a
    /// backpressured service asking again is not rejected again).
    #[inline]
    pub(crate) fn admit_counted(&self, count: bool) -> Result<Ticket, Rejection> {
        let word = self.state.0.load(Ordering::Acquire);
        match code(word) {
            CLOSED => return Ok(Ticket { word, start: 0 }),
            OPEN => {
                // While open, rejecting is the hot path: keep it inline, and
                // measure the open wait with the coarse clock (one load)
                // where it can stand in for the breaker's own.
                let until = self.open_until_coarse.load(Ordering::Acquire);
                let now = crate::clock::coarse_if_ticking();
                if now < until {
                    return self.refuse(word, State::Open, Some(until - now), count);
                }
                let now = self.clock.now_nanos();
                let until = self.open_until.load(Ordering::Acquire);
                if now < until {
                    return self.refuse(word, State::Open, Some(until - now), count);
                }
            }
            _ => {}
        }
        self.admit_slow(word, count)
    }

    #[cold]
    fn admit_slow(&self, mut word: u64, count: bool) -> Result<Ticket, Rejection> {
        loop {
            match code(word) {
                CLOSED | DISABLED => return Ok(Ticket { word, start: 0 }),
                FORCED_OPEN => return self.refuse(word, State::ForcedOpen, None, count),
                OPEN => {
                    let now = self.clock.now_nanos();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return self.refuse(word, State::Open, Some(until - now), count);
                    }
                    self.transition(word, State::HalfOpen, Cause::OpenWaitElapsed, now);
                }
                _ if self.cfg.ramp.is_some() => {
                    let now = self.clock.now_nanos();
                    if self.ramp_complete(word, now) {
                        self.transition(word, State::Closed, Cause::RampCompleted, now);
                        word = self.state.0.load(Ordering::Acquire);
                        continue;
                    }
                    let (share, left) = self.ramp_share(word, now);
                    let n = self.ramp_calls.fetch_add(1, Ordering::Relaxed);
                    if picked(n, share) {
                        return Ok(Ticket { word, start: 0 });
                    }
                    let after = left.clamp(1_000_000, 1_000_000_000);
                    return self.refuse(word, State::HalfOpen, Some(after), count);
                }
                _ => {
                    if self.cfg.half_open_max_wait.is_some() {
                        let now = self.clock.now_nanos();
                        let timeout = self.half_open_until.load(Ordering::Acquire);
                        if now >= timeout {
                            // Re-opened as of the timeout, as `state()` reports.
                            self.transition(word, State::Open, Cause::HalfOpenTimeout, timeout);
                            word = self.state.0.load(Ordering::Acquire);
                            continue;
                        }
                    }
                    let mut h = self.half_open.0.load(Ordering::Acquire);
                    while ho_matches(h, word) {
                        if ho_available(h) == 0 {
                            let after = self.half_open_busy_retry_after();
                            return self.refuse(word, State::HalfOpen, Some(after), count);
                        }
                        match self.half_open.0.compare_exchange_weak(
                            h,
                            h - (1 << 16),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => return Ok(Ticket { word, start: 0 }),
                            Err(actual) => h = actual,
                        }
                    }
                }
            }
            word = self.state.0.load(Ordering::Acquire);
        }
    }

    /// What a half-open rejection (every permit in use) says about when to
    /// retry: when the half-open wait ends, if one is set (the breaker then
    /// decides again by itself); otherwise the base open duration, the least
    /// a failing probe would keep the circuit open.
    fn half_open_busy_retry_after(&self) -> u64 {
        match self.cfg.half_open_max_wait {
            Some(_) => self
                .half_open_until
                .load(Ordering::Acquire)
                .saturating_sub(self.clock.now_nanos()),
            None => self.open_base.load(Ordering::Relaxed),
        }
    }

    /// A call the breaker does not admit: rejected, or, in metrics-only
    /// mode, admitted and counted as a rejection it would have made. A
    /// forced-open breaker rejects in every mode: a person asked for it.
    #[inline]
    fn refuse(
        &self,
        word: u64,
        state: State,
        retry_after: Option<u64>,
        count: bool,
    ) -> Result<Ticket, Rejection> {
        if state != State::ForcedOpen && self.metrics_only.load(Ordering::Relaxed) {
            // Counted whether or not the caller counts its rejections: a
            // backpressured service, which asks again after a rejection
            // (not counted twice), does not ask again after an admission.
            return Ok(self.shadow_admit(word));
        }
        Err(self.reject(state, retry_after, count))
    }

    /// Admits a call a metrics-only breaker would have rejected. Its ticket
    /// carries the `Open` code of the current generation: its outcome is
    /// not recorded (the breaker would not have seen it) and it holds no
    /// probe permit.
    #[cold]
    fn shadow_admit(&self, word: u64) -> Ticket {
        self.shadow_rejected.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            crate::metrics::BREAKER_SHADOW_REJECTIONS,
            "breaker" => self.metrics_label().to_string()
        )
        .increment(1);
        Ticket {
            word: (word & !CODE_MASK) | OPEN,
            start: 0,
        }
    }

    #[inline]
    fn reject(&self, state: State, retry_after: Option<u64>, count: bool) -> Rejection {
        if count {
            self.rejected.add(1);
            #[cfg(feature = "metrics")]
            self.metrics(|m| m.rejections.increment(1));
        }
        Rejection::new(state, retry_after)
    }

    /// Stamps the start of the call when slow calls are measured.
    #[inline]
    pub(crate) fn start(&self, ticket: &mut Ticket) {
        if self.cfg.slow_nanos.is_some() {
            ticket.start = self.clock.now_nanos();
        }
    }

    // ===== outcomes =====

    /// Records a finished call.
    #[inline]
    pub(crate) fn complete(&self, ticket: Ticket, outcome: Outcome) {
        match code(ticket.word) {
            CLOSED => match outcome {
                Outcome::Success => self.closed_success(ticket),
                Outcome::Failure => self.closed_failure(ticket),
                Outcome::Ignore => {}
            },
            HALF_OPEN => self.probe_done(ticket, outcome),
            // Disabled records nothing.
            _ => {}
        }
        // Last: a sweep that sees the call ended sees what it recorded (a
        // trip included), so it never drops a key its call just opened.
        self.leave(ticket);
    }

    /// Records a finished call whose failure came with the upstream's
    /// `Retry-After`: the next opening lasts that long (capped), instead of
    /// the configured open duration.
    pub(crate) fn complete_hinted(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        retry_after: Option<Duration>,
    ) {
        if outcome == Outcome::Failure {
            if let (Some(wait), Some(cap)) = (retry_after, self.cfg.retry_after_cap) {
                let wait = crate::clock::saturating_nanos(wait).min(cap);
                let until = self.clock.now_nanos().saturating_add(wait);
                self.hinted_until.fetch_max(until, Ordering::AcqRel);
            }
        }
        self.complete(ticket, outcome);
    }

    /// A call admitted with `ticket` was dropped before it finished.
    #[inline]
    pub(crate) fn release(&self, ticket: Ticket) {
        if code(ticket.word) == HALF_OPEN {
            self.give_back_permit(ticket.word);
        }
        self.leave(ticket);
    }

    // ===== calls in flight (a keyed registry's breakers) =====

    /// Counts a call in flight, before its admission; `false` for a breaker
    /// outside a registry (nothing counted).
    #[inline]
    pub(crate) fn enter(&self) -> bool {
        match &self.in_flight {
            Some(n) => {
                n.enter();
                true
            }
            None => false,
        }
    }

    /// Takes back the count of a call `enter` counted whose ticket was
    /// never made (a rejection, or a key found being evicted).
    #[inline]
    pub(crate) fn leave_uncounted(&self) {
        if let Some(n) = &self.in_flight {
            n.leave();
        }
    }

    #[inline]
    fn leave(&self, ticket: Ticket) {
        if ticket.start & COUNTED != 0 {
            self.leave_counted();
        }
    }

    /// Out of line: the plain breaker's completion, which never takes
    /// this branch, stays small enough for its future to inline it.
    #[cold]
    #[inline(never)]
    fn leave_counted(&self) {
        self.leave_uncounted();
    }

    /// Calls counted in flight now (0 outside a registry).
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.as_ref().map_or(0, crate::util::Striped::net)
    }

    #[inline]
    fn closed_success(&self, ticket: Ticket) {
        if self.simple {
            // The common case: one load, and a write only after failures.
            self.reset_consecutive(ticket.word);
            return;
        }
        self.closed_record(ticket, false);
    }

    /// A success of generation `word`: the count goes back to zero.
    #[inline]
    fn reset_consecutive(&self, word: u64) {
        let zero = cons_tag(word);
        let mut c = self.consecutive.0.load(Ordering::Relaxed);
        while c != zero && c & !COUNT_MASK == zero {
            match self.consecutive.0.compare_exchange_weak(
                c,
                zero,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.forget_hint();
                    return;
                }
                Err(actual) => c = actual,
            }
        }
    }

    /// A success after failures: a wait an upstream asked for with one of
    /// them is over (it serves again), as on a transition to `Closed`, so
    /// it no longer sets the next opening. Off the hot path: only a
    /// success that ends a run of failures comes here.
    #[cold]
    fn forget_hint(&self) {
        if self.hinted_until.load(Ordering::Relaxed) != 0 {
            self.hinted_until.store(0, Ordering::Release);
        }
    }

    /// A failure of generation `word`: the new count, or `None` when the
    /// breaker has left that generation (the outcome is stale).
    #[inline]
    fn add_consecutive(&self, word: u64) -> Option<u32> {
        let tag = cons_tag(word);
        let mut c = self.consecutive.0.load(Ordering::Acquire);
        loop {
            if c & !COUNT_MASK != tag {
                return None;
            }
            let next = tag | ((c & COUNT_MASK) + 1).min(COUNT_MASK);
            match self.consecutive.0.compare_exchange_weak(
                c,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((next & COUNT_MASK) as u32),
                Err(actual) => c = actual,
            }
        }
    }

    #[inline]
    fn closed_failure(&self, ticket: Ticket) {
        self.count_failure();
        self.closed_record(ticket, true);
    }

    /// A failure observed (recorded or stale): counted for reports and
    /// metrics. Failures are not the hot path; successes count nothing.
    #[inline]
    fn count_failure(&self) {
        self.failures.0.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics(|m| m.failures.increment(1));
    }

    #[inline]
    fn closed_record(&self, ticket: Ticket, failed: bool) {
        if self.state.0.load(Ordering::Acquire) != ticket.word {
            return;
        }
        let consecutive = if failed {
            match self.add_consecutive(ticket.word) {
                Some(n) => n,
                None => return,
            }
        } else {
            self.reset_consecutive(ticket.word);
            0
        };
        let slow = match self.cfg.slow_nanos {
            Some(_) => {
                let limit = self.slow_limit.load(Ordering::Relaxed);
                self.clock
                    .now_nanos()
                    .saturating_sub(ticket.start & !COUNTED)
                    >= limit
            }
            None => false,
        };
        let cause = match self.rule() {
            TripRule::Consecutive(limit) => {
                if !matches!(self.window, Window::None) {
                    self.window_record(failed, slow);
                }
                (consecutive >= limit).then_some(Cause::ConsecutiveFailures)
            }
            TripRule::Rate {
                minimum_calls,
                failure_ppm,
                slow_ppm,
            } => match self.window_record(failed, slow) {
                None => None,
                Some(counts) if counts.calls < minimum_calls => None,
                Some(counts) if at_least(counts.failures, failure_ppm, counts.calls) => {
                    Some(Cause::FailureRate)
                }
                Some(counts)
                    if slow_ppm.is_some_and(|ppm| at_least(counts.slow, ppm, counts.calls)) =>
                {
                    Some(Cause::SlowCallRate)
                }
                Some(_) => None,
            },
        };
        if let Some(cause) = cause {
            let now = self.clock.now_nanos();
            self.trip(ticket.word, cause, now);
        }
    }

    /// Closed -> Open because a threshold was reached, if it still is under
    /// the lock: a reset of the closed breaker (which is no transition, so
    /// leaves the state word as it was) may have cleared the counts since
    /// they were read, and a trip decided on counts from before the reset
    /// must not land after it.
    #[cold]
    fn trip(&self, expected: u64, cause: Cause, now: u64) {
        let ticking = self.open_ticking();
        let locked = lock(&self.locked);
        if self.state.0.load(Ordering::Acquire) != expected || !self.still_trips(expected) {
            return;
        }
        self.apply(locked, expected, State::Open, cause, now, ticking);
    }

    /// Whether the counts of the closed state `word` reach a threshold now.
    fn still_trips(&self, word: u64) -> bool {
        match self.rule() {
            TripRule::Consecutive(limit) => {
                // A read-modify-write reads the latest count: a plain load
                // may return one from before a concurrent reset's store.
                let c = self.consecutive.0.fetch_add(0, Ordering::AcqRel);
                c & !COUNT_MASK == cons_tag(word) && (c & COUNT_MASK) >= u64::from(limit)
            }
            TripRule::Rate {
                minimum_calls,
                failure_ppm,
                slow_ppm,
            } => {
                let w = match &self.window {
                    Window::None => return true,
                    Window::Count(ring) => ring.counts(),
                    Window::Time(buckets) => buckets.counts(self.window_now(true)),
                };
                w.calls >= minimum_calls
                    && (at_least(w.failures, failure_ppm, w.calls)
                        || slow_ppm.is_some_and(|ppm| at_least(w.slow, ppm, w.calls)))
            }
        }
    }

    /// Records an outcome in the window. Returns the window's counts when a
    /// rate rule could trip on them, `None` when it certainly cannot (the
    /// time window then skips summing its striped call counts).
    #[inline]
    fn window_record(&self, failed: bool, slow: bool) -> Option<WindowCounts> {
        match &self.window {
            Window::None => Some(WindowCounts::default()),
            Window::Count(ring) => {
                let slot =
                    crate::lease::ring_slot(self, self.id, ring.block(), |n| ring.reserve(n));
                Some(ring.record_at(slot, failed, slow))
            }
            Window::Time(buckets) => {
                let now = self.window_now(true);
                let (failures, slow_calls) = buckets.record(now, failed, slow);
                // With `calls >= minimum_calls`, a rate can be reached only
                // if the failures (or slow calls) alone reach it at the
                // minimum.
                let TripRule::Rate {
                    minimum_calls,
                    failure_ppm,
                    slow_ppm,
                } = self.rule()
                else {
                    return None;
                };
                let possible = at_least(failures, failure_ppm, minimum_calls)
                    || slow_ppm.is_some_and(|ppm| at_least(slow_calls, ppm, minimum_calls));
                possible.then(|| WindowCounts {
                    calls: buckets.calls(now),
                    failures,
                    slow: slow_calls,
                })
            }
        }
    }

    /// Time for the time window: the coarse clock (one load) where it
    /// stands in for the breaker's clock, otherwise that clock. Decided at
    /// the first recording; a read before it (the window is then empty)
    /// uses the breaker's clock and decides nothing.
    #[inline]
    fn window_now(&self, record: bool) -> u64 {
        let fast = match self.fast.get() {
            Some(fast) => fast,
            None if record => self.fast.get_or_init(|| {
                let wide = matches!(self.cfg.window, WindowKind::Time { width, .. } if width >= 10_000_000);
                if wide && self.clock.follows_real_time() {
                    crate::clock::coarse_ticking()
                } else {
                    None
                }
            }),
            None => return self.clock.now_nanos(),
        };
        if fast.is_some() {
            crate::clock::coarse_now()
        } else {
            self.clock.now_nanos()
        }
    }

    fn probe_done(&self, ticket: Ticket, outcome: Outcome) {
        if self.cfg.half_open_max_wait.is_some() {
            let now = self.clock.now_nanos();
            let timeout = self.half_open_until.load(Ordering::Acquire);
            if now >= timeout {
                // The half-open wait ran out before this probe finished: the
                // overdue re-open is made (as of the timeout), and the outcome
                // is stale.
                self.transition(ticket.word, State::Open, Cause::HalfOpenTimeout, timeout);
                if outcome == Outcome::Failure {
                    self.count_failure();
                }
                return;
            }
        }
        match outcome {
            Outcome::Ignore => self.give_back_permit(ticket.word),
            Outcome::Failure => {
                self.count_failure();
                if self.state.0.load(Ordering::Acquire) == ticket.word {
                    let now = self.clock.now_nanos();
                    self.transition(ticket.word, State::Open, Cause::ProbeFailed, now);
                }
            }
            Outcome::Success if self.cfg.ramp.is_some() => {
                let mut h = self.half_open.0.load(Ordering::Acquire);
                while ho_matches(h, ticket.word) && ho_successes(h) < 0xffff {
                    match self.half_open.0.compare_exchange_weak(
                        h,
                        h + 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break,
                        Err(actual) => h = actual,
                    }
                }
                let now = self.clock.now_nanos();
                if self.ramp_complete(ticket.word, now) {
                    self.transition(ticket.word, State::Closed, Cause::RampCompleted, now);
                }
            }
            Outcome::Success => {
                let mut h = self.half_open.0.load(Ordering::Acquire);
                while ho_matches(h, ticket.word) {
                    match self.half_open.0.compare_exchange_weak(
                        h,
                        h + 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            if ho_successes(h) + 1 >= self.period_permits.load(Ordering::Acquire) {
                                let now = self.clock.now_nanos();
                                self.transition(
                                    ticket.word,
                                    State::Closed,
                                    Cause::ProbesSucceeded,
                                    now,
                                );
                            }
                            return;
                        }
                        Err(actual) => h = actual,
                    }
                }
            }
        }
    }

    fn give_back_permit(&self, word: u64) {
        let mut h = self.half_open.0.load(Ordering::Acquire);
        let permits = self.period_permits.load(Ordering::Acquire);
        while ho_matches(h, word) && ho_available(h) < permits {
            match self.half_open.0.compare_exchange_weak(
                h,
                h + (1 << 16),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.changed.notify_waiters();
                    return;
                }
                Err(actual) => h = actual,
            }
        }
    }

    // ===== observation =====

    /// The current state as callers will find it: a timed transition that is
    /// due (the open wait elapsed, the half-open wait elapsed) is projected,
    /// not performed. Reading never changes the breaker.
    pub(crate) fn state(&self) -> State {
        self.project(self.clock.now_nanos()).0
    }

    /// The state at `now` with due timed transitions projected, and the time
    /// until the next probe when that state is `Open`.
    fn project(&self, now: u64) -> (State, Option<u64>) {
        self.project_word(self.state.0.load(Ordering::Acquire), now)
    }

    fn project_word(&self, word: u64, now: u64) -> (State, Option<u64>) {
        match code(word) {
            OPEN => {
                let until = self.open_until.load(Ordering::Acquire);
                if now < until {
                    (State::Open, Some(until - now))
                } else {
                    (State::HalfOpen, None)
                }
            }
            HALF_OPEN if self.cfg.ramp.is_some() => {
                if self.ramp_complete(word, now) {
                    (State::Closed, None)
                } else {
                    (State::HalfOpen, None)
                }
            }
            HALF_OPEN if self.cfg.half_open_max_wait.is_some() => {
                let timeout = self.half_open_until.load(Ordering::Acquire);
                if now < timeout {
                    return (State::HalfOpen, None);
                }
                // Re-opened at the timeout, for the next open duration.
                let until = timeout.saturating_add(self.next_open.load(Ordering::Acquire));
                if now < until {
                    (State::Open, Some(until - now))
                } else {
                    (State::HalfOpen, None)
                }
            }
            _ => (state_of(word), None),
        }
    }

    pub(crate) fn word(&self) -> u64 {
        self.state.0.load(Ordering::Acquire)
    }

    pub(crate) fn generation(&self) -> u64 {
        generation(self.state.0.load(Ordering::Acquire))
    }

    pub(crate) fn counts(&self) -> Counts {
        let w = match &self.window {
            Window::None => WindowCounts::default(),
            Window::Count(ring) => ring.counts(),
            Window::Time(buckets) => buckets.counts(self.window_now(false)),
        };
        Counts {
            consecutive_failures: {
                let c = self.consecutive.0.load(Ordering::Acquire);
                if c & !COUNT_MASK == cons_tag(self.word()) {
                    (c & COUNT_MASK) as u32
                } else {
                    0
                }
            },
            window_calls: w.calls,
            window_failures: w.failures,
            window_slow_calls: w.slow,
        }
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.0.load(Ordering::Acquire)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.sum()
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Acquire)
    }

    /// The projected state, the time until the next probe when open, and
    /// the free probe permits when half-open: one consistent reading.
    pub(crate) fn observe(&self) -> (u64, State, Option<Duration>, Option<u16>) {
        let word = self.state.0.load(Ordering::Acquire);
        let h = self.half_open.0.load(Ordering::Acquire);
        let now = self.clock.now_nanos();
        let (state, next_probe) = self.project_word(word, now);
        // The projection went past the performed half-open period (its wait
        // ran out, the re-open too): a new period, with every permit.
        let moved_on = code(word) == HALF_OPEN
            && self.cfg.half_open_max_wait.is_some()
            && now >= self.half_open_until.load(Ordering::Acquire);
        let permits = match state {
            State::HalfOpen if self.cfg.ramp.is_some() => None,
            // Performed: the permits of this half-open period.
            State::HalfOpen if code(word) == HALF_OPEN && ho_matches(h, word) && !moved_on => {
                Some(ho_available(h) as u16)
            }
            // Projected: a new half-open period starts with every permit.
            State::HalfOpen => Some(self.permits.load(Ordering::Relaxed) as u16),
            _ => None,
        };
        (
            generation(word),
            state,
            next_probe.map(Duration::from_nanos),
            permits,
        )
    }

    // ===== transitions =====

    /// Moves from the state word `expected` to `to`, unless another transition
    /// got there first. Returns whether this call made the transition.
    pub(crate) fn transition(&self, expected: u64, to: State, cause: Cause, now: u64) -> bool {
        let ticking = if to == State::Open {
            self.open_ticking()
        } else {
            None
        };
        let locked = lock(&self.locked);
        if self.state.0.load(Ordering::Acquire) != expected {
            return false;
        }
        self.apply(locked, expected, to, cause, now, ticking);
        true
    }

    /// Moves to `to` from whatever the state is (manual actions).
    pub(crate) fn force(&self, to: State, cause: Cause) {
        let now = self.clock.now_nanos();
        let mut locked = lock(&self.locked);
        if cause == Cause::Reset {
            locked.level = 0;
        }
        let word = self.state.0.load(Ordering::Acquire);
        if cause == Cause::Reset && state_of(word) == State::Closed {
            return self.reset_closed(locked, word, now);
        }
        self.apply(locked, word, to, cause, now, None);
    }

    /// A reset of a `Closed` breaker is not a transition: the window, the
    /// consecutive count and the open-duration growth are cleared, and the
    /// generation, the transition stream, the transition count and the
    /// signal a recovery watches stay as they are (a breaker that was
    /// closed says nothing new about its dependency).
    fn reset_closed(&self, mut locked: MutexGuard<'_, Locked>, word: u64, now: u64) {
        match &self.window {
            Window::None => {}
            Window::Count(ring) => ring.clear(),
            Window::Time(buckets) => buckets.clear(),
        }
        // A read-modify-write, so that it is ordered after every count
        // already added (a trip re-checks the count under the lock).
        self.consecutive.0.swap(cons_tag(word), Ordering::AcqRel);
        self.next_open
            .store(locked.open.nanos(0), Ordering::Release);
        self.hinted_until.store(0, Ordering::Release);
        locked.closed_at = now;
        drop(locked);
        let name = &*self.name;
        tracing::info!(
            breaker = name,
            "Circuit breaker '{name}': reset while CLOSED (counts cleared)"
        );
    }

    /// Closes an `Open` or `HalfOpen` breaker because its dependency works
    /// again. The check and the transition are one step under the lock, so a
    /// concurrent `force_open` is never overwritten and a probe that closed
    /// the breaker first is not followed by a second close.
    ///
    /// A `ForcedOpen` or `Disabled` breaker stays so, but forgets the start
    /// of the outage it saw: it is over, so the reset that ends the manual
    /// state later does not report it as healed then.
    pub(crate) fn close_if_down(&self) -> bool {
        let now = self.clock.now_nanos();
        let mut locked = lock(&self.locked);
        let word = self.state.0.load(Ordering::Acquire);
        if !matches!(code(word), OPEN | HALF_OPEN) {
            if matches!(state_of(word), State::ForcedOpen | State::Disabled) {
                locked.outage_start = None;
            }
            return false;
        }
        self.apply(locked, word, State::Closed, Cause::Recovered, now, None);
        true
    }

    /// Ends the open wait of an `Open` breaker at once: `HalfOpen`, its
    /// probes admitted from now. Returns whether it did.
    pub(crate) fn probe_now(&self) -> bool {
        let now = self.clock.now_nanos();
        let locked = lock(&self.locked);
        let word = self.state.0.load(Ordering::Acquire);
        if code(word) != OPEN {
            return false;
        }
        self.apply(
            locked,
            word,
            State::HalfOpen,
            Cause::ProbeRequested,
            now,
            None,
        );
        true
    }

    /// What keeps the coarse clock ticking for an open wait about to begin,
    /// where the coarse clock can stand in for this breaker's (its clock is
    /// tokio's, not paused, and a ticker thread runs). Taken before the
    /// transition's lock: it may start the ticker thread.
    fn open_ticking(&self) -> Option<crate::clock::CoarseTicking> {
        if self.clock.is_coarse() || !self.clock.follows_real_time() {
            return None;
        }
        crate::clock::coarse_ticking()
    }

    /// `until` (on this breaker's clock) on the coarse clock, or 0 where the
    /// coarse clock cannot stand in (no `ticking`, and the breaker's clock is
    /// not the coarse clock itself).
    fn coarse_deadline(
        &self,
        locked: &mut Locked,
        until: u64,
        ticking: Option<crate::clock::CoarseTicking>,
    ) -> u64 {
        if self.clock.is_coarse() {
            return until;
        }
        locked.ticking = ticking;
        if locked.ticking.is_none() {
            return 0;
        }
        let left = until.saturating_sub(self.clock.now_nanos());
        crate::clock::coarse_precise_now().saturating_add(left)
    }

    fn apply(
        &self,
        mut locked: MutexGuard<'_, Locked>,
        word: u64,
        to: State,
        cause: Cause,
        now: u64,
        ticking: Option<crate::clock::CoarseTicking>,
    ) {
        let from = state_of(word);
        let counts = self.counts();
        let next = ((generation(word) + 1) << CODE_BITS) | code_of(to);
        let mut open_for = None;
        match to {
            State::Open => {
                if from == State::Closed
                    && now.saturating_sub(locked.closed_at) >= locked.open.healthy_period
                {
                    locked.level = 0;
                }
                let open = locked.open;
                let mut nanos = open.nanos(locked.level);
                if open.multiplier > 1.0 && nanos < open.max {
                    locked.level += 1;
                }
                self.next_open
                    .store(open.nanos(locked.level), Ordering::Release);
                // The upstream asked for a wait (`Retry-After`): it replaces
                // the configured duration for this opening.
                let hinted = self.hinted_until.swap(0, Ordering::AcqRel);
                if hinted > now {
                    nanos = hinted - now;
                }
                let until = now.saturating_add(nanos);
                self.open_until.store(until, Ordering::Release);
                self.open_until_coarse.store(
                    self.coarse_deadline(&mut locked, until, ticking),
                    Ordering::Release,
                );
                open_for = Some(Duration::from_nanos(nanos));
            }
            _ if self.open_until_coarse.load(Ordering::Relaxed) != 0 => {
                self.open_until_coarse.store(0, Ordering::Release);
                locked.ticking = None;
            }
            _ => {}
        }
        match to {
            State::Open => {}
            State::HalfOpen => {
                let permits = self.permits.load(Ordering::Relaxed);
                self.period_permits.store(permits, Ordering::Release);
                // A ramp admits by share, not by permit: none to take or
                // give back.
                let available = if self.cfg.ramp.is_some() {
                    0xffff
                } else {
                    permits
                };
                self.half_open_since.store(now, Ordering::Release);
                self.ramp_calls.store(0, Ordering::Relaxed);
                self.half_open
                    .0
                    .store(ho_pack(next, available, 0), Ordering::Release);
                let until = self
                    .cfg
                    .half_open_max_wait
                    .map_or(u64::MAX, |w| now.saturating_add(w));
                self.half_open_until.store(until, Ordering::Release);
            }
            State::Closed => {
                match &self.window {
                    Window::None => {}
                    Window::Count(ring) => ring.clear(),
                    Window::Time(buckets) => buckets.clear(),
                }
                locked.closed_at = now;
                if cause == Cause::Reset {
                    self.next_open
                        .store(locked.open.nanos(0), Ordering::Release);
                }
                // A wait asked for before the dependency worked again is
                // over.
                self.hinted_until.store(0, Ordering::Release);
            }
            State::ForcedOpen | State::Disabled => {}
        }
        // Re-tagged for the new generation: a late failure of the old one can
        // no longer add to it. The count stays visible until Closed.
        let kept = if to == State::Closed {
            0
        } else {
            u64::from(counts.consecutive_failures)
        };
        self.consecutive
            .0
            .store(cons_tag(next) | kept, Ordering::Release);
        self.state.0.store(next, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);

        let mut signal = locked.signal;
        signal.word = next;
        if to == State::Open && matches!(from, State::Closed | State::HalfOpen) {
            signal.opens += 1;
            signal.opened_gen = generation(next);
            if from == State::Closed {
                let at = tokio::time::Instant::now();
                signal.opened_at = at;
                locked.outage_start = Some(at);
            }
        }
        if to == State::Closed {
            signal.closed_at = tokio::time::Instant::now();
            if cause != Cause::Recovered {
                signal.heals += 1;
                signal.healed_gen = generation(next);
                signal.healed_outage_start = locked.outage_start;
            }
        }
        if to == State::Closed {
            locked.outage_start = None;
        }
        locked.signal = signal;
        let event = Transition {
            name: self.name.clone(),
            from,
            to,
            cause,
            generation: generation(next),
            counts,
            open_for,
        };
        // Queued in generation order under the lock; sent (which wakes the
        // receivers, running their wakers) after it is released.
        lock(&self.outbox).push_back((event.clone(), signal));
        drop(locked);
        self.publish();

        #[cfg(feature = "metrics")]
        {
            match &self.cfg.keyed {
                Some(member) => member.moved(|| state_of(self.word())).report(),
                None => self.metrics(|m| {
                    if let Some(state) = &m.state {
                        state.set(code(self.word()) as f64);
                    }
                }),
            }
            metrics::counter!(
                crate::metrics::BREAKER_TRANSITIONS,
                "breaker" => self.metrics_label().to_string(),
                "from" => from.as_str(),
                "to" => to.as_str()
            )
            .increment(1);
        }
        log_transition(&event);
        self.changed.notify_waiters();
    }

    /// Sends queued transitions, in order, with no lock held. One thread
    /// sends at a time; a transition queued meanwhile (by another thread, or
    /// by a waker that acts on the breaker from inside a send) is sent by
    /// the thread already sending, so nobody waits and nothing re-enters.
    fn publish(&self) {
        /// Clears the flag even if a send panics, so publishing goes on.
        struct Publishing<'a>(&'a AtomicBool);
        impl Drop for Publishing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        loop {
            if self.publishing.swap(true, Ordering::Acquire) {
                return;
            }
            let guard = Publishing(&self.publishing);
            loop {
                // Popped in a statement of its own: the outbox's lock must
                // be released before the sends run wakers.
                let next = lock(&self.outbox).pop_front();
                let Some((event, signal)) = next else { break };
                self.remember(super::RecentKind::Transition(event.clone()));
                if let Some(events) = self.events.get() {
                    let _ = events.send(event);
                }
                self.signal.send_replace(signal);
            }
            drop(guard);
            // A transition queued after the last pop, before the flag was
            // cleared, would be stranded: look once more.
            if lock(&self.outbox).is_empty() {
                return;
            }
        }
    }

    /// Whether the ramp of the half-open state `word` is over at `now`
    /// and enough of its calls succeeded to close.
    fn ramp_complete(&self, word: u64, now: u64) -> bool {
        let Some(ramp) = self.cfg.ramp else {
            return false;
        };
        let h = self.half_open.0.load(Ordering::Acquire);
        let since = self.half_open_since.load(Ordering::Acquire);
        ho_matches(h, word)
            && now.saturating_sub(since) >= ramp.duration
            && ho_successes(h) >= self.period_permits.load(Ordering::Acquire)
    }

    /// The share of calls a ramp admits at `now` (parts per million) and
    /// the time left in it; the initial share where the ramp is projected
    /// (the open wait elapsed, no call made it half-open yet).
    fn ramp_share(&self, word: u64, now: u64) -> (u64, u64) {
        let Some(ramp) = self.cfg.ramp else {
            return (1_000_000, 0);
        };
        if code(word) != HALF_OPEN {
            return (ramp.initial_ppm, ramp.duration);
        }
        let elapsed = now.saturating_sub(self.half_open_since.load(Ordering::Acquire));
        (
            ramp.share_ppm(elapsed),
            ramp.duration.saturating_sub(elapsed),
        )
    }

    /// When the breaker is (or will be found) half-open with a ramp: the
    /// share of calls it admits now, in `[0, 1]`.
    pub(crate) fn traffic_share(&self) -> Option<f64> {
        self.cfg.ramp?;
        let word = self.state.0.load(Ordering::Acquire);
        let now = self.clock.now_nanos();
        match self.project_word(word, now).0 {
            State::HalfOpen => Some(self.ramp_share(word, now).0 as f64 / 1_000_000.0),
            _ => None,
        }
    }

    /// Keeps `kind` among the recent events (a bounded buffer, oldest
    /// dropped first).
    fn remember(&self, kind: super::RecentKind) {
        let keep = self.cfg.recent_events;
        if keep == 0 {
            return;
        }
        let event = super::RecentEvent {
            at: std::time::SystemTime::now(),
            kind,
        };
        let mut recent = lock(&self.recent);
        if recent.len() >= keep {
            recent.pop_front();
        }
        recent.push_back(event);
    }

    /// The recent events, oldest first.
    pub(crate) fn recent_events(&self) -> Vec<super::RecentEvent> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Metrics-only admissions: calls let through that would have been
    /// rejected.
    pub(crate) fn shadow_rejected(&self) -> u64 {
        self.shadow_rejected.load(Ordering::Relaxed)
    }

    /// The configuration in effect now.
    pub(crate) fn effective(&self) -> super::BreakerConfig {
        self.effective_with(lock(&self.locked).open)
    }

    /// The configuration in effect with the open settings `open` (read
    /// under the transition lock).
    fn effective_with(&self, open: OpenSettings) -> super::BreakerConfig {
        let trip = match self.rule() {
            TripRule::Consecutive(n) => super::TripPolicy::ConsecutiveFailures(n),
            TripRule::Rate {
                minimum_calls,
                failure_ppm,
                slow_ppm,
            } => super::TripPolicy::FailureRate {
                window: match self.cfg.window {
                    WindowKind::Count(size) => super::WindowConfig::Count(size),
                    WindowKind::Time { width, buckets } => super::WindowConfig::Time {
                        length: Duration::from_nanos(width.saturating_mul(u64::from(buckets))),
                        buckets,
                    },
                    WindowKind::None => super::WindowConfig::Count(0),
                },
                failure_rate: failure_ppm as f64 / 1_000_000.0,
                minimum_calls,
                slow_calls: slow_ppm.map(|ppm| {
                    (
                        Duration::from_nanos(self.slow_limit.load(Ordering::Relaxed)),
                        ppm as f64 / 1_000_000.0,
                    )
                }),
            },
        };
        super::BreakerConfig {
            trip,
            open_duration: Duration::from_nanos(open.base),
            open_multiplier: open.multiplier,
            max_open_duration: Duration::from_nanos(open.max),
            healthy_period: Duration::from_nanos(open.healthy_period),
            half_open_permits: self.permits.load(Ordering::Relaxed) as u16,
            half_open_max_wait: self.cfg.half_open_max_wait.map(Duration::from_nanos),
            half_open_ramp: self.cfg.ramp.map(|r| {
                (
                    r.initial_ppm as f64 / 1_000_000.0,
                    Duration::from_nanos(r.duration),
                )
            }),
            retry_after_cap: self.cfg.retry_after_cap.map(Duration::from_nanos),
            metrics_only: self.metrics_only.load(Ordering::Relaxed),
        }
    }

    /// Checks a change of settings against the configuration in effect and
    /// applies it (see `Breaker::tune`), in one step under the transition
    /// lock: a change checked against settings that a concurrent change
    /// then replaced would put back their old values (its thresholds and
    /// open settings are written whole). The thresholds apply at once (the
    /// next recorded outcome is judged by them), the open settings from
    /// the next opening, the probes from the next half-open period.
    /// Returns the lines describing what changed.
    pub(crate) fn tune(&self, tuning: &super::Tuning) -> Result<Vec<String>, super::TuneError> {
        let (before, after) = {
            let mut locked = lock(&self.locked);
            let before = self.effective_with(locked.open);
            let change = tuning.check(&before)?;
            if let Some(rule) = change.rule {
                self.rule.store(rule_word(&rule), Ordering::Relaxed);
            }
            if let Some(slow) = change.slow_limit {
                self.slow_limit.store(slow, Ordering::Relaxed);
            }
            if let Some(permits) = change.permits {
                self.permits.store(u64::from(permits), Ordering::Relaxed);
            }
            if let Some(open) = change.open {
                locked.open = open;
                self.open_base.store(open.base, Ordering::Relaxed);
                // What a half-open timeout re-opens for, as `state()`
                // projects it, in every state (`apply` keeps it so).
                self.next_open
                    .store(open.nanos(locked.level), Ordering::Release);
            }
            if let Some(on) = change.metrics_only {
                self.metrics_only.store(on, Ordering::Relaxed);
            }
            let after = self.effective_with(locked.open);
            (before, after)
        };
        let changes = before.changes_to(&after);
        if !changes.is_empty() {
            let name = &*self.name;
            let list = changes.join(", ");
            tracing::warn!(
                breaker = name,
                "Circuit breaker '{name}': configuration changed: {list}"
            );
            self.remember(super::RecentKind::Tuned(list));
        }
        Ok(changes)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events
            .get_or_init(|| broadcast::channel(EVENT_CAPACITY).0)
            .subscribe()
    }

    #[cfg(feature = "recovery")]
    pub(crate) fn watch(&self) -> watch::Receiver<Signal> {
        self.signal.subscribe()
    }

    /// The latest signal published (what a recovery spawned now would
    /// take as already seen).
    #[cfg(feature = "recovery")]
    pub(crate) fn signal_now(&self) -> Signal {
        *self.signal.borrow()
    }
}

impl crate::lease::Leased for Core {
    fn returned(&self) -> &AtomicU64 {
        &self.returned.0
    }
}

fn log_transition(event: &Transition) {
    let name = &*event.name;
    let to = event.to.as_upper();
    match event.to {
        State::Open | State::ForcedOpen => tracing::warn!(
            breaker = name,
            from = %event.from,
            cause = %event.cause,
            consecutive_failures = event.counts.consecutive_failures,
            window_calls = event.counts.window_calls,
            window_failures = event.counts.window_failures,
            open_for_ms = event.open_for.map(|d| d.as_millis() as u64),
            "Circuit breaker '{name}': Transitioning to {to}"
        ),
        _ => tracing::info!(
            breaker = name,
            from = %event.from,
            cause = %event.cause,
            "Circuit breaker '{name}': Transitioning to {to}"
        ),
    }
}
