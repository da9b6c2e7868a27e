//! Deterministic simulation of a breaker, its recovery, the health monitor,
//! the drain and the admin router together, on paused tokio time, driven by
//! a seeded random schedule.
//!
//! Each seed builds one breaker (trip policy, permits, half-open wait and
//! open-duration growth chosen by the seed), a [`Recovery`] watching it whose
//! action succeeds while a simulated dependency is up (and sometimes hangs
//! past its timeout), a [`Reliability`] whose check reads the same flag, a
//! [`Monitor`] on a short interval, a [`Drain`] in front of an application
//! service that calls the dependency through `breaker.layer()`, and the admin
//! router. The schedule mixes outages, calls (direct permits, held permits,
//! `Breaker::call`, requests through the layers), time passing (`sleep`,
//! `advance`), manual actions (force open, disable, reset, triggers, admin
//! POSTs) and reads, then ends with a drain. A quarter of the steps are
//! `Rushed`: the next step follows at once, before any other task runs, so
//! the recovery sees several breaker transitions at one look.
//!
//! # Invariants (failure tags), checked after every step
//!
//! - `no-deadlock`: a seed finishes within [`WATCHDOG`] of real time (each
//!   seed runs on a worker thread; the test thread is the watchdog);
//!   `no-panic`: no task panics.
//! - `one-cycle-in-flight`: at most one recovery action runs at a time
//!   (counted on entry and on exit or drop); `cancelled-cycle-stops`: once
//!   every task has run, no action runs unless the recovery is
//!   `recovering`; `opening-triggers-recovery`: the breaker opening while
//!   the recovery is idle starts an attempt; `breaker-close-ends-cycle`: the
//!   breaker closing by another path than the recovery leaves the recovery
//!   neither `recovering` nor `exhausted`.
//! - `manual-state-kept`: after our `force_open`/`disable` the breaker stays
//!   so, whatever the recovery does, until our reset (direct or admin).
//! - `mttr-within-outage`: see [`MttrWatch`] (the stricter bound of the
//!   brief, every MTTR at most the longest true outage, is counted and
//!   reported, and asserted with `SIM_STRICT_MTTR=1` as
//!   `mttr-within-true-outage`).
//! - `failures-conserved`, `rejections-conserved`: the breaker's `failures`
//!   and `rejected` equal what callers recorded and saw, stale outcomes
//!   included; `recovery-counters-monotonic`, `attempt-within-max`,
//!   `attempt-failures-real`, `exhaustion-needs-failed-attempts`,
//!   `last-error`, `cooldown-reported`, `alert-once-per-exhaustion`.
//! - `reads-change-nothing`: two reads with every read in between (state,
//!   snapshot, status, report, `Debug`, admin GETs, none of which may let
//!   another task run) are equal; `reads-agree`, `report-agrees`,
//!   `generation-counts-transitions`, `transition-stream-ordered`,
//!   `read-predicts-admission` (what a snapshot says is what the next caller
//!   gets), `retry-after-matches-read`, `open-duration`,
//!   `half-open-permits-bounded`, `unfinished-probe-gives-permit-back`.
//! - Health and admin: `health-aggregate`, `report-details`, `percentages`,
//!   `admin-health`, `admin-reliability`, `admin-hides-errors`,
//!   `admin-probes`, `admin-trigger`, `admin-reset`, `admin-auth`,
//!   `refused-post-changes-nothing`, `admin-errors`, `trigger-outcome`,
//!   `reset-closes`, `recovery-reset-idles`, `recovery-reset-leaves-breaker`.
//! - Drain: `drain-in-flight` (its count equals the requests in flight),
//!   `drain-completes`, `drain-refuses`, `drain-report-conserved`,
//!   `drain-refusals-counted`, `drain-report-consistent`, `drain-report-true`
//!   (finished, cut off and refused are exactly what the requests saw),
//!   `monitor-stops-in-hook`, `monitor-stops-at-drain-end`,
//!   `admin-while-draining`, `admin-after-drain`.
//!
//! # Running
//!
//! - `cargo test --test simulation` runs `SIM_SEEDS` seeds (default 2000)
//!   from `SIM_FIRST_SEED` (default 0) on `SIM_THREADS` threads (default 2),
//!   and prints what they covered.
//! - `SIM_SEED=<n>` runs one seed and prints its schedule as it runs
//!   (`-- --nocapture`); add `SIM_MINIMIZE=1` to shrink a failing schedule
//!   to the fewest steps that still fail the same invariant, and print it
//!   with its trace.
//! - `SIM_SKIP=tag,tag` counts those invariants instead of failing on them,
//!   to look past a known bug; `SIM_VERBOSE=1` prints every panic.
//!
//! Replays are deterministic up to tokio's `select!` branch order, which
//! tokio randomises per runtime: a failure that depends on which of two
//! ready branches the recovery task polls first may need a few runs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::body::Body;
use futures_util::FutureExt;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::BoxError;
use tower_recovery::admin::Admin;
use tower_recovery::circuit_breaker::{
    Breaker, CallError, Cause, Permit, RecvError, Rejected, Snapshot, State, Transition,
    Transitions, TryRecvError,
};
use tower_recovery::classify::Outcome;
use tower_recovery::drain::{Drain, DrainReport, Draining};
use tower_recovery::health::{Dependency, HealthCheck, HealthStatus, Monitor, Reliability};
use tower_recovery::recovery::{
    Adaptive, Backoff, Mode, Recovery, RecoveryState, Status, TriggerOutcome,
};

