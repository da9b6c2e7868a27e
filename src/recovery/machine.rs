//! The recovery's rules as a pure state machine.
//!
//! [`Machine::on`] takes an [`Event`] and the time it happened, changes the
//! machine's state and returns what the event became ([`Reply`]) and the
//! [`Effect`]s to carry out. It runs no action, reads no clock, calls no
//! other component and logs nothing: the task loop (`task.rs`) and the
//! handle do all of that after the machine's lock is released. So every rule
//! of the module docs is a property of this file alone, tested exhaustively
//! over event sequences in `tests.rs`.
//!
//! One outage is one recovery: an outage starts at the first sign that the
//! dependency is down (an automatic trigger, a failing check, the breaker
//! opening) and ends at the first sign it is back (our cycle succeeded, the
//! breaker closed by another path, a check passed while the breaker is not
//! open). Only its end records a success and an MTTR sample, so a sample can
//! neither be counted twice nor outlive its outage.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{RecoveryState, TriggerOutcome};

/// How many recent recoveries the MTTR is averaged over.
pub(crate) const MTTR_SAMPLES: usize = 20;

/// Who asked for a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A person (the admin endpoint): bypasses the cooldown, leaves
    /// `exhausted`.
    Manual,
    /// The breaker, the monitor or the layer.
    Automatic,
    /// An early warning: the dependency is degraded, not down. Runs a
    /// cycle when idle, and otherwise nothing; starts no outage.
    Early,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event {
    /// A trigger.
    Trigger(Kind),
    /// A health check result.
    Check { passed: bool },
    /// A call through the layer succeeded after the layer had triggered:
    /// the dependency answers again.
    CallSucceeded,
    /// The watched breaker opened (Closed or HalfOpen to Open); the outage
    /// it belongs to began `at`.
    BreakerOpened { at: Instant },
    /// The watched breaker closed by another path than our own close, `at`.
    BreakerHealed { at: Instant },
    /// The watched breaker's current state: down (open, half-open) or not.
    BreakerState { down: bool },
    /// Our close (after a successful attempt) closed the breaker: whatever
    /// opened it again since that success was part of the outage recorded.
    ClosedByUs,
    /// An attempt of cycle `cycle` is starting (its backoff delay is over).
    AttemptStarted { cycle: u64, attempt: u32 },
    /// An attempt of cycle `cycle` finished.
    AttemptDone {
        cycle: u64,
        attempt: u32,
        result: Result<(), String>,
    },
    /// Cycle `cycle`, waiting at attempt `attempt` for another replica of
    /// its fleet, ended there: the other replica's cycle recovered the
    /// dependency, or gave up (`error`). The breaker is not closed (each
    /// replica probes its own) and nothing alerts (the other replica did).
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    EndedElsewhere {
        cycle: u64,
        attempt: u32,
        result: Result<(), String>,
    },
    /// [`Recovery::reset`](super::Recovery::reset).
    Reset,
    /// Time passed (the cooldown may have ended).
    Tick,
}

/// What the machine asks to be done.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Effect {
    /// Run attempt `attempt` of `cycle`, after the backoff delay when
    /// `attempt >= 2`.
    Attempt { cycle: u64, attempt: u32 },
    /// Stop the running attempt or backoff wait, if any.
    Cancel,
    /// Close the watched breaker (it is not closed if ForcedOpen/Disabled).
    CloseBreaker,
    /// Call the exhaustion alert once.
    Alert,
    /// An outage ended after lasting this long (for metrics).
    Outage(Duration),
    /// A line for the log.
    Log(Log),
}

/// The log lines, rendered by the caller outside the lock.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Log {
    Opened,
    Started {
        reason: Reason,
    },
    Attempt {
        attempt: u32,
    },
    AttemptFailed {
        attempt: u32,
        error: String,
    },
    Succeeded,
    /// The fleet's cycle, run by another replica, succeeded or gave up.
    EndedElsewhere {
        recovered: bool,
    },
    /// A cycle ended exhausted; `retry_in` when another cycle will follow
    /// by itself (adaptive), `alert` when this exhaustion alerts.
    Exhausted {
        retry_in: Option<Duration>,
        alert: bool,
    },
    Healed {
        was: RecoveryState,
        how: Reason,
    },
    DeferredDropped,
}

