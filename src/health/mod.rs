//! Health: checks, the set of dependencies, the startup gate, and a monitor
//! with history.
//!
//! # Why
//!
//! A service that starts while its database is still booting fails its first
//! requests and, under an orchestrator, is restarted in a loop. A service
//! that only knows "up right now" cannot tell an operator that the model
//! server has flapped all night. This module lets a service refuse to start
//! half-broken and keeps, per dependency, how it has behaved over time.
//!
//! # Shape
//!
//! - A [`HealthCheck`] is an async probe giving pass / warn / fail, an
//!   observed value (latency in ms by default) and output text. It always runs
//!   under a timeout: a hang is a failure.
//! - A [`Reliability`] is the one explicit set of named dependencies, each a
//!   check, required or optional, and optionally its breaker and recovery.
//!   Duplicate names are an error when it is built. The startup gate, the
//!   monitor and the admin router all read it; a request never passes through
//!   it.
//! - [`Reliability::wait_for_dependencies`] is the startup gate. Its timeout
//!   is a bound: a round of checks still running then is cut, its unfinished
//!   checks reported as timed out.
//! - [`Monitor`] checks every dependency on an interval, keeps a bounded
//!   history, and feeds the recoveries.
//! - [`Reliability::report`] is the data the admin router serves. It holds
//!   no lock while it asks breakers and recoveries for their state.
//!
//! ```
//! use std::time::Duration;
//! use tower_recovery::health::{Dependency, HealthCheck, HealthStatus, Monitor, Reliability};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let reliability = Reliability::builder()
//!     .dependency(Dependency::new("database", HealthCheck::new(|| async { Ok::<_, String>(()) })))
//!     .dependency(
//!         Dependency::new("asr_ocr_server", HealthCheck::new(|| async { Err::<(), _>("refused") }))
//!             .optional(),
//!     )
//!     .build()
//!     .unwrap();
//!
//! // Startup: wait for the required dependencies (the optional one is down).
//! reliability
//!     .wait_for_dependencies(Duration::from_secs(5), Duration::from_secs(300))
//!     .await
//!     .unwrap();
//! assert!(reliability.is_started());
//!
//! let monitor = Monitor::start(&reliability, Duration::from_secs(30));
//! tokio::time::sleep(Duration::from_secs(61)).await;
//! let report = reliability.report();
//! assert_eq!(report.status, HealthStatus::Warn, "an optional dependency fails");
//! assert_eq!(report.dependencies[0].checks, 3);
//! monitor.stop().await;
//! # }
//! ```
//!
//! # Aggregation
//!
//! Any required dependency failing -> `fail`; any optional one failing, or
//! any breaker not closed -> `warn`; else `pass`. A dependency not checked yet
//! counts as `warn`. With the `chaos` feature, a rehearsal active on a
//! handle added with [`Builder::chaos`] makes it at least `warn` too: the
//! failures seen then may be injected, and whoever reads the status should
//! be told (never `fail`: a rehearsal alone does not make the service
//! unhealthy; its injected failures do, where they reach a check).

mod check;
mod monitor;
mod startup;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::check::{CheckResult, HealthCheck, HealthStatus, MAX_OUTPUT_LEN};
pub use self::monitor::Monitor;
pub use self::startup::{StartupError, StartupReport};

#[cfg(feature = "circuit-breaker")]
use crate::circuit_breaker::{Breaker, Snapshot, State};
#[cfg(feature = "recovery")]
use crate::recovery::{Recovery, Status};

/// One named dependency: its check, whether it is required, and what
/// belongs to it.
#[derive(Clone, Debug)]
pub struct Dependency {
    name: Arc<str>,
    check: HealthCheck,
    required: bool,
    timeout: Duration,
    /// While down: the monitor's first and longest interval.
    probe_while_down: Option<(Duration, Duration)>,
    /// Dependencies this one needs to work.
    needs: Vec<Arc<str>>,
    #[cfg(feature = "circuit-breaker")]
    breaker: Option<Breaker>,
    #[cfg(feature = "recovery")]
    recovery: Option<Recovery>,
    #[cfg(feature = "recovery")]
    early_warning: Option<crate::recovery::EarlyWarning>,
}