const NAME: &str = "model_server";
const TOKEN: &str = "t";
/// Real time a seed may take before the watchdog calls it a deadlock.
const WATCHDOG: Duration = Duration::from_secs(60);
/// Yields after each step, so that woken tasks run before the checks.
const SETTLE_YIELDS: usize = 12;
const HANG: Duration = Duration::from_secs(3_600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ===== PRNG =====

/// splitmix64: small, seedable, good enough for schedules.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ===== configuration and schedule =====

#[derive(Clone, Debug)]
enum Trip {
    Consecutive(u32),
    Count {
        size: u32,
        rate_pct: u64,
        min: u64,
    },
    Time {
        length_ms: u64,
        buckets: u32,
        rate_pct: u64,
        min: u64,
    },
}

#[derive(Clone, Debug)]
struct Config {
    trip: Trip,
    open_ms: u64,
    /// Open-duration growth: multiplier in tenths, cap in ms.
    growth: Option<(u64, u64)>,
    healthy_ms: u64,
    permits: u16,
    half_open_max_wait_ms: Option<u64>,
    max_attempts: u32,
    backoff_base_ms: u64,
    /// Backoff multiplier in tenths.
    backoff_mult: u64,
    attempt_timeout_ms: u64,
    cooldown_ms: u64,
    monitor_ms: u64,
    check_timeout_ms: u64,
    grace_ms: u64,
    pre_drain_ms: u64,
    /// Adaptive recovery: first and longest retry after exhaustion, and
    /// the shortest cooldown, in ms; `None` is strict.
    adaptive: Option<(u64, u64, u64)>,
    /// The monitor's interval while down: first and longest, in ms.
    probe_while_down: Option<(u64, u64)>,
}

impl Config {
    fn random(rng: &mut Rng) -> Self {
        let trip = match rng.below(3) {
            0 => Trip::Consecutive(rng.range(1, 5) as u32),
            1 => Trip::Count {
                size: rng.range(1, 20) as u32,
                rate_pct: rng.range(20, 100),
                min: rng.range(1, 10),
            },
            _ => Trip::Time {
                length_ms: rng.range(1_000, 30_000),
                buckets: rng.range(1, 10) as u32,
                rate_pct: rng.range(20, 100),
                min: rng.range(1, 10),
            },
        };
        let open_ms = rng.range(200, 10_000);
        Config {
            trip,
            open_ms,
            growth: rng
                .chance(30)
                .then(|| (rng.range(11, 30), open_ms * rng.range(1, 6))),
            healthy_ms: rng.range(1_000, 60_000),
            permits: rng.range(1, 3) as u16,
            half_open_max_wait_ms: rng.chance(50).then(|| rng.range(200, 10_000)),
            max_attempts: rng.range(1, 4) as u32,
            backoff_base_ms: rng.range(50, 2_000),
            backoff_mult: rng.range(10, 30),
            attempt_timeout_ms: rng.range(200, 5_000),
            cooldown_ms: rng.range(0, 30_000),
            monitor_ms: rng.range(500, 10_000),
            check_timeout_ms: rng.range(100, 3_000),
            grace_ms: rng.range(500, 30_000),
            pre_drain_ms: if rng.chance(50) {
                0
            } else {
                rng.range(100, 3_000)
            },
            // Drawn last, so the fields above stay those of older seeds.
            adaptive: rng.chance(50).then(|| {
                let first = rng.range(500, 20_000);
                (first, first * rng.range(1, 8), rng.range(0, 5_000))
            }),
            probe_while_down: rng.chance(50).then(|| {
                let first = rng.range(100, 2_000);
                (first, first * rng.range(1, 6))
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Auth {
    Good,
    Wrong,
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Finish {
    /// Success if the dependency is up now, else failure.
    ByFlag,
    /// Dropped unrecorded (the call never finished).
    Drop,
    /// Recorded as `Outcome::Ignore`.
    Ignore,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Down,
    Up,
    ActionHangs(bool),
    ActionDelay(u64),
    CheckHangs(bool),
    CheckDelay(u64),
    /// `try_acquire`, outcome by the flag.
    Call,
    /// `Breaker::call` on a ready future.
    CallApi,
    Burst(u32),
    /// `try_acquire`, the permit kept (an in-flight call).
    Hold,
    /// A held permit (index modulo their number) finishes.
    Finish(u64, Finish),
    /// A request through the drain and the breaker layer, answered after
    /// this many ms.
    AppCall(u64),
    /// Abort a request in flight (index modulo their number).
    Abort(u64),
    Sleep(u64),
    Advance(u64),
    Settle,
    ForceOpen,
    Disable,
    Reset,
    Trigger,
    /// `trigger_automatic`, only while the dependency is down (another
    /// detector saw it down).
    TriggerAuto,
    RecoveryReset,
    AdminTrigger(Auth),
    AdminReset(Auth),
    /// Unknown names and wrong methods.
    AdminBad,
    Read,
    /// The step, then the next one at once: other tasks (the recovery's,
    /// the monitor's, the requests') do not run in between.
    Rushed(Box<Step>),
}

impl Step {
    fn random(rng: &mut Rng) -> Step {
        const TABLE: &[(u64, u8)] = &[
            (35, 0),   // Down
            (45, 1),   // Up
            (12, 2),   // ActionHangs
            (10, 3),   // ActionDelay
            (10, 4),   // CheckHangs
            (8, 5),    // CheckDelay
            (180, 6),  // Call
            (30, 7),   // CallApi
            (35, 8),   // Burst
            (30, 9),   // Hold
            (35, 10),  // Finish
            (70, 11),  // AppCall
            (12, 12),  // Abort
            (150, 13), // Sleep
            (35, 14),  // Advance
            (15, 15),  // Settle
            (8, 16),   // ForceOpen
            (8, 17),   // Disable
            (22, 18),  // Reset
            (22, 19),  // Trigger
            (15, 20),  // TriggerAuto
            (12, 21),  // RecoveryReset
            (18, 22),  // AdminTrigger
            (12, 23),  // AdminReset
            (4, 24),   // AdminBad
            (55, 25),  // Read
        ];
        let total: u64 = TABLE.iter().map(|(w, _)| w).sum();
        let mut pick = rng.below(total);
        let mut kind = 0;
        for &(w, k) in TABLE {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        let auth = |rng: &mut Rng| match rng.below(6) {
            0 => Auth::Wrong,
            1 => Auth::Missing,
            _ => Auth::Good,
        };
        match kind {
            0 => Step::Down,
            1 => Step::Up,
            2 => Step::ActionHangs(rng.chance(40)),
            3 => Step::ActionDelay(if rng.chance(70) {
                rng.range(0, 300)
            } else {
                rng.range(300, 6_000)
            }),
            4 => Step::CheckHangs(rng.chance(40)),
            5 => Step::CheckDelay(rng.range(0, 2_000)),
            6 => Step::Call,
            7 => Step::CallApi,
            8 => Step::Burst(rng.range(2, 12) as u32),
            9 => Step::Hold,
            10 => Step::Finish(
                rng.next(),
                match rng.below(4) {
                    0 => Finish::Drop,
                    1 => Finish::Ignore,
                    _ => Finish::ByFlag,
                },
            ),
            11 => Step::AppCall(match rng.below(20) {
                0 => rng.range(30_000, 90_000),
                1..=7 => rng.range(500, 5_000),
                _ => rng.range(0, 500),
            }),
            12 => Step::Abort(rng.next()),
            13 => Step::Sleep(match rng.below(20) {
                0 => rng.range(20_000, 120_000),
                1..=5 => rng.range(2_000, 20_000),
                _ => rng.range(0, 2_000),
            }),
            14 => Step::Advance(if rng.chance(80) {
                rng.range(0, 3_000)
            } else {
                rng.range(3_000, 40_000)
            }),
            15 => Step::Settle,
            16 => Step::ForceOpen,
            17 => Step::Disable,
            18 => Step::Reset,
            19 => Step::Trigger,
            20 => Step::TriggerAuto,
            21 => Step::RecoveryReset,
            22 => Step::AdminTrigger(auth(rng)),
            23 => Step::AdminReset(auth(rng)),
            24 => Step::AdminBad,
            _ => Step::Read,
        }
    }
}

/// The configuration and schedule of a seed.
fn plan(seed: u64) -> (Config, Vec<Step>) {
    let mut rng = Rng::new(seed);
    let cfg = Config::random(&mut rng);
    let n = rng.range(200, 500) as usize;
    let steps = (0..n)
        .map(|_| {
            let step = Step::random(&mut rng);
            let timed = matches!(step, Step::Sleep(_) | Step::Advance(_) | Step::Settle);
            if !timed && rng.chance(25) {
                Step::Rushed(Box::new(step))
            } else {
                step
            }
        })
        .collect();
    (cfg, steps)
}

// ===== the simulated world =====

/// What the action, the check and the dependency service read and count.
#[derive(Default)]
struct World {
    up: AtomicBool,
    action_hangs: AtomicBool,
    action_delay_ms: AtomicU64,
    check_hangs: AtomicBool,
    check_delay_ms: AtomicU64,
    in_action: AtomicUsize,
    max_in_action: AtomicUsize,
    /// Attempts that began running.
    action_started: AtomicU64,
    action_ok: AtomicU64,
    action_err: AtomicU64,
    /// Attempts dropped before they finished (timed out or cancelled).
    action_dropped: AtomicU64,
    alerts: AtomicU64,
    checks_run: AtomicU64,
}

/// Counts a running recovery attempt; a drop before the end is a timeout or
/// a cancellation.
struct ActionGuard {
    world: Arc<World>,
    done: bool,
}

impl ActionGuard {
    fn enter(world: &Arc<World>) -> Self {
        world.action_started.fetch_add(1, SeqCst);
        let n = world.in_action.fetch_add(1, SeqCst) + 1;
        world.max_in_action.fetch_max(n, SeqCst);
        ActionGuard {
            world: world.clone(),
            done: false,
        }
    }
}

impl Drop for ActionGuard {
    fn drop(&mut self) {
        if !self.done {
            self.world.action_dropped.fetch_add(1, SeqCst);
        }
        self.world.in_action.fetch_sub(1, SeqCst);
    }
}

/// How a request through the application ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Ok,
    InnerErr,
    Rejected,
    Refused,
}

#[derive(Default)]
struct Slot {
    started: AtomicBool,
    /// The breaker was `Disabled` when the request asked for admission.
    disabled: AtomicBool,
    /// The end, and whether the drain had begun then.
    end: Mutex<Option<(End, bool)>>,
}

struct AppCall {
    slot: Arc<Slot>,
    handle: JoinHandle<()>,
    aborted: bool,
    aborted_draining: bool,
}

impl AppCall {
    fn end(&self) -> Option<(End, bool)> {
        *self.slot.end.lock().unwrap()
    }

    /// Admitted by the drain and neither ended nor dropped yet.
    fn in_flight(&self) -> bool {
        self.slot.started.load(SeqCst) && self.end().is_none() && !self.handle.is_finished()
    }
}

// ===== MTTR =====

/// Bounds on the MTTR from the true outages (the harness's own flips of the
/// dependency flag) and the moments recoveries were recorded.
///
/// The sound bound (asserted): a sample runs from the first sign of an outage
/// to its recorded end. The signs: a failing check or an automatic trigger
/// (here only while the dependency is down, or up to the check timeout after
/// it came back, for a check that hung until its timeout), or the breaker
/// going from `Closed` to `Open`, at any time (a window still full of an
/// earlier outage's failures may trip on a success). A sample's start is not
/// before the previous recorded end (one outage, one sample; a sample never
/// outlives its outage). So each sample is at most `end - max(previous end,
/// s)`, where `s` is the earliest of the starts of the true outages still
/// running at the previous end and the breaker's openings after it; the mean
/// is at most the largest such bound.
///
/// The strict bound (counted, asserted with `SIM_STRICT_MTTR=1`): the MTTR is
/// at most the longest true outage so far. The design measures MTTR from the
/// first sign of the outage to the first sign it is over ("breaker open to
/// closed"), and the end can only be seen after the dependency is back: a
/// breaker still open, a backoff delay, a monitor interval, so this bound is
/// not implied by the design. Seed 6 shrinks to: the dependency goes down,
/// the monitor's first check fails and starts a cycle whose first attempt
/// fails, the dependency comes back at the same instant (an outage of 0 s);
/// the second attempt, after its 2.08 s backoff, succeeds: MTTR 2.08 s.
struct MttrWatch {
    outages: Vec<(Instant, Option<Instant>)>,
    /// When the breaker went from `Closed` to `Open`, per generation (the
    /// earliest time anyone saw the transition).
    openings: std::collections::BTreeMap<u64, Instant>,
    /// When each half-open period began, per generation.
    half_opened: std::collections::BTreeMap<u64, Instant>,
    slack: Duration,
    successes: u64,
    last_end: Option<Instant>,
    /// Recoveries noted and not bounded yet: (previous end, end).
    pending: Vec<(Option<Instant>, Instant)>,
    bound: Option<Duration>,
    error: Option<(&'static str, String)>,
    strict: Option<String>,
}

impl MttrWatch {
    /// Notes when a transition was seen (by whoever saw it first).
    fn seen(&mut self, t: &Transition, at: Instant) {
        let map = match (t.from, t.to) {
            (State::Closed, State::Open) => &mut self.openings,
            (_, State::HalfOpen) => &mut self.half_opened,
            _ => return,
        };
        let entry = map.entry(t.generation).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// Notes the recoveries recorded since the last look (at `now`).
    fn observe(&mut self, status: &Status, now: Instant) {
        if status.recoveries < self.successes {
            self.error.get_or_insert((
                "recovery-counters-monotonic",
                format!(
                    "recovery successes went down from {} to {} (seen by the observer task)",
                    self.successes, status.recoveries
                ),
            ));
            return;
        }
        for k in 0..status.recoveries - self.successes {
            let prev = if k == 0 { self.last_end } else { Some(now) };
            self.pending.push((prev, now));
        }
        if status.recoveries > self.successes {
            self.successes = status.recoveries;
            self.last_end = Some(now);
        }
    }

    /// Bounds the recoveries noted so far (every opening before them is
    /// known by now) and checks the MTTR against them.
    fn verify(&mut self, status: &Status, now: Instant) {
        self.observe(status, now);
        for (prev, end) in std::mem::take(&mut self.pending) {
            let start = self
                .outages
                .iter()
                .filter(|(_, up)| match (up, prev) {
                    (Some(up), Some(prev)) => *up + self.slack >= prev,
                    _ => true,
                })
                .map(|(down, _)| *down)
                .chain(
                    self.openings
                        .values()
                        .copied()
                        .filter(|at| prev.is_none_or(|p| *at >= p)),
                )
                .min();
            if let Some(start) = start {
                let from = prev.map_or(start, |p| p.max(start));
                let b = end.saturating_duration_since(from);
                self.bound = Some(self.bound.map_or(b, |x| x.max(b)));
            }
        }
        let Some(mttr) = status.mttr else { return };
        match self.bound {
            None => {
                self.error.get_or_insert((
                    "mttr-within-outage",
                    format!(
                        "MTTR {mttr:?} reported, but no recovery could have measured an outage \
                         ({} outages, {} openings, {} successes)",
                        self.outages.len(),
                        self.openings.len(),
                        status.recoveries
                    ),
                ));
            }
            Some(bound) if mttr > bound => {
                self.error.get_or_insert((
                    "mttr-within-outage",
                    format!(
                        "MTTR {mttr:?} exceeds the largest possible sample {bound:?} (from the \
                         later of the previous recovery and the first sign of an outage after \
                         it, to the recovery)"
                    ),
                ));
            }
            Some(_) => {}
        }
        let longest = self
            .outages
            .iter()
            .map(|(d, u)| u.unwrap_or(now).saturating_duration_since(*d))
            .max()
            .unwrap_or_default();
        if mttr > longest && self.strict.is_none() {
            self.strict = Some(format!("MTTR {mttr:?} > longest true outage {longest:?}"));
        }
    }
}

// ===== failures =====

thread_local! {
    /// Panics seen on this thread (background tasks of the seed's runtime).
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Debug)]
struct Failure {
    tag: String,
    step: usize,
    message: String,
}

fn failure_of(payload: Box<dyn std::any::Any + Send>) -> Failure {
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into());
    // Our own failures: "[tag] step N: ..."
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((tag, rest)) = rest.split_once(']') {
            let step = rest
                .trim_start()
                .strip_prefix("step ")
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            return Failure {
                tag: tag.to_string(),
                step,
                message: text,
            };
        }
    }
    Failure {
        tag: "panic".into(),
        step: usize::MAX,
        message: text,
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Opts {
    trace: bool,
    strict_mttr: bool,
    /// Invariants counted instead of failing (`SIM_SKIP=tag,tag`), to look
    /// past a known bug.
    skip: Skip,
}

#[derive(Clone, Copy, Debug, Default)]
struct Skip(&'static [&'static str]);

impl Skip {
    fn from_env() -> Self {
        let tags: Vec<&'static str> = std::env::var("SIM_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| &*Box::leak(t.to_string().into_boxed_str()))
            .collect();
        Skip(Box::leak(tags.into_boxed_slice()))
    }

    fn contains(&self, tag: &str) -> bool {
        self.0.contains(&tag)
    }
}

/// What the seeds exercised, to tell that the invariants were put to work.
#[derive(Debug, Default)]
struct Coverage {
    seeds: u64,
    transitions: std::collections::BTreeMap<String, u64>,
    seeds_exhausted: u64,
    seeds_with_mttr: u64,
    recoveries: u64,
    failed_attempts: u64,
    attempts_cut: u64,
    drains_with_cut_off: u64,
    drains_past_deadline: u64,
    drains_with_finished: u64,
    reads_not_immediate: u64,
}

static COVERAGE: Mutex<Option<Coverage>> = Mutex::new(None);

/// Seeds that broke a skipped invariant, per tag.
static SKIPPED: Mutex<std::collections::BTreeMap<String, Vec<u64>>> =
    Mutex::new(std::collections::BTreeMap::new());

static STRICT_MTTR_SEEDS: AtomicU64 = AtomicU64::new(0);
static STRICT_MTTR_FIRST: Mutex<Option<(u64, String)>> = Mutex::new(None);

// ===== the simulation =====

struct Sim {
    seed: u64,
    cfg: Config,
    opts: Opts,
    step_no: usize,
    step: Option<Step>,
    trace: VecDeque<String>,
    progress: Arc<AtomicU64>,
    start: Instant,
    world: Arc<World>,
    breaker: Breaker,
    recovery: Recovery,
    reliability: Reliability,
    drain: Drain,
    admin: axum::Router,
    app: BoxCloneService<Duration, (), BoxError>,
    monitor: Option<Monitor>,
    transitions: Transitions,
    last_transition: Option<Transition>,
    last_open_for: Option<Duration>,
    step_transitions: Vec<Transition>,
    /// Set by our own force_open / disable, cleared by our resets.
    manual: Option<State>,
    /// Failures recorded with the breaker by direct calls admitted in any
    /// state but `Disabled` (`failures` counts stale outcomes too; a
    /// disabled breaker records nothing); the layer's are counted from the
    /// requests' ends.
    failures: u64,
    /// Rejections seen by direct callers; the layer's are counted from the
    /// requests' ends.
    rejected: u64,
    prev_status: Status,
    /// The recovery's state and attempts started before the current step.
    pre_step_state: RecoveryState,
    pre_step_started: u64,
    recovery_reset_in_window: bool,
    calls: Vec<AppCall>,
    mttr: Arc<Mutex<MttrWatch>>,
    coverage: Coverage,
}

fn same_status(a: &Status, b: &Status) -> bool {
    // `last_attempt_at` is wall-clock now minus the age: it moves by itself.
    (
        a.state,
        a.attempt,
        a.max_attempts,
        &a.last_error,
        a.recoveries,
        a.failed_attempts,
        a.exhausted_cycles,
        a.mttr,
        a.cooldown_remaining,
    ) == (
        b.state,
        b.attempt,
        b.max_attempts,
        &b.last_error,
        b.recoveries,
        b.failed_attempts,
        b.exhausted_cycles,
        b.mttr,
        b.cooldown_remaining,
    )
}

async fn admin_request(
    router: axum::Router,
    method: Method,
    path: String,
    auth: Auth,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    match auth {
        Auth::Good => req = req.header("authorization", format!("Bearer {TOKEN}")),
        Auth::Wrong => req = req.header("authorization", "Bearer wrong"),
        Auth::Missing => {}
    }
    let response = router
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, json)
}

impl Sim {
    fn now(&self) -> Duration {
        Instant::now() - self.start
    }

    fn log(&mut self, line: String) {
        let line = format!("[{:>9.3}s] {line}", self.now().as_secs_f64());
        if self.opts.trace {
            println!("{line}");
        }
        self.trace.push_back(line);
        if self.trace.len() > 40 {
            self.trace.pop_front();
        }
    }

    #[track_caller]
    fn fail(&self, tag: &str, message: String) -> ! {
        let mut text = format!(
            "[{tag}] step {} of seed {} ({:?}): {message}\n  config: {:?}\n  replay: SIM_SEED={} cargo test --test simulation -- --nocapture\n  last steps:\n",
            self.step_no, self.seed, self.step, self.cfg, self.seed,
        );
        for line in &self.trace {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        panic!("{text}");
    }

    #[track_caller]
    fn ensure(&self, ok: bool, tag: &str, message: impl FnOnce() -> String) {
        if !ok {
            if self.opts.skip.contains(tag) {
                let mut skipped = SKIPPED.lock().unwrap();
                let entry = skipped.entry(tag.to_string()).or_default();
                if entry.last() != Some(&self.seed) {
                    entry.push(self.seed);
                }
                return;
            }
            self.fail(tag, message());
        }
    }

    fn up(&self) -> bool {
        self.world.up.load(SeqCst)
    }

    async fn settle(&self) {
        for _ in 0..SETTLE_YIELDS {
            tokio::task::yield_now().await;
        }
    }

    /// Reads the transition stream: ordered, one generation at a time, each
    /// starting where the last ended (unless the stream reported a lag);
    /// manual states left only by hand.
    fn read_transitions(&mut self) {
        let mut lagged = false;
        loop {
            let t = match self.transitions.try_recv() {
                Ok(t) => t,
                Err(TryRecvError::Lagged(_)) => {
                    // Bounded by design (64): only the order is checked.
                    lagged = true;
                    continue;
                }
                Err(_) => break,
            };
            let (gen0, from0) = match &self.last_transition {
                Some(p) => (p.generation, p.to),
                None => (0, State::Closed),
            };
            let continuous = t.generation == gen0 + 1 && t.from == from0;
            self.ensure(
                continuous || (std::mem::take(&mut lagged) && t.generation > gen0),
                "transition-stream-ordered",
                || {
                    format!(
                        "after generation {gen0} (to {from0:?}) came {t:?}: transitions lost or out of order"
                    )
                },
            );
            self.ensure(
                !matches!(t.from, State::ForcedOpen | State::Disabled)
                    || matches!(t.cause, Cause::Reset | Cause::ForcedOpen | Cause::Disabled),
                "manual-state-kept",
                || format!("{:?} left by {:?} (not by hand): {t:?}", t.from, t.cause),
            );
            if t.to == State::Open {
                // Open durations: from the base, growing on re-opens without
                // a close in between, never past the cap.
                let base = ms(self.cfg.open_ms);
                let cap = self.cfg.growth.map_or(base, |(_, max)| ms(max).max(base));
                let open_for = t.open_for.unwrap_or_default();
                let grows = t.from != State::HalfOpen
                    || self.last_open_for.is_none_or(|last| open_for >= last);
                self.ensure(
                    t.open_for.is_some() && open_for >= base && open_for <= cap && grows,
                    "open-duration",
                    || {
                        format!(
                            "{t:?}: base {base:?}, cap {cap:?}, previous {:?}",
                            self.last_open_for
                        )
                    },
                );
                self.last_open_for = Some(open_for);
            } else {
                self.ensure(t.open_for.is_none(), "open-duration", || format!("{t:?}"));
            }
            if self.opts.trace {
                let line = format!(
                    "    transition {:?} -> {:?} ({}) gen {}",
                    t.from, t.to, t.cause, t.generation
                );
                self.log(line);
            }
            *self
                .coverage
                .transitions
                .entry(format!("{:?}->{:?} ({})", t.from, t.to, t.cause))
                .or_default() += 1;
            self.mttr.lock().unwrap().seen(&t, Instant::now());
            self.step_transitions.push(t.clone());
            self.last_transition = Some(t);
        }
    }

    fn observe_mttr(&self, status: &Status) {
        let (error, strict) = {
            let mut watch = self.mttr.lock().unwrap();
            watch.verify(status, Instant::now());
            // Reported once: a skipped invariant is not reported again.
            (watch.error.take(), watch.strict.clone())
        };
        if let Some((tag, e)) = error {
            self.ensure(false, tag, || e);
        }
        if let Some(e) = strict.filter(|_| self.opts.strict_mttr) {
            self.ensure(false, "mttr-within-true-outage", || e);
        }
    }

    /// Every invariant that must hold at any moment between steps.
    /// `held_probes`: permits we hold that are probes of the current
    /// generation.
    fn check(&mut self, settled: bool, held_probes: usize) {
        let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        self.ensure(panics.is_empty(), "no-panic", || {
            format!("a task panicked: {panics:?}")
        });
        self.read_transitions();
        let snap = self.breaker.snapshot();
        let state = self.breaker.state();
        let status = self.recovery.status();

        // Reads agree with each other.
        self.ensure(snap.state == state, "reads-agree", || {
            format!("snapshot says {:?}, state() says {state:?}", snap.state)
        });
        self.ensure(
            snap.generation == snap.transitions
                && snap.generation == self.last_transition.as_ref().map_or(0, |t| t.generation),
            "generation-counts-transitions",
            || {
                format!(
                    "generation {}, transitions {}, last published {:?}",
                    snap.generation,
                    snap.transitions,
                    self.last_transition.as_ref().map(|t| t.generation)
                )
            },
        );

        // At most `permits` probes: the free ones plus the ones we hold. A
        // read past an overdue half-open wait reports the next period's
        // permits (the probes we hold belong to the period that ran out),
        // so with a half-open wait only the free ones are bounded here;
        // `read-predicts-admission` checks those against the next call.
        if let Some(free) = snap.available_permits {
            let held = if self.cfg.half_open_max_wait_ms.is_some() {
                0
            } else {
                held_probes
            };
            self.ensure(
                usize::from(free) + held <= usize::from(self.cfg.permits),
                "half-open-permits-bounded",
                || {
                    format!(
                        "{free} free and {held_probes} held of {} permits",
                        self.cfg.permits
                    )
                },
            );
        }

        // ForcedOpen / Disabled: only our reset leaves them.
        if let Some(manual) = self.manual {
            self.ensure(state == manual, "manual-state-kept", || {
                format!("we set {manual:?} and did not reset, the breaker is {state:?}")
            });
        } else {
            self.ensure(
                !matches!(state, State::ForcedOpen | State::Disabled),
                "manual-state-kept",
                || format!("the breaker is {state:?}, which only we may set"),
            );
        }

        // One attempt at a time.
        let max = self.world.max_in_action.load(SeqCst);
        self.ensure(max <= 1, "one-cycle-in-flight", || {
            format!("{max} recovery actions ran at once")
        });

        // Counters.
        let failures = self.failures + self.app_failures();
        self.ensure(snap.failures == failures, "failures-conserved", || {
            format!(
                "breaker counts {} failures, callers recorded {failures}",
                snap.failures
            )
        });
        let rejected = self.rejected + self.app_rejected();
        self.ensure(snap.rejected == rejected, "rejections-conserved", || {
            format!(
                "breaker counts {} rejections, callers saw {rejected}",
                snap.rejected
            )
        });
        let prev = &self.prev_status;
        self.ensure(
            status.recoveries >= prev.recoveries
                && status.failed_attempts >= prev.failed_attempts
                && status.exhausted_cycles >= prev.exhausted_cycles,
            "recovery-counters-monotonic",
            || format!("from {prev:?} to {status:?}"),
        );
        self.ensure(
            status.attempt <= status.max_attempts && status.max_attempts == self.cfg.max_attempts,
            "attempt-within-max",
            || format!("attempt {} of {}", status.attempt, status.max_attempts),
        );
        let (errs, dropped) = (
            self.world.action_err.load(SeqCst),
            self.world.action_dropped.load(SeqCst),
        );
        self.ensure(
            status.failed_attempts <= errs + dropped,
            "attempt-failures-real",
            || {
                format!(
                    "{} failed attempts reported, the action failed {errs} times and was cut {dropped} times",
                    status.failed_attempts
                )
            },
        );
        self.ensure(
            status.exhausted_cycles * u64::from(status.max_attempts) <= status.failed_attempts,
            "exhaustion-needs-failed-attempts",
            || format!("{status:?}"),
        );
        self.ensure(
            (status.failed_attempts > 0) == status.last_error.is_some()
                && status.last_error.as_ref().is_none_or(|e| e.len() <= 256),
            "last-error",
            || format!("{status:?}"),
        );
        self.ensure(
            (status.state == RecoveryState::CoolingDown) == status.cooldown_remaining.is_some()
                && status
                    .cooldown_remaining
                    .is_none_or(|left| left <= ms(self.cfg.cooldown_ms)),
            "cooldown-reported",
            || format!("{status:?}"),
        );
        let alerts = self.world.alerts.load(SeqCst);
        // Strict: every exhausted cycle alerts. Adaptive: the first of an
        // outage does (the machine's exhaustive test pins the rest down).
        let alerts_ok = if self.cfg.adaptive.is_none() {
            alerts == status.exhausted_cycles
        } else {
            alerts <= status.exhausted_cycles && (alerts == 0) == (status.exhausted_cycles == 0)
        };
        self.ensure(alerts_ok, "alert-once-per-exhaustion", || {
            format!(
                "{alerts} alerts for {} exhaustions",
                status.exhausted_cycles
            )
        });

        self.observe_mttr(&status);

        if settled {
            // The breaker opening (by itself) while the recovery was idle
            // starts an attempt, unless the breaker closed again (or the
            // recovery was reset) before the recovery's task could run.
            let opened = self
                .step_transitions
                .iter()
                .rposition(|t| {
                    t.to == State::Open && matches!(t.from, State::Closed | State::HalfOpen)
                })
                .is_some_and(|i| {
                    !self.step_transitions[i..]
                        .iter()
                        .any(|t| t.to == State::Closed)
                })
                && !self.recovery_reset_in_window;
            let started = self.world.action_started.load(SeqCst);
            self.ensure(
                !(opened && self.pre_step_state == RecoveryState::Idle)
                    || started > self.pre_step_started,
                "opening-triggers-recovery",
                || {
                    format!(
                        "the breaker opened while the recovery was idle; no attempt ran (recovery now {:?})",
                        status.state
                    )
                },
            );
            // A cycle that is over (cancelled, or the state left
            // `recovering`) has no attempt still running.
            let running = self.world.in_action.load(SeqCst);
            self.ensure(
                running == 0 || status.state == RecoveryState::Recovering,
                "cancelled-cycle-stops",
                || {
                    format!(
                        "{running} attempt(s) running while the recovery is {:?}",
                        status.state
                    )
                },
            );
            let model = self.calls.iter().filter(|c| c.in_flight()).count();
            let in_flight = self.drain.in_flight();
            self.ensure(model == in_flight, "drain-in-flight", || {
                format!("the drain counts {in_flight} requests in flight, {model} are")
            });
        }
        self.prev_status = status;
    }

    /// Asks for admission as a caller would, after checking what the reads
    /// promise: `Closed`/`Disabled` admit, `Open`/`ForcedOpen` reject,
    /// `HalfOpen` admits while a permit is free; an `Open` rejection's
    /// retry-after is the snapshot's `next_probe_in`.
    ///
    /// The permit comes with whether it was admitted `Disabled` (such calls
    /// record nothing, their failures are not counted).
    fn acquire<'b>(&mut self, breaker: &'b Breaker) -> Option<(Permit<'b>, bool)> {
        let snap = breaker.snapshot();
        let predicted = match snap.state {
            State::Closed | State::Disabled => true,
            State::Open | State::ForcedOpen => false,
            State::HalfOpen => snap.available_permits.unwrap_or(0) > 0,
        };
        let result = breaker.try_acquire();
        self.ensure(
            result.is_ok() == predicted,
            "read-predicts-admission",
            || {
                format!(
                    "the snapshot said {:?} (next probe in {:?}, permits {:?}); the next call was {}",
                    snap.state,
                    snap.next_probe_in,
                    snap.available_permits,
                    match &result {
                        Ok(_) => "admitted".to_string(),
                        Err(r) => format!("rejected ({r:?})"),
                    }
                )
            },
        );
        match result {
            Ok(permit) => Some((permit, snap.state == State::Disabled)),
            Err(rejected) => {
                self.rejected += 1;
                if snap.state == State::Open {
                    self.ensure(
                        rejected.retry_after() == snap.next_probe_in,
                        "retry-after-matches-read",
                        || {
                            format!(
                                "snapshot: next probe in {:?}; rejection: retry after {:?}",
                                snap.next_probe_in,
                                rejected.retry_after()
                            )
                        },
                    );
                }
                None
            }
        }
    }

    fn record(&mut self, (permit, disabled): (Permit<'_>, bool)) {
        if self.up() {
            permit.success();
        } else {
            if !disabled {
                self.failures += 1;
            }
            permit.failure();
        }
    }

    fn spawn_call(&mut self, latency: Duration) {
        let slot = Arc::new(Slot::default());
        let (s, app, drain) = (slot.clone(), self.app.clone(), self.drain.clone());
        let breaker = self.breaker.clone();
        let handle = tokio::spawn(async move {
            // Admission happens in this same poll.
            s.disabled.store(breaker.state() == State::Disabled, SeqCst);
            s.started.store(true, SeqCst);
            let result = app.oneshot(latency).await;
            let end = match result {
                Ok(()) => End::Ok,
                Err(e) if e.is::<Draining>() => End::Refused,
                Err(e) if e.is::<Rejected>() => End::Rejected,
                Err(_) => End::InnerErr,
            };
            *s.end.lock().unwrap() = Some((end, drain.is_draining()));
        });
        self.calls.push(AppCall {
            slot,
            handle,
            aborted: false,
            aborted_draining: false,
        });
    }

    /// Failures of the dependency behind the breaker layer, admitted in
    /// another state than `Disabled`.
    fn app_failures(&self) -> u64 {
        self.calls
            .iter()
            .filter(|c| {
                matches!(c.end(), Some((End::InnerErr, _))) && !c.slot.disabled.load(SeqCst)
            })
            .count() as u64
    }

    /// Rejections the breaker layer handed back to requests.
    fn app_rejected(&self) -> u64 {
        self.calls
            .iter()
            .filter(|c| matches!(c.end(), Some((End::Rejected, _))))
            .count() as u64
    }
}

impl Sim {
    async fn admin(&self, method: Method, path: &str, auth: Auth) -> (StatusCode, Value) {
        admin_request(self.admin.clone(), method, path.to_string(), auth).await
    }

    /// An admin request that must not let any other task run: `None` if it
    /// did not complete at once (then it is completed by awaiting it).
    async fn admin_now(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
    ) -> (bool, (StatusCode, Value)) {
        let mut fut = Box::pin(admin_request(
            self.admin.clone(),
            method,
            path.to_string(),
            auth,
        ));
        match fut.as_mut().now_or_never() {
            Some(out) => (true, out),
            None => (false, fut.await),
        }
    }

    fn expected_trigger(pre: RecoveryState, manual: bool) -> TriggerOutcome {
        match (pre, manual) {
            (RecoveryState::Recovering, _) => TriggerOutcome::AlreadyRunning,
            (_, true) => TriggerOutcome::Started,
            (RecoveryState::Exhausted, false) => TriggerOutcome::Ignored,
            (RecoveryState::CoolingDown, false) => TriggerOutcome::Deferred,
            (RecoveryState::Idle, false) => TriggerOutcome::Started,
        }
    }

    fn unchanged(&self, what: &str, snap: &Snapshot, status: &Status) {
        let (snap2, status2) = (self.breaker.snapshot(), self.recovery.status());
        self.ensure(
            *snap == snap2 && same_status(status, &status2),
            "refused-post-changes-nothing",
            || format!("{what}: before {snap:?} {status:?}, after {snap2:?} {status2:?}"),
        );
    }

    async fn exec<'b>(
        &mut self,
        step: &Step,
        breaker: &'b Breaker,
        held: &mut Vec<(Permit<'b>, bool)>,
    ) {
        match *step {
            Step::Down => {
                if self.up() {
                    self.world.up.store(false, SeqCst);
                    self.mttr
                        .lock()
                        .unwrap()
                        .outages
                        .push((Instant::now(), None));
                }
            }
            Step::Up => {
                if !self.up() {
                    self.world.up.store(true, SeqCst);
                    let mut watch = self.mttr.lock().unwrap();
                    if let Some(last) = watch.outages.last_mut() {
                        last.1 = Some(Instant::now());
                    }
                }
            }
            Step::ActionHangs(b) => self.world.action_hangs.store(b, SeqCst),
            Step::ActionDelay(d) => self.world.action_delay_ms.store(d, SeqCst),
            Step::CheckHangs(b) => self.world.check_hangs.store(b, SeqCst),
            // A slow check must not fail by its timeout while the dependency
            // is up: that would be an outage sign the harness cannot see.
            Step::CheckDelay(d) => self
                .world
                .check_delay_ms
                .store(d.min(self.cfg.check_timeout_ms / 2), SeqCst),
            Step::Call => {
                if let Some(p) = self.acquire(breaker) {
                    self.record(p);
                }
            }
            Step::CallApi => {
                let up = self.up();
                let disabled = breaker.state() == State::Disabled;
                let result = breaker
                    .call(async move { if up { Ok(()) } else { Err("refused") } })
                    .now_or_never();
                match result {
                    Some(Ok(())) => {}
                    Some(Err(CallError::Rejected(_))) => self.rejected += 1,
                    Some(Err(CallError::Inner(_))) => self.failures += u64::from(!disabled),
                    None => self.fail(
                        "call-api",
                        "Breaker::call on a ready future did not complete at once".into(),
                    ),
                }
            }
            Step::Burst(n) => {
                for _ in 0..n {
                    if let Some(p) = self.acquire(breaker) {
                        self.record(p);
                    }
                    self.read_transitions();
                }
            }
            Step::Hold => {
                if held.len() < 6 {
                    if let Some(p) = self.acquire(breaker) {
                        held.push(p);
                    }
                } else if let Some(p) = self.acquire(breaker) {
                    self.record(p);
                }
            }
            Step::Finish(k, how) => {
                if !held.is_empty() {
                    let (p, disabled) = held.swap_remove((k % held.len() as u64) as usize);
                    let before = breaker.snapshot();
                    // A probe of the half-open period still under way (not
                    // past its maximum wait).
                    let within_wait = self.cfg.half_open_max_wait_ms.is_none_or(|wait| {
                        let started = self
                            .mttr
                            .lock()
                            .unwrap()
                            .half_opened
                            .get(&before.generation)
                            .copied();
                        started.is_some_and(|at| Instant::now() < at + ms(wait))
                    });
                    let current = p.is_probe()
                        && p.generation() == before.generation
                        && before.state == State::HalfOpen
                        && within_wait;
                    match how {
                        Finish::ByFlag => self.record((p, disabled)),
                        Finish::Drop => drop(p),
                        Finish::Ignore => p.record(Outcome::Ignore),
                    }
                    if current && how != Finish::ByFlag {
                        let after = breaker.snapshot();
                        self.ensure(
                            after.generation == before.generation
                                && after.available_permits
                                    == before.available_permits.map(|n| n + 1),
                            "unfinished-probe-gives-permit-back",
                            || format!("{how:?}: before {before:?}, after {after:?}"),
                        );
                    }
                }
            }
            Step::AppCall(latency) => {
                if self.calls.iter().filter(|c| c.in_flight()).count() < 40 {
                    self.spawn_call(ms(latency));
                }
            }
            Step::Abort(k) => {
                let candidates: Vec<usize> = (0..self.calls.len())
                    .filter(|&i| self.calls[i].in_flight() && !self.calls[i].aborted)
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[(k % candidates.len() as u64) as usize];
                    let draining = self.drain.is_draining();
                    let call = &mut self.calls[i];
                    call.handle.abort();
                    call.aborted = true;
                    call.aborted_draining = draining;
                }
            }
            Step::Sleep(d) => tokio::time::sleep(ms(d)).await,
            Step::Advance(d) => tokio::time::advance(ms(d)).await,
            Step::Settle => {}
            Step::ForceOpen => {
                breaker.force_open();
                self.manual = Some(State::ForcedOpen);
            }
            Step::Disable => {
                breaker.disable();
                self.manual = Some(State::Disabled);
            }
            Step::Reset => {
                // A reset of a closed breaker is no transition, and tells a
                // recovery nothing.
                let was_closed = breaker.state() == State::Closed;
                breaker.reset();
                self.manual = None;
                let (state, status) = (breaker.state(), self.recovery.status());
                self.ensure(state == State::Closed, "reset-closes", || {
                    format!("{state:?}")
                });
                self.ensure(
                    was_closed
                        || !matches!(
                            status.state,
                            RecoveryState::Recovering | RecoveryState::Exhausted
                        ),
                    "breaker-close-ends-cycle",
                    || {
                        format!(
                            "the breaker was reset to closed; the recovery is {:?}",
                            status.state
                        )
                    },
                );
            }
            Step::Trigger => {
                let pre = self.recovery.status().state;
                let outcome = self.recovery.trigger_manual();
                let post = self.recovery.status().state;
                let expected = Self::expected_trigger(pre, true);
                self.ensure(
                    outcome == expected && post == RecoveryState::Recovering,
                    "trigger-outcome",
                    || format!("manual trigger while {pre:?}: {outcome:?} (expected {expected:?}), then {post:?}"),
                );
            }
            Step::TriggerAuto => {
                if self.up() {
                    self.log("    skipped: the dependency is up".into());
                } else {
                    let pre = self.recovery.status().state;
                    let outcome = self
                        .recovery
                        .trigger_automatic("simulation: dependency seen down");
                    let expected = Self::expected_trigger(pre, false);
                    self.ensure(outcome == expected, "trigger-outcome", || {
                        format!(
                            "automatic trigger while {pre:?}: {outcome:?} (expected {expected:?})"
                        )
                    });
                }
            }
            Step::RecoveryReset => {
                self.recovery_reset_in_window = true;
                let before = breaker.snapshot();
                self.recovery.reset();
                let (after, status) = (breaker.snapshot(), self.recovery.status());
                self.ensure(
                    status.state == RecoveryState::Idle,
                    "recovery-reset-idles",
                    || format!("{status:?}"),
                );
                self.ensure(after == before, "recovery-reset-leaves-breaker", || {
                    format!("before {before:?}, after {after:?}")
                });
            }
            Step::AdminTrigger(auth) => {
                let (snap, status) = (breaker.snapshot(), self.recovery.status());
                let path = format!("/reliability/auto-recovery/{NAME}/trigger");
                let (sync, (code, body)) = self.admin_now(Method::POST, &path, auth).await;
                if auth == Auth::Good {
                    let expected = Self::expected_trigger(status.state, true);
                    self.ensure(
                        code == StatusCode::ACCEPTED
                            && body["outcome"] == expected.as_str()
                            && body["state"] == "recovering",
                        "admin-trigger",
                        || {
                            format!(
                                "while {:?}: {code} {body} (expected {expected:?})",
                                status.state
                            )
                        },
                    );
                } else {
                    self.ensure(code == StatusCode::UNAUTHORIZED, "admin-auth", || {
                        format!("{auth:?}: {code} {body}")
                    });
                    if sync {
                        self.unchanged("unauthorised trigger", &snap, &status);
                    }
                }
            }
            Step::AdminReset(auth) => {
                let (snap, status) = (breaker.snapshot(), self.recovery.status());
                let path = format!("/reliability/circuit-breaker/{NAME}/reset");
                let (sync, (code, body)) = self.admin_now(Method::POST, &path, auth).await;
                if auth == Auth::Good {
                    self.recovery_reset_in_window = true;
                    self.manual = None;
                    let (state, status) = (breaker.state(), self.recovery.status());
                    self.ensure(
                        code == StatusCode::OK
                            && body["circuit_breaker"] == "closed"
                            && state == State::Closed
                            && status.state == RecoveryState::Idle,
                        "admin-reset",
                        || {
                            format!(
                                "{code} {body}; breaker {state:?}, recovery {:?}",
                                status.state
                            )
                        },
                    );
                } else {
                    self.ensure(code == StatusCode::UNAUTHORIZED, "admin-auth", || {
                        format!("{auth:?}: {code} {body}")
                    });
                    if sync {
                        self.unchanged("unauthorised reset", &snap, &status);
                    }
                }
            }
            Step::AdminBad => {
                let checks = [
                    (
                        Method::POST,
                        "/reliability/circuit-breaker/nope/reset".to_string(),
                        StatusCode::NOT_FOUND,
                    ),
                    (
                        Method::POST,
                        "/reliability/auto-recovery/nope/trigger".to_string(),
                        StatusCode::NOT_FOUND,
                    ),
                    (
                        Method::GET,
                        format!("/reliability/auto-recovery/{NAME}/trigger"),
                        StatusCode::METHOD_NOT_ALLOWED,
                    ),
                    (
                        Method::POST,
                        "/health".to_string(),
                        StatusCode::METHOD_NOT_ALLOWED,
                    ),
                ];
                for (method, path, expected) in checks {
                    let (code, body) = self.admin(method.clone(), &path, Auth::Good).await;
                    self.ensure(code == expected, "admin-errors", || {
                        format!("{method} {path}: {code} {body} (expected {expected})")
                    });
                }
            }
            Step::Read => self.read_all().await,
            Step::Rushed(_) => unreachable!("unwrapped by the loop"),
        }
    }

    /// Every read, twice around: nothing may change in between.
    async fn read_all(&mut self) {
        let s1 = self.breaker.snapshot();
        let st1 = self.recovery.status();
        let report = self.reliability.report();
        let _ = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            self.breaker,
            self.recovery,
            self.reliability,
            self.drain,
            self.monitor,
            self.breaker.counts(),
            self.drain.report()
        );
        let _ = (
            self.breaker.state(),
            self.breaker.generation(),
            self.reliability.status(),
        );
        let (a, (health_code, health)) = self.admin_now(Method::GET, "/health", Auth::Good).await;
        let (b, (rel_code, rel)) = self
            .admin_now(Method::GET, "/reliability", Auth::Good)
            .await;
        let (c, (ready_code, ready)) = self.admin_now(Method::GET, "/readyz", Auth::Missing).await;
        let (d, (live_code, _)) = self.admin_now(Method::GET, "/livez", Auth::Missing).await;
        let (e, (_, rel_anon)) = self
            .admin_now(Method::GET, "/reliability", Auth::Missing)
            .await;
        let s2 = self.breaker.snapshot();
        let st2 = self.recovery.status();
        let sync = a && b && c && d && e;
        if !sync {
            self.coverage.reads_not_immediate += 1;
            self.log("    (an admin GET did not complete at once: no same-moment checks)".into());
            return;
        }
        self.ensure(
            s1 == s2 && same_status(&st1, &st2),
            "reads-change-nothing",
            || format!("before: {s1:?} {st1:?}\nafter: {s2:?} {st2:?}"),
        );
        let dep = &report.dependencies[0];
        self.ensure(
            dep.breaker.as_ref() == Some(&s1)
                && dep.recovery.as_ref().is_some_and(|r| same_status(r, &st1)),
            "report-agrees",
            || format!("report {dep:?}\nsnapshot {s1:?}\nstatus {st1:?}"),
        );
        let mut expected = match dep.last.as_ref().map(|l| l.status) {
            Some(HealthStatus::Fail) => HealthStatus::Fail,
            Some(HealthStatus::Warn) | None => HealthStatus::Warn,
            Some(HealthStatus::Pass) => HealthStatus::Pass,
        };
        if s1.state != State::Closed {
            expected = expected.max(HealthStatus::Warn);
        }
        self.ensure(report.status == expected, "health-aggregate", || {
            format!("{:?}, expected {expected:?} from {dep:?}", report.status)
        });
        self.ensure(
            dep.uptime_percent
                .is_none_or(|u| (0.0..=100.0).contains(&u))
                && dep
                    .availability_percent
                    .is_none_or(|u| (0.0..=100.0 + 1e-9).contains(&u)),
            "percentages",
            || format!("{dep:?}"),
        );
        let draining = self.drain.is_draining();
        self.ensure(
            self.drain.report().is_some() == draining
                && report.monitor_running != draining
                && report.monitor_interval == Some(ms(self.cfg.monitor_ms).max(ms(1)))
                && (dep.checks == 0
                    || dep
                        .last
                        .as_ref()
                        .is_some_and(|l| (dep.consecutive_failures == 0) == l.status.is_up())),
            "report-details",
            || format!("{report:?}, draining {draining}"),
        );
        let code = if expected == HealthStatus::Fail || draining {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        self.ensure(
            health_code == code
                && health["status"] == expected.as_str()
                && health["circuit_breakers"][NAME] == s1.state.as_str()
                && health["recovery"][NAME] == st1.state.as_str()
                && health["draining"] == draining,
            "admin-health",
            || format!("{health_code} {health}\nexpected {code} {expected:?} {s1:?} {st1:?}"),
        );
        let b = &rel["circuit_breakers"][NAME];
        let r = &rel["recovery"][NAME];
        self.ensure(
            rel_code == StatusCode::OK
                && b["state"] == s1.state.as_str()
                && b["failure_count"] == s1.failures
                && b["rejected"] == s1.rejected
                && b["transitions"] == s1.transitions
                && b["consecutive_failures"] == s1.counts.consecutive_failures
                && r["state"] == st1.state.as_str()
                && r["attempts"] == st1.attempt
                && r["max_attempts"] == st1.max_attempts
                && r["successes"] == st1.recoveries
                && r["failures"] == st1.failed_attempts
                && r["exhaustions"] == st1.exhausted_cycles
                && r["last_error"] == serde_json::json!(st1.last_error)
                && rel["graceful_shutdown"]["in_flight"] == self.drain.in_flight()
                && rel["graceful_shutdown"]["draining"] == draining,
            "admin-reliability",
            || format!("{rel_code} {rel}\nsnapshot {s1:?}\nstatus {st1:?}"),
        );
        self.ensure(
            rel_anon["recovery"][NAME]["last_error"].is_null(),
            "admin-hides-errors",
            || format!("without the token: {rel_anon}"),
        );
        let ready = (ready_code == StatusCode::OK) != draining
            && ready["status"] == if draining { "fail" } else { "pass" };
        self.ensure(ready && live_code == StatusCode::OK, "admin-probes", || {
            format!("readyz {ready_code}, livez {live_code}, draining {draining}")
        });
    }

    /// The end of a run: the drain, with requests in flight, and its report.
    async fn finish(&mut self, steps: usize) {
        self.step_no = steps;
        self.step = None;
        self.log("drain".into());
        self.settle().await;
        self.check(true, 0);
        let at_signal: Vec<usize> = (0..self.calls.len())
            .filter(|&i| self.calls[i].in_flight())
            .collect();
        let monitor = self
            .monitor
            .take()
            .expect("the monitor runs until the drain");
        self.drain.stop_monitor(monitor);
        self.drain.begin();
        let first_after = self.calls.len();
        self.ensure(self.drain.is_draining(), "drain-begins", || {
            "not draining after begin".into()
        });
        let (ready, _) = self.admin(Method::GET, "/readyz", Auth::Missing).await;
        let (live, _) = self.admin(Method::GET, "/livez", Auth::Missing).await;
        let (health, _) = self.admin(Method::GET, "/health", Auth::Missing).await;
        self.ensure(
            ready == StatusCode::SERVICE_UNAVAILABLE
                && live == StatusCode::OK
                && health == StatusCode::SERVICE_UNAVAILABLE,
            "admin-while-draining",
            || format!("readyz {ready}, livez {live}, health {health}"),
        );
        // During the pre-drain delay requests are still served.
        self.spawn_call(ms(100));
        self.spawn_call(ms(2_000));
        self.settle().await;
        if self.seed % 2 == 0 {
            if let Some(i) = (0..self.calls.len()).find(|&i| self.calls[i].in_flight()) {
                self.log(format!("    abort request {i}"));
                self.calls[i].handle.abort();
                self.calls[i].aborted = true;
                self.calls[i].aborted_draining = true;
            }
        }
        tokio::time::sleep(ms(self.cfg.pre_drain_ms)).await;
        self.settle().await;
        let rejecting = self.drain.is_rejecting();
        let refused_from = self.calls.len();
        self.spawn_call(ms(10));
        self.spawn_call(ms(10));
        self.settle().await;
        if rejecting {
            for i in refused_from..self.calls.len() {
                let end = self.calls[i].end();
                self.ensure(
                    matches!(end, Some((End::Refused, _))),
                    "drain-refuses",
                    || format!("a request made while rejecting ended {end:?}"),
                );
            }
        }
        self.check(true, 0);

        let limit = ms(self.cfg.grace_ms) + self.drain.hook_timeout() + ms(1_000);
        let report = match tokio::time::timeout(limit, self.drain.completed()).await {
            Ok(report) => report,
            Err(_) => self.fail(
                "drain-completes",
                format!("completed() did not resolve within {limit:?}"),
            ),
        };
        self.log(format!("    completed: {report:?}"));
        self.coverage.drains_with_cut_off += u64::from(report.cut_off > 0);
        self.coverage.drains_past_deadline += u64::from(report.running_at_deadline > 0);
        self.coverage.drains_with_finished += u64::from(report.finished > 0);
        let admitted_after = (first_after..self.calls.len())
            .filter(|&i| {
                self.calls[i].slot.started.load(SeqCst)
                    && !matches!(self.calls[i].end(), Some((End::Refused, _)))
            })
            .count() as u64;
        let total = at_signal.len() as u64 + admitted_after;
        let refused = self
            .calls
            .iter()
            .filter(|c| matches!(c.end(), Some((End::Refused, _))))
            .count() as u64;
        self.ensure(
            report.finished + report.cut_off + report.still_running == total,
            "drain-report-conserved",
            || {
                format!(
                    "{report:?}: {} in flight at the signal, {admitted_after} admitted after",
                    at_signal.len()
                )
            },
        );
        // The report is taken when the hooks have run: refusals after it
        // are in the last report below.
        self.ensure(report.refused <= refused, "drain-refusals-counted", || {
            format!("{report:?}: {refused} refused")
        });
        self.ensure(
            report.still_running <= report.running_at_deadline
                && report.elapsed <= ms(self.cfg.grace_ms) + self.drain.hook_timeout(),
            "drain-report-consistent",
            || format!("{report:?} (grace {} ms)", self.cfg.grace_ms),
        );
        self.ensure(
            report.hook_failures.is_empty(),
            "monitor-stops-in-hook",
            || format!("{report:?}"),
        );
        let status = self.reliability.report();
        self.ensure(
            !status.monitor_running,
            "monitor-stops-at-drain-end",
            || "the monitor still runs after the drain".into(),
        );
        let checks = self.world.checks_run.load(SeqCst);
        tokio::time::sleep(ms(self.cfg.monitor_ms * 3)).await;
        self.settle().await;
        let later = self.world.checks_run.load(SeqCst);
        self.ensure(later == checks, "monitor-stops-at-drain-end", || {
            format!("{} checks ran after the monitor stopped", later - checks)
        });

        // Every request ends; the last report names each one.
        tokio::time::sleep(Duration::from_secs(100)).await;
        self.settle().await;
        self.check(true, 0);
        let last: DrainReport = self.drain.report().expect("the drain began");
        let finished = self
            .calls
            .iter()
            .filter(|c| matches!(c.end(), Some((e, true)) if e != End::Refused))
            .count() as u64;
        let cut_off = self
            .calls
            .iter()
            .filter(|c| {
                c.aborted && c.aborted_draining && c.slot.started.load(SeqCst) && c.end().is_none()
            })
            .count() as u64;
        self.ensure(
            last.still_running == 0
                && last.finished == finished
                && last.cut_off == cut_off
                && last.refused == refused
                && last.finished + last.cut_off == total,
            "drain-report-true",
            || format!("{last:?}: {finished} finished, {cut_off} cut off, {refused} refused, {total} admitted"),
        );
        let (ready, _) = self.admin(Method::GET, "/readyz", Auth::Missing).await;
        let (live, _) = self.admin(Method::GET, "/livez", Auth::Missing).await;
        self.ensure(
            ready == StatusCode::SERVICE_UNAVAILABLE && live == StatusCode::OK,
            "admin-after-drain",
            || format!("readyz {ready}, livez {live}"),
        );
    }
}

async fn run_schedule(
    seed: u64,
    cfg: Config,
    steps: Vec<Step>,
    opts: Opts,
    progress: Arc<AtomicU64>,
) {
    let world = Arc::new(World::default());
    world.up.store(true, SeqCst);

    let mut builder = Breaker::builder(NAME);
    builder = match cfg.trip {
        Trip::Consecutive(n) => builder.consecutive_failures(n),
        Trip::Count {
            size,
            rate_pct,
            min,
        } => builder
            .count_window(size)
            .failure_rate(rate_pct as f64 / 100.0)
            .minimum_calls(min),
        Trip::Time {
            length_ms,
            buckets,
            rate_pct,
            min,
        } => builder
            .time_window(ms(length_ms), buckets)
            .failure_rate(rate_pct as f64 / 100.0)
            .minimum_calls(min),
    };
    builder = builder
        .open_duration(ms(cfg.open_ms))
        .healthy_period(ms(cfg.healthy_ms))
        .half_open_permits(cfg.permits);
    if let Some((mult, max)) = cfg.growth {
        builder = builder.open_growth(mult as f64 / 10.0, ms(max));
    }
    if let Some(wait) = cfg.half_open_max_wait_ms {
        builder = builder.half_open_max_wait(ms(wait));
    }
    let breaker = builder.build();
    let transitions = breaker.subscribe();

    let w = world.clone();
    let action = move || {
        let w = w.clone();
        async move {
            let mut guard = ActionGuard::enter(&w);
            if w.action_hangs.load(SeqCst) {
                tokio::time::sleep(HANG).await;
            }
            tokio::time::sleep(ms(w.action_delay_ms.load(SeqCst))).await;
            guard.done = true;
            if w.up.load(SeqCst) {
                w.action_ok.fetch_add(1, SeqCst);
                Ok(())
            } else {
                w.action_err.fetch_add(1, SeqCst);
                Err("model server refused the connection")
            }
        }
    };
    let w = world.clone();
    let recovery = Recovery::builder(NAME, action)
        .watch(&breaker)
        .max_attempts(cfg.max_attempts)
        .backoff(Backoff::new(
            ms(cfg.backoff_base_ms),
            cfg.backoff_mult as f64 / 10.0,
        ))
        .attempt_timeout(ms(cfg.attempt_timeout_ms))
        .cooldown(ms(cfg.cooldown_ms))
        .mode(match cfg.adaptive {
            None => Mode::Strict,
            Some((first, max, min_cooldown)) => Mode::Adaptive(
                Adaptive::default()
                    .retry_exhausted(ms(first), ms(max))
                    .cooldown(ms(min_cooldown), Duration::from_secs(3600)),
            ),
        })
        .on_exhausted(move |_| {
            w.alerts.fetch_add(1, SeqCst);
        })
        .spawn();

    let w = world.clone();
    let check = HealthCheck::new(move || {
        let w = w.clone();
        async move {
            w.checks_run.fetch_add(1, SeqCst);
            // Hangs only while down, so a timeout never reports an outage
            // that is not there.
            if !w.up.load(SeqCst) && w.check_hangs.load(SeqCst) {
                tokio::time::sleep(HANG).await;
            }
            tokio::time::sleep(ms(w.check_delay_ms.load(SeqCst))).await;
            if w.up.load(SeqCst) {
                Ok(())
            } else {
                Err("connection refused")
            }
        }
    });
    let reliability = Reliability::builder()
        .dependency(
            match cfg.probe_while_down {
                None => Dependency::new(NAME, check).no_probe_while_down(),
                Some((first, max)) => {
                    Dependency::new(NAME, check).probe_while_down(ms(first), ms(max))
                }
            }
            .timeout(ms(cfg.check_timeout_ms))
            .breaker(&breaker)
            .recovery(&recovery),
        )
        .build()
        .unwrap();
    reliability.mark_started();
    let monitor = Monitor::start(&reliability, ms(cfg.monitor_ms));
    let drain = Drain::builder()
        .grace_period(ms(cfg.grace_ms))
        .pre_drain_delay(ms(cfg.pre_drain_ms))
        .build();
    let admin = Admin::new(&reliability, &drain).token(TOKEN).router();

    let w = world.clone();
    let client = ServiceBuilder::new()
        .layer(breaker.layer())
        .service(service_fn(move |latency: Duration| {
            let w = w.clone();
            async move {
                tokio::time::sleep(latency).await;
                if w.up.load(SeqCst) {
                    Ok::<(), BoxError>(())
                } else {
                    Err::<(), BoxError>("dependency down".into())
                }
            }
        }));
    let app = ServiceBuilder::new()
        .layer(drain.rpc_layer())
        .service(service_fn(move |latency: Duration| {
            client.clone().oneshot(latency)
        }));
    let app = BoxCloneService::new(app);

    let mttr = Arc::new(Mutex::new(MttrWatch {
        outages: Vec::new(),
        openings: Default::default(),
        half_opened: Default::default(),
        slack: ms(cfg.check_timeout_ms),
        successes: 0,
        last_end: None,
        pending: Vec::new(),
        bound: None,
        error: None,
        strict: None,
    }));
    {
        // Sees every transition of the breaker the moment it is made.
        let mut openings = breaker.subscribe();
        let m = mttr.clone();
        tokio::spawn(async move {
            loop {
                match openings.recv().await {
                    Ok(t) => m.lock().unwrap().seen(&t, Instant::now()),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    {
        // Sees every recovery the moment it is recorded.
        let (r, r2, m) = (recovery.clone(), recovery.clone(), mttr.clone());
        tokio::spawn(async move {
            r.wait_for(move |_| {
                let status = r2.status();
                m.lock().unwrap().observe(&status, Instant::now());
                false
            })
            .await;
        });
    }

    let prev_status = recovery.status();
    let mut sim = Sim {
        seed,
        cfg,
        opts,
        step_no: 0,
        step: None,
        trace: VecDeque::new(),
        progress: progress.clone(),
        start: Instant::now(),
        world,
        breaker: breaker.clone(),
        recovery,
        reliability,
        drain,
        admin,
        app,
        monitor: Some(monitor),
        transitions,
        last_transition: None,
        last_open_for: None,
        step_transitions: Vec::new(),
        manual: None,
        failures: 0,
        rejected: 0,
        pre_step_state: prev_status.state,
        pre_step_started: 0,
        recovery_reset_in_window: false,
        prev_status,
        calls: Vec::new(),
        mttr,
        coverage: Coverage::default(),
    };
    if opts.trace {
        println!("seed {seed}: {:?}", sim.cfg);
    }
    let mut held: Vec<(Permit<'_>, bool)> = Vec::new();
    let mut settled = true;
    for (i, step) in steps.iter().enumerate() {
        sim.step_no = i;
        sim.step = Some(step.clone());
        sim.progress.store(i as u64, SeqCst);
        let (step, settle) = match step {
            Step::Rushed(inner) => (&**inner, false),
            step => (step, true),
        };
        if settled {
            // From the last moment every task had run.
            sim.step_transitions.clear();
            sim.pre_step_state = sim.recovery.status().state;
            sim.pre_step_started = sim.world.action_started.load(SeqCst);
            sim.recovery_reset_in_window = false;
        }
        let line = format!(
            "#{i} {step:?} (up: {}, breaker {:?}, recovery {:?})",
            sim.up(),
            breaker.state(),
            sim.recovery.status().state
        );
        sim.log(line);
        let seen = sim.step_transitions.len();
        sim.exec(step, &breaker, &mut held).await;
        let probes = |held: &[(Permit<'_>, bool)]| {
            let generation = breaker.generation();
            held.iter()
                .filter(|(p, _)| p.is_probe() && p.generation() == generation)
                .count()
        };
        sim.check(false, probes(&held));
        if matches!(
            step,
            Step::Call | Step::CallApi | Step::Burst(_) | Step::Hold | Step::Finish(..)
        ) {
            // Nothing else ran since the call: if it closed the breaker,
            // the recovery has let go of the outage.
            if let Some(t) = sim.step_transitions[seen..].last() {
                let state = sim.recovery.status().state;
                sim.ensure(
                    !(t.to == State::Closed
                        && t.cause != Cause::Recovered
                        && matches!(state, RecoveryState::Recovering | RecoveryState::Exhausted)),
                    "breaker-close-ends-cycle",
                    || {
                        format!(
                            "the breaker closed ({}); the recovery is {state:?}",
                            t.cause
                        )
                    },
                );
            }
        }
        settled = settle;
        if settle {
            sim.settle().await;
        }
        sim.check(settled, probes(&held));
        if opts.trace {
            let status = sim.recovery.status();
            let line = format!(
                "    -> breaker {:?}; recovery {:?}, attempt {}, successes {}, failures {}, mttr {:?}; actions run {}",
                breaker.state(),
                status.state,
                status.attempt,
                status.recoveries,
                status.failed_attempts,
                status.mttr,
                sim.world.action_started.load(SeqCst),
            );
            sim.log(line);
        }
    }
    drop(held);
    sim.finish(steps.len()).await;
    let status = sim.recovery.status();
    let mut cov = std::mem::take(&mut sim.coverage);
    cov.seeds = 1;
    cov.seeds_exhausted = u64::from(status.exhausted_cycles > 0);
    cov.seeds_with_mttr = u64::from(status.mttr.is_some());
    cov.recoveries = status.recoveries;
    cov.failed_attempts = status.failed_attempts;
    cov.attempts_cut = sim.world.action_dropped.load(SeqCst);
    {
        let mut total = COVERAGE.lock().unwrap();
        let total = total.get_or_insert_with(Coverage::default);
        total.seeds += cov.seeds;
        for (k, v) in cov.transitions {
            *total.transitions.entry(k).or_default() += v;
        }
        total.seeds_exhausted += cov.seeds_exhausted;
        total.seeds_with_mttr += cov.seeds_with_mttr;
        total.recoveries += cov.recoveries;
        total.failed_attempts += cov.failed_attempts;
        total.attempts_cut += cov.attempts_cut;
        total.drains_with_cut_off += cov.drains_with_cut_off;
        total.drains_past_deadline += cov.drains_past_deadline;
        total.drains_with_finished += cov.drains_with_finished;
        total.reads_not_immediate += cov.reads_not_immediate;
    }
    let strict = sim.mttr.lock().unwrap().strict.clone();
    if let Some(s) = strict {
        if STRICT_MTTR_SEEDS.fetch_add(1, SeqCst) == 0
            || seed
                < STRICT_MTTR_FIRST
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map_or(u64::MAX, |f| f.0)
        {
            *STRICT_MTTR_FIRST.lock().unwrap() = Some((seed, s));
        }
    }
}

// ===== harness =====

/// Runs one schedule on a fresh paused runtime; a failure is the first
/// invariant broken (or any panic).
fn run_one(
    seed: u64,
    cfg: Config,
    steps: Vec<Step>,
    opts: Opts,
    progress: Arc<AtomicU64>,
) -> Result<(), Failure> {
    PANICS.with(|p| p.borrow_mut().clear());
    catch_unwind(AssertUnwindSafe(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_schedule(seed, cfg, steps, opts, progress));
    }))
    .map_err(failure_of)
}

/// Runs `run_one` on a thread of its own under the watchdog: a schedule
/// that takes longer than [`WATCHDOG`] in real time is a deadlock.
fn run_watched(seed: u64, cfg: Config, steps: Vec<Step>, opts: Opts) -> Result<(), Failure> {
    let progress = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let p = progress.clone();
    std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || {
            let _ = tx.send(run_one(seed, cfg, steps, opts, p));
        })
        .unwrap();
    match rx.recv_timeout(WATCHDOG) {
        Ok(result) => result,
        Err(_) => Err(Failure {
            tag: "no-deadlock".into(),
            step: progress.load(SeqCst) as usize,
            message: format!(
                "[no-deadlock] step {} of seed {seed}: no progress for {WATCHDOG:?} of real time",
                progress.load(SeqCst)
            ),
        }),
    }
}

/// Shrinks a failing schedule: drops chunks of steps (halving the chunk
/// size down to one step) while the same invariant still fails.
fn minimize(
    seed: u64,
    cfg: &Config,
    steps: Vec<Step>,
    tag: &str,
    opts: Opts,
) -> (Vec<Step>, Failure) {
    let opts = Opts {
        trace: false,
        ..opts
    };
    let fails = |steps: &[Step]| -> Option<Failure> {
        match run_watched(seed, cfg.clone(), steps.to_vec(), opts) {
            Err(f) if f.tag == tag => Some(f),
            _ => None,
        }
    };
    let mut best = steps;
    let mut failure = fails(&best).expect("the schedule fails");
    if failure.step < best.len() {
        best.truncate(failure.step + 1);
        failure = fails(&best).unwrap_or(failure);
    }
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut removed = false;
        while i < best.len() {
            let mut candidate = best.clone();
            candidate.drain(i..(i + chunk).min(best.len()));
            if let Some(f) = fails(&candidate) {
                eprintln!("minimize: {} steps ({tag})", candidate.len());
                best = candidate;
                failure = f;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !removed {
            break;
        }
        if chunk > 1 {
            chunk = chunk.div_ceil(2);
        }
    }
    (best, failure)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let sim_thread = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("sim-"));
        if sim_thread {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if !text.starts_with('[') {
                // A panic of the crate or of a task: recorded, and reported
                // by the scenario (tasks' panics are caught by tokio).
                PANICS.with(|p| {
                    p.borrow_mut()
                        .push(format!("{text} at {:?}", info.location()))
                });
            }
            if std::env::var_os("SIM_VERBOSE").is_some() {
                default(info);
            }
            return;
        }
        default(info);
    }));
}

#[test]
fn simulation() {
    install_panic_hook();
    let opts = Opts {
        trace: false,
        strict_mttr: std::env::var_os("SIM_STRICT_MTTR").is_some(),
        skip: Skip::from_env(),
    };
    let started = std::time::Instant::now();

    if let Some(seed) = env_u64("SIM_SEED") {
        let (cfg, steps) = plan(seed);
        let opts = Opts {
            trace: true,
            ..opts
        };
        let result = run_watched(seed, cfg.clone(), steps.clone(), opts);
        if let Err(failure) = result {
            if std::env::var_os("SIM_MINIMIZE").is_some() {
                let (min, f) = minimize(seed, &cfg, steps, &failure.tag, opts);
                println!(
                    "\nminimal schedule for seed {seed} ({} steps), config {cfg:?}:",
                    min.len()
                );
                for (i, s) in min.iter().enumerate() {
                    println!("  {i:>3}: {s:?}");
                }
                println!("fails with: {}", f.message);
                println!("\ntrace of the minimal schedule:");
                let _ = run_watched(
                    seed,
                    cfg.clone(),
                    min,
                    Opts {
                        trace: true,
                        ..opts
                    },
                );
            }
            panic!("seed {seed} failed:\n{}", failure.message);
        }
        println!("seed {seed} passed in {:?}", started.elapsed());
        return;
    }

    let count = env_u64("SIM_SEEDS").unwrap_or(2_000);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let threads = env_u64("SIM_THREADS").unwrap_or(2).max(1) as usize;
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let (tx, rx) = mpsc::channel::<(u64, Result<(), Failure>)>();
    // Per worker: the seed it runs and the step it is at, for the watchdog.
    let progress: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)> = (0..threads)
        .map(|_| {
            (
                Arc::new(AtomicU64::new(u64::MAX)),
                Arc::new(AtomicU64::new(0)),
            )
        })
        .collect();
    for (w, (seed_slot, step_slot)) in progress.iter().enumerate() {
        let (next, tx) = (next.clone(), tx.clone());
        let (seed_slot, step_slot) = (seed_slot.clone(), step_slot.clone());
        std::thread::Builder::new()
            .name(format!("sim-worker-{w}"))
            .spawn(move || {
                loop {
                    let seed = next.fetch_add(1, SeqCst);
                    if seed >= end {
                        return;
                    }
                    step_slot.store(0, SeqCst);
                    seed_slot.store(seed, SeqCst);
                    let (cfg, steps) = plan(seed);
                    let result = run_one(seed, cfg, steps, opts, step_slot.clone());
                    if tx.send((seed, result)).is_err() {
                        return;
                    }
                }
            })
            .unwrap();
    }
    drop(tx);

    let mut failures: Vec<(u64, Failure)> = Vec::new();
    let mut done = 0;
    while done < count {
        match rx.recv_timeout(WATCHDOG) {
            Ok((seed, result)) => {
                done += 1;
                if let Err(f) = result {
                    failures.push((seed, f));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let running: Vec<String> = progress
                    .iter()
                    .map(|(seed, step)| {
                        format!("seed {} at step {}", seed.load(SeqCst), step.load(SeqCst))
                    })
                    .collect();
                panic!(
                    "[no-deadlock] no seed finished for {WATCHDOG:?} of real time; in progress: {running:?} \
                     (replay with SIM_SEED=<n>)"
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = started.elapsed();
    failures.sort_by_key(|(seed, _)| *seed);
    let strict = STRICT_MTTR_SEEDS.load(SeqCst);
    println!(
        "simulation: {done} seeds from {first} in {elapsed:?} on {threads} threads; {} failed; \
         strict MTTR bound (longest true outage) exceeded in {strict} seeds{}",
        failures.len(),
        STRICT_MTTR_FIRST
            .lock()
            .unwrap()
            .as_ref()
            .map(|(s, m)| format!(", e.g. seed {s}: {m}"))
            .unwrap_or_default()
    );
    if let Some(cov) = COVERAGE.lock().unwrap().as_ref() {
        println!("coverage: {cov:#?}");
    }
    for (tag, seeds) in SKIPPED.lock().unwrap().iter() {
        println!(
            "skipped invariant {tag} broken in {} seeds, e.g. {:?}",
            seeds.len(),
            &seeds[..seeds.len().min(10)]
        );
    }
    assert_eq!(done, count, "worker threads ended early");
    if !failures.is_empty() {
        let mut by_tag: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for (seed, f) in &failures {
            by_tag.entry(&f.tag).or_default().push(*seed);
        }
        let mut text = String::from("invariants broken:\n");
        for (tag, seeds) in &by_tag {
            text.push_str(&format!(
                "  {tag}: {} seeds, e.g. {:?}\n",
                seeds.len(),
                &seeds[..seeds.len().min(10)]
            ));
        }
        for (tag, seeds) in &by_tag {
            let f = &failures.iter().find(|(s, _)| *s == seeds[0]).unwrap().1;
            text.push_str(&format!("\nfirst failure of {tag}:\n{}\n", f.message));
        }
        panic!("{text}");
    }
}