/// Why a cycle started or an outage ended, for the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Manual,
    Automatic,
    CheckFailed,
    CheckPassedBreakerOpen,
    BreakerOpened,
    BreakerHealed,
    CheckPassed,
    CallSucceeded,
    Deferred,
    RetryAfterExhaustion,
    Degraded,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Manual => "manual trigger",
            Reason::Automatic => "automatic trigger",
            Reason::CheckFailed => "health check failed",
            Reason::CheckPassedBreakerOpen => "health check passed while the breaker is open",
            Reason::BreakerOpened => "circuit breaker opened",
            Reason::BreakerHealed => "circuit breaker closed",
            Reason::CheckPassed => "health check passed",
            Reason::CallSucceeded => "a call succeeded",
            Reason::Deferred => "deferred trigger, dependency still down",
            Reason::RetryAfterExhaustion => "retry after an exhausted cycle, dependency still down",
            Reason::Degraded => "degraded (an early warning)",
        }
    }
}

/// The reply to an event: the trigger outcome when it was a trigger.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Reply {
    pub(crate) outcome: Option<TriggerOutcome>,
    pub(crate) effects: Vec<Effect>,
}

/// Fixed rules.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) max_attempts: u32,
    /// The cooldown after a successful cycle; in adaptive mode its maximum.
    pub(crate) cooldown: Duration,
    /// Adaptive mode; `None` is the seed's strict rules.
    pub(crate) adaptive: Option<Adaptive>,
    /// Seeds the retry jitter (a recovery's own, so replicas spread out).
    pub(crate) jitter_seed: u64,
}

/// The adaptive rules (see [`super::Adaptive`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Adaptive {
    pub(crate) retry_first: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) healthy_period: Duration,
    pub(crate) min_cooldown: Duration,
    pub(crate) flapping_window: Duration,
}

/// Recent recoveries kept to measure flapping (within the window).
const RECENT_MAX: usize = 64;

/// The window of the "last hour" figures.
pub(crate) const LAST_HOUR: Duration = Duration::from_secs(3600);
/// Events kept for the last hour's figures.
const LEDGER_MAX: usize = 1024;

/// Something the figures count, and when it happened.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Entry {
    /// An outage ended, having lasted this long.
    Outage(Duration),
    /// A cycle succeeded after this many attempts.
    CycleOk(u32),
    /// A cycle ended exhausted.
    CycleExhausted,
}

/// What the recovery's figures are made of: totals since the machine's
/// first event, the last hour's events, and the time spent in each state.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger {
    /// The first event's time: what "since start" means.
    pub(crate) since: Option<Instant>,
    /// Time up to which `in_state` is counted.
    accounted_at: Option<Instant>,
    /// Idle, recovering, cooling down, exhausted.
    pub(crate) in_state: [Duration; 4],
    /// The last hour's stretches in one state: start, end, state.
    stretches: VecDeque<(Instant, Instant, usize)>,
    pub(crate) outages: u64,
    /// Time down, counted from the first event at the earliest.
    pub(crate) downtime: Duration,
    /// The outages' whole lengths (for the MTTR).
    pub(crate) lengths: Duration,
    pub(crate) cycles_ok: u64,
    pub(crate) cycles_exhausted: u64,
    /// Attempts of the cycles that succeeded.
    pub(crate) attempts_ok: u64,
    recent: VecDeque<(Instant, Entry)>,
}

/// Figures over a span of time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Span {
    pub(crate) outages: u64,
    pub(crate) downtime: Duration,
    pub(crate) lengths: Duration,
    pub(crate) cycles_ok: u64,
    pub(crate) cycles_exhausted: u64,
    pub(crate) attempts_ok: u64,
}