impl Dependency {
    /// A required dependency checked by `check` (timeout 5 s).
    pub fn new(name: impl Into<Arc<str>>, check: HealthCheck) -> Self {
        Self {
            name: name.into(),
            check,
            required: true,
            timeout: Duration::from_secs(5),
            probe_while_down: Some((Duration::from_secs(1), Duration::from_secs(5))),
            needs: Vec::new(),
            #[cfg(feature = "circuit-breaker")]
            breaker: None,
            #[cfg(feature = "recovery")]
            recovery: None,
            #[cfg(feature = "recovery")]
            early_warning: None,
        }
    }

    /// Optional: never blocks startup; failing makes the aggregate `warn`.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Required (the default): blocks startup; failing makes it `fail`.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// How long a check may take before it counts as failed (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// While the dependency is down (its last check failed, or its breaker
    /// is open or half-open), the [`Monitor`] checks it after `first`, then
    /// twice as long each time up to `max` (never longer than its own
    /// interval), instead of waiting out the monitor's interval. Default 1 s
    /// doubling to 5 s: a dependency that comes back is seen within 5 s.
    ///
    /// # Panics
    /// If `first` is zero or `max < first`.
    pub fn probe_while_down(mut self, first: Duration, max: Duration) -> Self {
        assert!(
            !first.is_zero() && max >= first,
            "probe_while_down needs 0 < first <= max"
        );
        self.probe_while_down = Some((first, max));
        self
    }

    /// Declares that this dependency needs `prerequisite` (another
    /// dependency of the same set) to work: the model server needs its
    /// storage. Then, while `prerequisite` is down (its last check failed,
    /// its breaker is open or half-open, or its recovery is running or
    /// exhausted), this dependency's recovery attempts wait for it instead
    /// of failing against it, and trigger its recovery (N dependents, one
    /// trigger: triggers coalesce); they go on when it is back. Reports name
    /// the root cause ([`DependencyReport::root_cause`],
    /// [`Status::waiting_for`](crate::recovery::Status::waiting_for)). The
    /// set refuses unknown names and cycles when it is built. The recovery
    /// holds the set weakly: once every handle of the set is dropped, its
    /// prerequisites no longer apply.
    pub fn needs(mut self, prerequisite: impl Into<Arc<str>>) -> Self {
        self.needs.push(prerequisite.into());
        self
    }

    /// What [`needs`](Self::needs) declared.
    pub fn prerequisites(&self) -> &[Arc<str>] {
        &self.needs
    }

    /// Checks the dependency on the monitor's interval whether it is up or
    /// down (the seed's behaviour).
    pub fn no_probe_while_down(mut self) -> Self {
        self.probe_while_down = None;
        self
    }

    /// The breaker guarding this dependency (reported, and reset by the
    /// admin router). A monitor check that passes while it is open lets it
    /// probe at once ([`Breaker::probe_now`]).
    #[cfg(feature = "circuit-breaker")]
    pub fn breaker(mut self, breaker: &Breaker) -> Self {
        self.breaker = Some(breaker.clone());
        self
    }

    /// The recovery of this dependency: a failing monitor check triggers it,
    /// a passing one ends its cycle or exhaustion.
    #[cfg(feature = "recovery")]
    pub fn recovery(mut self, recovery: &Recovery) -> Self {
        self.recovery = Some(recovery.clone());
        self
    }

    /// Its early warning: while degraded, the dependency reports `warn`
    /// (and `/health` and `/reliability` say why).
    #[cfg(feature = "recovery")]
    pub fn early_warning(mut self, warning: &crate::recovery::EarlyWarning) -> Self {
        self.early_warning = Some(warning.clone());
        self
    }