fn state_index(state: RecoveryState) -> usize {
    match state {
        RecoveryState::Idle => 0,
        RecoveryState::Recovering => 1,
        RecoveryState::CoolingDown => 2,
        RecoveryState::Exhausted => 3,
    }
}

impl Ledger {
    /// Records `[from, to)` spent in `state`, merged with the stretch
    /// before when it is the same state; forgets what ended an hour ago.
    fn stretch(&mut self, from: Instant, to: Instant, state: usize) {
        match self.stretches.back_mut() {
            Some((_, end, s)) if *s == state && *end == from => *end = to,
            _ => self.stretches.push_back((from, to, state)),
        }
        while self.stretches.len() > LEDGER_MAX
            || self
                .stretches
                .front()
                .is_some_and(|(_, end, _)| to.saturating_duration_since(*end) >= LAST_HOUR)
        {
            self.stretches.pop_front();
        }
    }

    /// Time in each state over the last hour before `now` (as far as
    /// accounted).
    pub(crate) fn in_state_last_hour(&self, now: Instant) -> [Duration; 4] {
        let start = now.checked_sub(LAST_HOUR);
        let mut out = [Duration::ZERO; 4];
        for &(from, to, state) in &self.stretches {
            let from = start.map_or(from, |s| from.max(s));
            out[state] += to.saturating_duration_since(from);
        }
        out
    }

    fn note(&mut self, now: Instant, entry: Entry) {
        while self.recent.len() >= LEDGER_MAX
            || self
                .recent
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= LAST_HOUR)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, entry));
    }

    /// The last hour before `now` (outages ended in it; the open one is
    /// the caller's to add).
    pub(crate) fn last_hour(&self, now: Instant) -> Span {
        let mut span = Span::default();
        for (at, entry) in &self.recent {
            if now.saturating_duration_since(*at) >= LAST_HOUR {
                continue;
            }
            match *entry {
                Entry::Outage(d) => {
                    span.outages += 1;
                    span.lengths += d;
                    // Only the part of it inside the hour, and observed.
                    let start = at.checked_sub(d).unwrap_or(*at);
                    let hour = now.checked_sub(LAST_HOUR).unwrap_or(start);
                    let from = start.max(hour).max(self.since.unwrap_or(start));
                    span.downtime += at.saturating_duration_since(from);
                }
                Entry::CycleOk(n) => {
                    span.cycles_ok += 1;
                    span.attempts_ok += u64::from(n);
                }
                Entry::CycleExhausted => span.cycles_exhausted += 1,
            }
        }
        span
    }

    /// Since the first event.
    pub(crate) fn since_start(&self) -> Span {
        Span {
            outages: self.outages,
            downtime: self.downtime,
            lengths: self.lengths,
            cycles_ok: self.cycles_ok,
            cycles_exhausted: self.cycles_exhausted,
            attempts_ok: self.attempts_ok,
        }
    }
}

/// `delay` spread by up to ±10% (in whole milliseconds), the same for the
/// same `seed` and `salt`.
pub(crate) fn jittered(delay: Duration, seed: u64, salt: u64) -> Duration {
    // splitmix64
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    // Whole milliseconds, tokio's timer resolution: the delay reported is
    // the delay waited.
    let millis = (delay.as_secs_f64() * (0.9 + 0.2 * unit) * 1000.0).round();
    Duration::from_millis(millis as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// `attempt` is the attempt running or about to run.
    Recovering {
        attempt: u32,
    },
    CoolingDown {
        until: Instant,
    },
    /// `retry_at`: when the next cycle starts by itself if the dependency
    /// is still down (adaptive); `None` waits for a person (strict).
    Exhausted {
        retry_at: Option<Instant>,
    },
}

/// The recovery's state and counters.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    rules: Rules,
    phase: Phase,
    /// Bumped by every cycle start and cancellation: results of an older
    /// cycle are dropped.
    cycle: u64,
    /// Attempts made in the current (or last) cycle.
    pub(crate) attempt: u32,
    /// An automatic trigger arrived during the cooldown.
    deferred: bool,
    /// Start of the outage being recovered, if one is known.
    down_since: Option<Instant>,
    /// End of the last outage recorded: a later opening cannot have begun
    /// before it.
    last_outage_end: Option<Instant>,
    last_check_failed: bool,
    breaker_down: bool,
    /// An automatic trigger said the dependency is down, and no sign since
    /// says it is back.
    suspect: bool,
    pub(crate) last_attempt_at: Option<Instant>,
    pub(crate) last_error: Option<String>,
    pub(crate) recoveries: u64,
    pub(crate) failed_attempts: u64,
    pub(crate) exhausted_cycles: u64,
    pub(crate) mttr: VecDeque<Duration>,
    /// Retries after exhaustion so far (their delay grows); back to 0 when
    /// an outage begins a healthy period after the last one, and on reset.
    retry_level: u32,
    /// The exhaustion alert was sent for the open outage (adaptive: once).
    alerted: bool,
    /// Ends of recent recoveries, within the flapping window (adaptive).
    recent: VecDeque<Instant>,
    /// The figures (outages, downtime, cycles, time in each state).
    pub(crate) ledger: Ledger,
}

impl Machine {
    pub(crate) fn new(rules: Rules) -> Self {
        Self {
            rules,
            phase: Phase::Idle,
            cycle: 0,
            attempt: 0,
            deferred: false,
            down_since: None,
            last_outage_end: None,
            last_check_failed: false,
            breaker_down: false,
            suspect: false,
            last_attempt_at: None,
            last_error: None,
            recoveries: 0,
            failed_attempts: 0,
            exhausted_cycles: 0,
            mttr: VecDeque::new(),
            retry_level: 0,
            alerted: false,
            recent: VecDeque::new(),
            ledger: Ledger::default(),
        }
    }

    /// Whether anything is under way: a cycle, a cooldown (even one whose
    /// time is up, until the next event ends it) or an exhaustion.
    pub(crate) fn is_busy(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    /// The state at `now`: a cooldown whose time is up reads as `Idle`
    /// (what the next event will find), without changing anything.
    pub(crate) fn state(&self, now: Instant) -> RecoveryState {
        match self.phase {
            Phase::Idle => RecoveryState::Idle,
            Phase::Recovering { .. } => RecoveryState::Recovering,
            Phase::CoolingDown { until } if now < until => RecoveryState::CoolingDown,
            Phase::CoolingDown { .. } => {
                if self.deferred && self.is_down() {
                    RecoveryState::Recovering
                } else {
                    RecoveryState::Idle
                }
            }
            Phase::Exhausted { retry_at: Some(at) } if now >= at && self.is_down() => {
                RecoveryState::Recovering
            }
            Phase::Exhausted { retry_at: Some(at) } if now >= at => RecoveryState::Idle,
            Phase::Exhausted { .. } => RecoveryState::Exhausted,
        }
    }

    /// When exhausted (adaptive): time left until the next cycle starts by
    /// itself, if the dependency is still down then.
    pub(crate) fn retry_remaining(&self, now: Instant) -> Option<Duration> {
        match self.phase {
            Phase::Exhausted { retry_at: Some(at) } if now < at => Some(at - now),
            _ => None,
        }
    }

    /// Recoveries that ended within the flapping window before `now`.
    pub(crate) fn recent_recoveries(&self, now: Instant) -> usize {
        let window = self
            .rules
            .adaptive
            .map_or(Duration::ZERO, |a| a.flapping_window);
        self.recent
            .iter()
            .filter(|end| now.saturating_duration_since(**end) < window)
            .count()
    }

    /// When cooling down: time left at `now`.
    pub(crate) fn cooldown_remaining(&self, now: Instant) -> Option<Duration> {
        match self.phase {
            Phase::CoolingDown { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    /// The next moment the machine must be told the time (the end of the
    /// cooldown), if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::CoolingDown { until } => Some(until),
            Phase::Exhausted { retry_at } => retry_at,
            _ => None,
        }
    }

    /// The current cycle's id.
    pub(crate) fn cycle(&self) -> u64 {
        self.cycle
    }

    /// Mean of the recent MTTR samples.
    pub(crate) fn mttr(&self) -> Option<Duration> {
        (!self.mttr.is_empty()).then(|| self.mttr.iter().sum::<Duration>() / self.mttr.len() as u32)
    }

    /// The start of the open outage (for the exhaustive test).
    #[cfg(test)]
    pub(crate) fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// The end of the last outage recorded.
    pub(crate) fn last_outage_end(&self) -> Option<Instant> {
        self.last_outage_end
    }

    /// Whether the watched breaker is known to be down (for the test).
    #[cfg(test)]
    pub(crate) fn breaker_down(&self) -> bool {
        self.breaker_down
    }

    fn is_down(&self) -> bool {
        self.breaker_down || self.last_check_failed || self.suspect
    }

    /// Whether an outage is open (its start known).
    pub(crate) fn outage_open(&self) -> bool {
        self.down_since.is_some()
    }

    /// Applies the passage of time up to `now` (the cooldown's end), then
    /// `event`.
    #[must_use = "the effects must be carried out"]
    pub(crate) fn on(&mut self, event: Event, now: Instant) -> Reply {
        let mut reply = Reply::default();
        self.account(now);
        self.tick(now, &mut reply.effects);
        match event {
            Event::Trigger(kind) => {
                let reason = match kind {
                    Kind::Manual => Reason::Manual,
                    Kind::Automatic => Reason::Automatic,
                    Kind::Early => Reason::Degraded,
                };
                reply.outcome = Some(self.trigger(kind, reason, now, &mut reply.effects));
            }
            Event::Check { passed: false } => {
                self.last_check_failed = true;
                reply.outcome = Some(self.trigger(
                    Kind::Automatic,
                    Reason::CheckFailed,
                    now,
                    &mut reply.effects,
                ));
            }
            Event::Check { passed: true } => {
                self.last_check_failed = false;
                if self.breaker_down {
                    // The dependency answers, but traffic still cannot reach
                    // it: run a cycle (whose success closes the breaker)
                    // instead of waiting for the breaker's own probe.
                    match self.phase {
                        Phase::Idle => {
                            self.start(Reason::CheckPassedBreakerOpen, now, &mut reply.effects);
                            reply.outcome = Some(TriggerOutcome::Started);
                        }
                        // Exhausted: the retry schedule (adaptive) or a
                        // person (strict) decides; checks that pass while
                        // calls fail must not run cycle after cycle. The
                        // monitor lets the breaker probe instead.
                        Phase::Exhausted { .. } => {
                            reply.outcome = Some(TriggerOutcome::Ignored);
                        }
                        Phase::Recovering { .. } => {
                            reply.outcome = Some(TriggerOutcome::AlreadyRunning);
                        }
                        Phase::CoolingDown { .. } => {
                            self.deferred = true;
                            reply.outcome = Some(TriggerOutcome::Deferred);
                        }
                    }
                } else {
                    self.back_up(Reason::CheckPassed, now, now, &mut reply.effects);
                }
            }
            // A call through an open breaker's probe says little: the
            // breaker itself reports when its probes close it.
            Event::CallSucceeded if self.breaker_down => {}
            Event::CallSucceeded => {
                self.back_up(Reason::CallSucceeded, now, now, &mut reply.effects);
            }
            Event::ClosedByUs => {
                self.breaker_down = false;
                self.suspect = false;
                if !matches!(self.phase, Phase::Recovering { .. }) {
                    self.deferred = false;
                    self.down_since = None;
                }
            }
            Event::BreakerOpened { at } => {
                self.breaker_down = true;
                if self.down_since.is_none() {
                    let at = at.min(now);
                    self.outage_begins(self.last_outage_end.map_or(at, |end| at.max(end)));
                }
                reply.effects.push(Effect::Log(Log::Opened));
                reply.outcome = Some(self.trigger(
                    Kind::Automatic,
                    Reason::BreakerOpened,
                    now,
                    &mut reply.effects,
                ));
            }
            Event::BreakerHealed { at } => {
                self.breaker_down = false;
                self.back_up(Reason::BreakerHealed, at.min(now), now, &mut reply.effects);
            }
            Event::BreakerState { down } => self.breaker_down = down,
            Event::AttemptStarted { cycle, attempt } => {
                if cycle == self.cycle && self.phase == (Phase::Recovering { attempt }) {
                    self.attempt = attempt;
                    self.last_attempt_at = Some(now);
                    reply.effects.push(Effect::Log(Log::Attempt { attempt }));
                }
            }
            Event::AttemptDone {
                cycle,
                attempt,
                result,
            } => {
                if cycle == self.cycle && self.phase == (Phase::Recovering { attempt }) {
                    self.attempt_done(attempt, result, now, &mut reply.effects);
                }
            }
            Event::EndedElsewhere {
                cycle,
                attempt,
                result,
            } => {
                if cycle == self.cycle && self.phase == (Phase::Recovering { attempt }) {
                    self.ended_elsewhere(attempt, result, now, &mut reply.effects);
                }
            }
            Event::Reset => {
                if matches!(self.phase, Phase::Recovering { .. }) {
                    reply.effects.push(Effect::Cancel);
                }
                self.cycle += 1;
                self.phase = Phase::Idle;
                self.attempt = 0;
                self.deferred = false;
                self.retry_level = 0;
                self.alerted = false;
            }
            Event::Tick => {}
        }
        reply
    }

    /// The cooldown's end: idle, and a deferred trigger honoured only if the
    /// dependency is still down.
    fn tick(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if let Phase::Exhausted { retry_at: Some(at) } = self.phase {
            if now >= at {
                if self.is_down() {
                    self.start(Reason::RetryAfterExhaustion, now, effects);
                } else {
                    // No sign the dependency is still down: whatever sign
                    // said it is back ended the outage; none is left open.
                    self.phase = Phase::Idle;
                    self.down_since = None;
                    self.alerted = false;
                }
            }
        }
        if let Phase::CoolingDown { until } = self.phase {
            if now >= until {
                self.phase = Phase::Idle;
                if std::mem::take(&mut self.deferred) {
                    if self.is_down() {
                        self.start(Reason::Deferred, now, effects);
                    } else {
                        // No sign the dependency is still down. The sign that
                        // it came back ended the outage; none is left open.
                        self.down_since = None;
                        effects.push(Effect::Log(Log::DeferredDropped));
                    }
                }
            }
        }
    }

    fn trigger(
        &mut self,
        kind: Kind,
        reason: Reason,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) -> TriggerOutcome {
        if kind == Kind::Automatic {
            self.suspect = true;
            if self.down_since.is_none() {
                self.outage_begins(now);
            }
        }
        match self.phase {
            Phase::Recovering { .. } => TriggerOutcome::AlreadyRunning,
            Phase::Exhausted { .. } | Phase::CoolingDown { .. } if kind == Kind::Early => {
                TriggerOutcome::Ignored
            }
            Phase::Exhausted { .. } if kind == Kind::Automatic => TriggerOutcome::Ignored,
            Phase::CoolingDown { .. } if kind == Kind::Automatic => {
                self.deferred = true;
                TriggerOutcome::Deferred
            }
            _ => {
                self.start(reason, now, effects);
                TriggerOutcome::Started
            }
        }
    }

    /// Counts the time since the last event in the state the machine was
    /// in, splitting it where time alone moved it on (a cooldown's end, a
    /// retry falling due).
    fn account(&mut self, now: Instant) {
        let ledger = &mut self.ledger;
        let Some(from) = ledger.accounted_at else {
            ledger.since = Some(now);
            ledger.accounted_at = Some(now);
            return;
        };
        if now <= from {
            return;
        }
        let boundary = match self.phase {
            Phase::CoolingDown { until } => Some(until),
            Phase::Exhausted { retry_at } => retry_at,
            _ => None,
        }
        .filter(|b| *b > from && *b < now);
        let before = state_index(self.state(from));
        let after = state_index(self.state(now));
        let ledger = &mut self.ledger;
        match boundary {
            Some(b) => {
                ledger.in_state[before] += b - from;
                ledger.in_state[after] += now - b;
                ledger.stretch(from, b, before);
                ledger.stretch(b, now, after);
            }
            None => {
                ledger.in_state[before] += now - from;
                ledger.stretch(from, now, before);
            }
        }
        ledger.accounted_at = Some(now);
    }

    /// The downtime of the outage still open at `now`, if one is.
    pub(crate) fn open_outage(&self, now: Instant) -> Option<Duration> {
        self.down_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// An outage begins `at`: the retry delay starts over if the last one
    /// ended a healthy period ago (or none did).
    fn outage_begins(&mut self, at: Instant) {
        self.down_since = Some(at);
        self.alerted = false;
        if let Some(adaptive) = self.rules.adaptive {
            let healthy = self
                .last_outage_end
                .is_none_or(|end| at.saturating_duration_since(end) >= adaptive.healthy_period);
            if healthy {
                self.retry_level = 0;
            }
        }
    }

    /// The cooldown after a success at `now` (the recovery already
    /// recorded): adaptive, the minimum doubled for each other recovery in
    /// the flapping window, up to the configured cooldown.
    fn cooldown(&self, now: Instant) -> Duration {
        let Some(adaptive) = self.rules.adaptive else {
            return self.rules.cooldown;
        };
        let others = self.recent_recoveries(now).saturating_sub(1).min(32) as i32;
        let grown = adaptive.min_cooldown.as_secs_f64() * 2f64.powi(others);
        if grown >= self.rules.cooldown.as_secs_f64() {
            self.rules.cooldown
        } else {
            Duration::from_secs_f64(grown).min(self.rules.cooldown)
        }
    }

    /// The delay before the next retry after an exhausted cycle.
    fn retry_delay(&self, adaptive: Adaptive) -> Duration {
        let level = self.retry_level.min(32) as i32;
        let grown = adaptive.retry_first.as_secs_f64() * 2f64.powi(level);
        let base = if grown >= adaptive.retry_max.as_secs_f64() {
            adaptive.retry_max
        } else {
            Duration::from_secs_f64(grown)
        };
        jittered(base, self.rules.jitter_seed, self.cycle)
    }

    fn start(&mut self, reason: Reason, _now: Instant, effects: &mut Vec<Effect>) {
        self.cycle += 1;
        self.phase = Phase::Recovering { attempt: 1 };
        self.attempt = 0;
        self.deferred = false;
        effects.push(Effect::Log(Log::Started { reason }));
        effects.push(Effect::Attempt {
            cycle: self.cycle,
            attempt: 1,
        });
    }

    fn attempt_done(
        &mut self,
        attempt: u32,
        result: Result<(), String>,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        self.attempt = attempt;
        match result {
            Ok(()) => {
                self.last_check_failed = false;
                self.breaker_down = false;
                self.suspect = false;
                self.ledger.cycles_ok += 1;
                self.ledger.attempts_ok += u64::from(attempt);
                self.ledger.note(now, Entry::CycleOk(attempt));
                if let Some(lasted) = self.record_recovery(now) {
                    effects.push(Effect::Outage(lasted));
                }
                self.phase = Phase::CoolingDown {
                    until: now + self.cooldown(now),
                };
                effects.push(Effect::Log(Log::Succeeded));
                effects.push(Effect::CloseBreaker);
            }
            Err(error) => {
                self.failed_attempts += 1;
                self.last_error = Some(error.clone());
                effects.push(Effect::Log(Log::AttemptFailed { attempt, error }));
                if attempt < self.rules.max_attempts {
                    let next = attempt + 1;
                    self.phase = Phase::Recovering { attempt: next };
                    effects.push(Effect::Attempt {
                        cycle: self.cycle,
                        attempt: next,
                    });
                } else {
                    let retry_in = self.rules.adaptive.map(|a| self.retry_delay(a));
                    if retry_in.is_some() {
                        self.retry_level = self.retry_level.saturating_add(1);
                    }
                    self.phase = Phase::Exhausted {
                        retry_at: retry_in.map(|d| now + d),
                    };
                    self.exhausted_cycles += 1;
                    self.ledger.cycles_exhausted += 1;
                    self.ledger.note(now, Entry::CycleExhausted);
                    // Strict: every exhausted cycle alerts (each needed a
                    // person). Adaptive: the first of an outage does.
                    let alert = self.rules.adaptive.is_none() || !self.alerted;
                    self.alerted = true;
                    effects.push(Effect::Log(Log::Exhausted { retry_in, alert }));
                    if alert {
                        effects.push(Effect::Alert);
                    }
                }
            }
        }
    }

    /// The fleet's cycle that ours waited on ended on another replica:
    /// ours ends the same way, without closing the breaker (the task lets
    /// it probe) and without an alert (the other replica's was the
    /// fleet's).
    fn ended_elsewhere(
        &mut self,
        attempt: u32,
        result: Result<(), String>,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let recovered = result.is_ok();
        let mut mine = Vec::new();
        if !recovered {
            // The other replica alerted for this outage.
            self.alerted = true;
        }
        let before = self.failed_attempts;
        let max = self.rules.max_attempts;
        self.attempt_done(
            if recovered { attempt } else { max },
            result,
            now,
            &mut mine,
        );
        // `attempt_done` counted a failed attempt of ours: there was none.
        self.failed_attempts = before;
        for effect in mine {
            match effect {
                Effect::CloseBreaker | Effect::Alert => {}
                Effect::Log(Log::Succeeded) => {
                    effects.push(Effect::Log(Log::EndedElsewhere { recovered: true }))
                }
                Effect::Log(Log::AttemptFailed { .. }) => {}
                Effect::Log(Log::Exhausted { .. }) => {
                    effects.push(Effect::Log(Log::EndedElsewhere { recovered: false }))
                }
                other => effects.push(other),
            }
        }
    }

    /// The dependency is back (`at`) by another path than our own cycle.
    fn back_up(&mut self, how: Reason, at: Instant, now: Instant, effects: &mut Vec<Effect>) {
        let was = self.state(now);
        self.suspect = false;
        match self.phase {
            Phase::Recovering { .. } => {
                self.cycle += 1;
                self.phase = Phase::Idle;
                effects.push(Effect::Cancel);
            }
            Phase::Exhausted { .. } => self.phase = Phase::Idle,
            Phase::Idle | Phase::CoolingDown { .. } => {}
        }
        if self.down_since.is_some() {
            if let Some(lasted) = self.record_recovery(at) {
                effects.push(Effect::Outage(lasted));
            }
            effects.push(Effect::Log(Log::Healed { was, how }));
        }
    }

    /// Ends the outage: one success and one MTTR sample. Returns how long
    /// the outage lasted, when one was open.
    fn record_recovery(&mut self, now: Instant) -> Option<Duration> {
        self.recoveries += 1;
        self.last_outage_end = Some(now);
        self.alerted = false;
        if let Some(adaptive) = self.rules.adaptive {
            while self.recent.len() == RECENT_MAX
                || self.recent.front().is_some_and(|end| {
                    now.saturating_duration_since(*end) >= adaptive.flapping_window
                })
            {
                self.recent.pop_front();
            }
            self.recent.push_back(now);
        }
        let since = self.down_since.take()?;
        let lasted = now.saturating_duration_since(since);
        if self.mttr.len() == MTTR_SAMPLES {
            self.mttr.pop_front();
        }
        self.mttr.push_back(lasted);
        // Downtime counts from when the machine first saw an event at the
        // earliest (an outage the breaker saw begin earlier is longer).
        let observed = self
            .ledger
            .since
            .map_or(lasted, |first| now.saturating_duration_since(first));
        self.ledger.outages += 1;
        self.ledger.downtime += lasted.min(observed);
        self.ledger.lengths += lasted;
        self.ledger.note(now, Entry::Outage(lasted));
        Some(lasted)
    }
}