    /// The breaker that belongs to it.
    #[cfg(feature = "circuit-breaker")]
    pub fn breaker_handle(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// The recovery that belongs to it.
    #[cfg(feature = "recovery")]
    pub fn recovery_handle(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it blocks startup.
    pub fn is_required(&self) -> bool {
        self.required
    }
}

/// The error of [`Builder::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// Two dependencies share a name.
    DuplicateName(String),
    /// A history of zero results keeps nothing.
    ZeroHistory,
    /// A dependency needs one the set does not have.
    UnknownPrerequisite {
        /// The dependency that declared it.
        dependency: String,
        /// The name it needs.
        needs: String,
    },
    /// Dependencies need each other in a cycle (listed in order, the first
    /// repeated at the end): none could recover first.
    Cycle(Vec<String>),
    /// Two chaos handles added with [`Builder::chaos`] share a name (or
    /// one was added twice): reports list them by name.
    DuplicateChaos(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::DuplicateName(name) => write!(f, "dependency name {name:?} is used twice"),
            BuildError::ZeroHistory => f.write_str("history size must be at least 1"),
            BuildError::UnknownPrerequisite { dependency, needs } => write!(
                f,
                "dependency {dependency:?} needs {needs:?}, which is not in the set"
            ),
            BuildError::Cycle(path) => write!(
                f,
                "dependencies need each other in a cycle: {}",
                path.join(" -> ")
            ),
            BuildError::DuplicateChaos(name) => {
                write!(f, "chaos handle name {name:?} is added twice")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds a [`Reliability`].
#[derive(Debug, Default)]
pub struct Builder {
    deps: Vec<Dependency>,
    history: Option<usize>,
    #[cfg(feature = "circuit-breaker")]
    keyed: Vec<Arc<dyn crate::circuit_breaker::keyed::View>>,
    #[cfg(feature = "chaos")]
    chaos: Vec<crate::chaos::Chaos>,
}

impl Builder {
    /// Adds a dependency.
    pub fn dependency(mut self, dependency: Dependency) -> Self {
        self.deps.push(dependency);
        self
    }

    /// Adds a keyed registry, reported (totals by state, the keys not
    /// closed) by [`Reliability::keyed`] and `/reliability`. Its keys do not
    /// change the aggregate status: one upstream or tenant of many failing
    /// is what a keyed breaker isolates, not a fault of this service.
    #[cfg(feature = "circuit-breaker")]
    pub fn keyed<K: crate::circuit_breaker::keyed::Key>(
        mut self,
        keyed: &crate::circuit_breaker::keyed::KeyedBreaker<K>,
    ) -> Self {
        self.keyed.push(Arc::new(keyed.clone()));
        self
    }

    /// Adds a chaos handle, reported by [`Reliability::report`] (in
    /// [`HealthReport::chaos`]), `/health` and `/reliability`, so that
    /// whoever looks there during a rehearsal sees that failures are
    /// injected. While its rehearsal is active the aggregate status is at
    /// least `warn`. [`Reliability::chaos_handles`] gives them back, for
    /// `Admin::chaos_router`. The set only reads the handle: it never
    /// starts or stops it.
    #[cfg(feature = "chaos")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
    pub fn chaos(mut self, chaos: &crate::chaos::Chaos) -> Self {
        self.chaos.push(chaos.clone());
        self
    }

    /// Results kept per dependency (default 100).
    pub fn history_size(mut self, size: usize) -> Self {
        self.history = Some(size);
        self
    }

    /// Builds the set; fails on a duplicate name or a zero history.
    pub fn build(self) -> Result<Reliability, BuildError> {
        let history = self.history.unwrap_or(100);
        if history == 0 {
            return Err(BuildError::ZeroHistory);
        }
        let mut names = std::collections::HashSet::new();
        for dep in &self.deps {
            if !names.insert(dep.name.clone()) {
                return Err(BuildError::DuplicateName(dep.name.to_string()));
            }
        }
        #[cfg(feature = "chaos")]
        {
            let mut names = std::collections::HashSet::new();
            for chaos in &self.chaos {
                if !names.insert(chaos.name()) {
                    return Err(BuildError::DuplicateChaos(chaos.name().to_string()));
                }
            }
        }
        let needs = prerequisite_indices(&self.deps)?;
        let reliability = Reliability {
            inner: Arc::new(Inner {
                entries: self
                    .deps
                    .into_iter()
                    .map(|dep| Entry {
                        dep,
                        state: Mutex::new(DepState::new(history)),
                    })
                    .collect(),
                needs,
                history,
                started: AtomicBool::new(false),
                started_notify: Notify::new(),
                monitor: Mutex::new(None),
                #[cfg(feature = "circuit-breaker")]
                keyed: self.keyed,
                #[cfg(feature = "chaos")]
                chaos: self.chaos,
            }),
        };
        #[cfg(feature = "recovery")]
        reliability.gate_recoveries();
        Ok(reliability)
    }
}

/// Each dependency's prerequisites as indices; refuses unknown names and
/// cycles.
fn prerequisite_indices(deps: &[Dependency]) -> Result<Vec<Vec<usize>>, BuildError> {
    let index = |name: &str| deps.iter().position(|d| &*d.name == name);
    let needs = deps
        .iter()
        .map(|dep| {
            dep.needs
                .iter()
                .map(|p| {
                    index(p).ok_or_else(|| BuildError::UnknownPrerequisite {
                        dependency: dep.name.to_string(),
                        needs: p.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Depth-first, colouring: 0 unseen, 1 on the path, 2 done.
    fn visit(
        at: usize,
        needs: &[Vec<usize>],
        colour: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        colour[at] = 1;
        path.push(at);
        for &next in &needs[at] {
            if colour[next] == 1 {
                let start = path.iter().position(|&p| p == next).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(next);
                return Some(cycle);
            }
            if colour[next] == 0 {
                if let Some(cycle) = visit(next, needs, colour, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        colour[at] = 2;
        None
    }
    let mut colour = vec![0u8; deps.len()];
    for start in 0..deps.len() {
        if colour[start] == 0 {
            if let Some(cycle) = visit(start, &needs, &mut colour, &mut Vec::new()) {
                return Err(BuildError::Cycle(
                    cycle.iter().map(|&i| deps[i].name.to_string()).collect(),
                ));
            }
        }
    }
    Ok(needs)
}

/// One recorded result, as small as the history needs.
#[derive(Clone, Copy, Debug)]
struct Sample {
    up: bool,
}

#[derive(Debug)]
struct DepState {
    history: VecDeque<Sample>,
    last: Option<CheckResult>,
    checks: u64,
    consecutive_failures: u32,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    last_up: bool,
    up: Duration,
    /// The start of the first check: slots are counted from it.
    sampled_from: Option<Instant>,
    /// The slot of the last history sample.
    sampled_slot: Option<u128>,
}

impl DepState {
    fn new(history: usize) -> Self {
        Self {
            history: VecDeque::with_capacity(history),
            last: None,
            checks: 0,
            consecutive_failures: 0,
            first_at: None,
            last_at: None,
            last_up: false,
            up: Duration::ZERO,
            sampled_from: None,
            sampled_slot: None,
        }
    }

    fn availability(&self, now: Instant) -> Option<f64> {
        let first = self.first_at?;
        let last = self.last_at?;
        let up = self.up
            + if self.last_up {
                now.saturating_duration_since(last)
            } else {
                Duration::ZERO
            };
        let total = now.saturating_duration_since(first);
        Some(if total.is_zero() {
            if self.last_up { 100.0 } else { 0.0 }
        } else {
            up.as_secs_f64() / total.as_secs_f64() * 100.0
        })
    }

    fn uptime(&self) -> Option<f64> {
        (!self.history.is_empty()).then(|| {
            self.history.iter().filter(|s| s.up).count() as f64 / self.history.len() as f64 * 100.0
        })
    }
}

#[derive(Debug)]
struct Entry {
    dep: Dependency,
    state: Mutex<DepState>,
}

#[derive(Clone, Copy, Debug)]
struct MonitorInfo {
    interval: Duration,
    running: bool,
}

#[derive(Debug)]
struct Inner {
    entries: Vec<Entry>,
    /// Each entry's prerequisites (indices; acyclic).
    needs: Vec<Vec<usize>>,
    history: usize,
    started: AtomicBool,
    started_notify: Notify,
    monitor: Mutex<Option<MonitorInfo>>,
    #[cfg(feature = "circuit-breaker")]
    keyed: Vec<Arc<dyn crate::circuit_breaker::keyed::View>>,
    #[cfg(feature = "chaos")]
    chaos: Vec<crate::chaos::Chaos>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The application's set of named dependencies. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reliability {
    inner: Arc<Inner>,
}

impl Reliability {
    /// Starts a set.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The dependencies, in the order they were added.
    pub fn dependencies(&self) -> impl Iterator<Item = &Dependency> {
        self.inner.entries.iter().map(|e| &e.dep)
    }

    /// The dependency called `name`.
    pub fn get(&self, name: &str) -> Option<&Dependency> {
        self.dependencies().find(|d| &*d.name == name)
    }

    /// The keyed registries added with [`Builder::keyed`], summed up:
    /// totals by state and at most `max_listed` keys not closed each.
    #[cfg(feature = "circuit-breaker")]
    pub fn keyed(&self, max_listed: usize) -> Vec<crate::circuit_breaker::keyed::Summary> {
        self.inner
            .keyed
            .iter()
            .map(|keyed| call_out(|| keyed.summary(max_listed)))
            .collect()
    }

    /// The chaos handles added with [`Builder::chaos`], in the order they
    /// were added: give them to `Admin::chaos_router` so that the handles
    /// switched over HTTP are the ones reported.
    #[cfg(feature = "chaos")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
    pub fn chaos_handles(&self) -> impl Iterator<Item = &crate::chaos::Chaos> {
        self.inner.chaos.iter()
    }

    /// Results kept per dependency.
    pub fn history_size(&self) -> usize {
        self.inner.history
    }

    /// Whether the startup gate has passed (readiness, before draining).
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// Marks startup done (the gate does it; for applications without one).
    pub fn mark_started(&self) {
        self.inner.started.store(true, Ordering::Release);
        self.inner.started_notify.notify_waiters();
    }

    /// Waits until startup is done.
    pub async fn wait_started(&self) {
        loop {
            let notified = self.inner.started_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_started() {
                return;
            }
            notified.await;
        }
    }

    /// Runs every check once, concurrently, recording the results as the
    /// last known status (not in the history). What the gate does per round.
    pub async fn check_all(&self) -> Vec<CheckResult> {
        let results = futures_util::future::join_all(
            self.inner
                .entries
                .iter()
                .map(|e| e.dep.check.run(e.dep.timeout)),
        )
        .await;
        for (entry, result) in self.inner.entries.iter().zip(&results) {
            lock(&entry.state).last = Some(result.clone());
        }
        results
    }

    /// Records a monitor result for the dependency at `index`.
    ///
    /// The history takes one sample per `slot` (the monitor's interval),
    /// slots counted from the first check's start: checks made more often
    /// while a dependency is down share their slot, and a failure in a slot
    /// stands, so a short outage is never erased by the pass after it.
    fn record(&self, index: usize, result: CheckResult, slot: Duration, started: Instant) {
        let entry = &self.inner.entries[index];
        let now = Instant::now();
        let up = result.status.is_up();
        let mut state = lock(&entry.state);
        let anchor = *state.sampled_from.get_or_insert(started);
        let n = started.saturating_duration_since(anchor).as_nanos() / slot.as_nanos().max(1);
        let same_slot = state.sampled_slot == Some(n);
        match state.history.back_mut() {
            Some(last) if same_slot => last.up &= up,
            _ => {
                if state.history.len() == self.inner.history {
                    state.history.pop_front();
                }
                state.history.push_back(Sample { up });
                state.sampled_slot = Some(n);
            }
        }
        if let Some(last_at) = state.last_at {
            if state.last_up {
                let since = now.saturating_duration_since(last_at);
                state.up += since;
            }
        } else {
            state.first_at = Some(now);
        }
        state.last_at = Some(now);
        state.last_up = up;
        state.checks += 1;
        state.consecutive_failures = if up {
            0
        } else {
            state.consecutive_failures + 1
        };
        state.last = Some(result);
    }

    fn set_monitor(&self, info: Option<MonitorInfo>) {
        *lock(&self.inner.monitor) = info;
    }

    /// The aggregate status of [`report`](Self::report): any required fail
    /// -> fail; any optional fail, check not run yet or warning, breaker
    /// not closed, or dependency degraded -> warn; with the `chaos`
    /// feature, a chaos handle added with [`Builder::chaos`] whose
    /// rehearsal is active -> warn at least (a rehearsal never makes it
    /// fail); else pass.
    pub fn status(&self) -> HealthStatus {
        self.report().status
    }

    /// Everything known about the dependencies, for reports.
    ///
    /// Each dependency's own state is copied under its lock; the lock is
    /// released before its breaker and recovery are asked for theirs, so no
    /// lock of this set is held while another component runs.
    pub fn report(&self) -> HealthReport {
        let now = Instant::now();
        let mut status = HealthStatus::Pass;
        let dependencies: Vec<_> = self
            .inner
            .entries
            .iter()
            .map(|entry| {
                let dep = &entry.dep;
                // Our own state first, under the lock, and nothing else.
                let (last, checks, consecutive_failures, uptime_percent, availability_percent) = {
                    let state = lock(&entry.state);
                    (
                        state.last.clone(),
                        state.checks,
                        state.consecutive_failures,
                        state.uptime(),
                        state.availability(now),
                    )
                };
                // Then the other components, with no lock held.
                let effective = match (last.as_ref().map(|r| r.status), dep.required) {
                    (Some(HealthStatus::Fail), true) => HealthStatus::Fail,
                    (Some(HealthStatus::Fail), false)
                    | (None, _)
                    | (Some(HealthStatus::Warn), _) => HealthStatus::Warn,
                    (Some(HealthStatus::Pass), _) => HealthStatus::Pass,
                };
                #[cfg(feature = "circuit-breaker")]
                let breaker = dep.breaker.as_ref().map(|b| call_out(|| b.snapshot()));
                #[cfg(feature = "circuit-breaker")]
                let effective = match &breaker {
                    Some(b) if b.state != State::Closed => effective.max(HealthStatus::Warn),
                    _ => effective,
                };
                #[cfg(feature = "recovery")]
                let degradation = dep.early_warning.as_ref().map(|w| call_out(|| w.status()));
                #[cfg(feature = "recovery")]
                let effective = match &degradation {
                    Some(d) if d.degraded => effective.max(HealthStatus::Warn),
                    _ => effective,
                };
                status = status.max(effective);
                DependencyReport {
                    name: dep.name.clone(),
                    required: dep.required,
                    needs: dep.needs.clone(),
                    root_cause: None,
                    last,
                    checks,
                    consecutive_failures,
                    uptime_percent,
                    availability_percent,
                    #[cfg(feature = "circuit-breaker")]
                    breaker,
                    #[cfg(feature = "recovery")]
                    recovery: dep.recovery.as_ref().map(|r| call_out(|| r.status())),
                    #[cfg(feature = "recovery")]
                    degradation,
                }
            })
            .collect();
        // Root causes from this one reading of every dependency.
        let mut dependencies = dependencies;
        let down: Vec<bool> = dependencies.iter().map(DependencyReport::is_down).collect();
        for index in 0..dependencies.len() {
            dependencies[index].root_cause = root_cause(&self.inner.needs, index, &mut |p| down[p])
                .map(|root| dependencies[root].name.clone());
        }
        // The chaos handles, with no lock of the set held; a rehearsal
        // active makes the aggregate `warn` at least.
        #[cfg(feature = "chaos")]
        let chaos: Vec<_> = self
            .inner
            .chaos
            .iter()
            .map(|c| call_out(|| c.snapshot()))
            .collect();
        #[cfg(feature = "chaos")]
        if chaos.iter().any(|c| c.active) {
            status = status.max(HealthStatus::Warn);
        }
        let monitor = *lock(&self.inner.monitor);
        HealthReport {
            status,
            started: self.is_started(),
            monitor_running: monitor.is_some_and(|m| m.running),
            monitor_interval: monitor.map(|m| m.interval),
            dependencies,
            #[cfg(feature = "chaos")]
            chaos,
        }
    }
}

#[cfg(feature = "recovery")]
impl Inner {
    /// Whether the dependency at `index` is down: its last check failed,
    /// its breaker is open or half-open, or its recovery is running or
    /// exhausted. Takes its own lock only to copy the last result, and
    /// asks the other components with no lock held.
    fn is_down(&self, index: usize) -> bool {
        let entry = &self.entries[index];
        let last = lock(&entry.state).last.as_ref().map(|r| r.status.is_up());
        #[cfg(feature = "circuit-breaker")]
        let breaker = entry.dep.breaker.as_ref().map(|b| call_out(|| b.state()));
        #[cfg(not(feature = "circuit-breaker"))]
        let breaker = None;
        let recovery = entry
            .dep
            .recovery
            .as_ref()
            .map(|r| call_out(|| r.status().state));
        down_by(last, breaker, recovery)
    }
}

/// The deepest prerequisite of `index` that is down, following only
/// prerequisites that are down: the root cause.
fn root_cause(
    needs: &[Vec<usize>],
    index: usize,
    down: &mut dyn FnMut(usize) -> bool,
) -> Option<usize> {
    for &p in &needs[index] {
        if down(p) {
            return Some(root_cause(needs, p, down).unwrap_or(p));
        }
    }
    None
}

#[cfg(feature = "recovery")]
impl Reliability {
    /// Makes each recovery of a dependency with prerequisites wait for them
    /// (see [`Dependency::needs`]). The gate holds the set weakly: the
    /// recovery keeps nothing of it alive.
    fn gate_recoveries(&self) {
        for (index, entry) in self.inner.entries.iter().enumerate() {
            let Some(recovery) = &entry.dep.recovery else {
                continue;
            };
            if self.inner.needs[index].is_empty() {
                continue;
            }
            let set = Arc::downgrade(&self.inner);
            let gate = Box::new(move || {
                let inner = set.upgrade()?;
                let root = root_cause(&inner.needs, index, &mut |p| inner.is_down(p))?;
                let dep = &inner.entries[root].dep;
                Some(crate::recovery::Blocker {
                    name: dep.name.clone(),
                    recovery: dep.recovery.clone(),
                })
            });
            if !recovery.set_gate(gate) {
                tracing::warn!(
                    dependency = &*entry.dep.name,
                    "its recovery already waits for the prerequisites of another set; \
                     this set's are not applied"
                );
            }
        }
    }
}

/// Calls another component (a breaker, a recovery, a chaos handle). No
/// lock of this module may be held then; the unit tests check it here.
#[cfg(any(feature = "circuit-breaker", feature = "recovery", feature = "chaos"))]
#[inline]
fn call_out<T>(call: impl FnOnce() -> T) -> T {
    #[cfg(all(test, feature = "circuit-breaker", feature = "recovery"))]
    tests::calling_out();
    call()
}

/// What [`Reliability::report`] knows about one dependency.
#[derive(Clone, Debug, PartialEq)]
pub struct DependencyReport {
    /// Its name.
    pub name: Arc<str>,
    /// Whether it blocks startup.
    pub required: bool,
    /// The dependencies it needs ([`Dependency::needs`]).
    pub needs: Vec<Arc<str>>,
    /// When a dependency it needs is down: the deepest one down along
    /// its prerequisites, the root cause of its trouble.
    pub root_cause: Option<Arc<str>>,
    /// The last check result (gate or monitor).
    pub last: Option<CheckResult>,
    /// Monitor checks run.
    pub checks: u64,
    /// Monitor checks failed in a row.
    pub consecutive_failures: u32,
    /// Share of `pass`/`warn` results in the history, in percent.
    pub uptime_percent: Option<f64>,
    /// Time-weighted share of time up since the first monitor check, in
    /// percent (each result stands until the next).
    pub availability_percent: Option<f64>,
    /// The breaker's snapshot, if one belongs to it.
    #[cfg(feature = "circuit-breaker")]
    pub breaker: Option<Snapshot>,
    /// The recovery's status, if one belongs to it.
    #[cfg(feature = "recovery")]
    pub recovery: Option<Status>,
    /// Its early warning's reading, if one belongs to it.
    #[cfg(feature = "recovery")]
    pub degradation: Option<crate::recovery::Degradation>,
}

impl DependencyReport {
    /// Down by this reading: its last check failed, its breaker is open,
    /// or its recovery is running. A half-open breaker or an exhausted
    /// recovery counts only when the last check did not pass (a dependency
    /// that answers its check is not held down by a breaker waiting for
    /// traffic, or a recovery waiting for a person).
    pub fn is_down(&self) -> bool {
        let last = self.last.as_ref().map(|r| r.status.is_up());
        #[cfg(feature = "circuit-breaker")]
        let breaker = self.breaker.as_ref().map(|b| b.state);
        #[cfg(not(feature = "circuit-breaker"))]
        let breaker = None;
        #[cfg(feature = "recovery")]
        let recovery = self.recovery.as_ref().map(|r| r.state);
        #[cfg(not(feature = "recovery"))]
        let recovery = None;
        down_by(last, breaker, recovery)
    }
}

/// The breaker's state, where one can be known.
#[cfg(feature = "circuit-breaker")]
type BreakerState = State;
#[cfg(not(feature = "circuit-breaker"))]
type BreakerState = std::convert::Infallible;

/// The recovery's state, where one can be known.
#[cfg(feature = "recovery")]
type RecoveryStateOf = crate::recovery::RecoveryState;
#[cfg(not(feature = "recovery"))]
type RecoveryStateOf = std::convert::Infallible;

/// Down, from the last check (`Some(up)`), the breaker's state and the
/// recovery's state (see [`DependencyReport::is_down`]).
#[allow(unused_variables)]
fn down_by(
    last_up: Option<bool>,
    breaker: Option<BreakerState>,
    recovery: Option<RecoveryStateOf>,
) -> bool {
    if last_up == Some(false) {
        return true;
    }
    let passed = last_up == Some(true);
    #[cfg(feature = "circuit-breaker")]
    match breaker {
        Some(State::Open) => return true,
        Some(State::HalfOpen) if !passed => return true,
        _ => {}
    }
    #[cfg(feature = "recovery")]
    {
        use crate::recovery::RecoveryState;
        match recovery {
            Some(RecoveryState::Recovering) => return true,
            Some(RecoveryState::Exhausted) if !passed => return true,
            _ => {}
        }
    }
    false
}

/// The data model of `/health` and `/reliability`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReport {
    /// The aggregate.
    pub status: HealthStatus,
    /// Whether the startup gate has passed.
    pub started: bool,
    /// Whether a monitor is running.
    pub monitor_running: bool,
    /// The monitor's interval, if one was started.
    pub monitor_interval: Option<Duration>,
    /// Per dependency, in the order they were added.
    pub dependencies: Vec<DependencyReport>,
    /// Per chaos handle added with [`Builder::chaos`], in the order they
    /// were added: whether its rehearsal is active, what it injects and
    /// what it has injected.
    #[cfg(feature = "chaos")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
    pub chaos: Vec<crate::chaos::Snapshot>,
}

#[cfg(all(test, feature = "circuit-breaker", feature = "recovery"))]
mod tests {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    thread_local! {
        static ON_CALL_OUT: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
    }

    pub(super) fn calling_out() {
        ON_CALL_OUT.with(|hook| {
            if let Some(hook) = &*hook.borrow() {
                hook();
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn report_holds_no_lock_while_asking_breakers_and_recoveries() {
        let breaker = Breaker::new("db");
        let recovery = Recovery::builder("db", || async { Ok::<(), String>(()) }).spawn();
        let set = Reliability::builder().dependency(
            Dependency::new("db", HealthCheck::new(|| async { Ok::<(), String>(()) }))
                .breaker(&breaker)
                .recovery(&recovery),
        );
        #[cfg(feature = "chaos")]
        let set = set.chaos(&crate::chaos::Chaos::new("db"));
        let set = set.build().unwrap();
        set.check_all().await;
        let calls = Arc::new(AtomicU32::new(0));
        let held = Arc::new(AtomicU32::new(0));
        let (probe, c, h) = (set.clone(), calls.clone(), held.clone());
        ON_CALL_OUT.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                // On this thread: a lock held by the caller would be busy.
                let busy = probe
                    .inner
                    .entries
                    .iter()
                    .any(|e| e.state.try_lock().is_err())
                    || probe.inner.monitor.try_lock().is_err();
                if busy {
                    h.fetch_add(1, Ordering::SeqCst);
                }
            }))
        });
        let report = set.report();
        ON_CALL_OUT.with(|hook| hook.borrow_mut().take());
        assert!(report.dependencies[0].breaker.is_some());
        assert!(report.dependencies[0].recovery.is_some());
        #[cfg(feature = "chaos")]
        assert_eq!(report.chaos.len(), 1);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 + u32::from(cfg!(feature = "chaos")),
            "the breaker, the recovery (and the chaos handle) were asked"
        );
        assert_eq!(
            held.load(Ordering::SeqCst),
            0,
            "a lock of the set was held while another component was called"
        );
    }
}
