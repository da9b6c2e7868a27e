//! Model-based property test: the breaker and a small reference model of the
//! semantics table, driven by the same random sequence of admissions,
//! outcomes, dropped calls, clock advances and manual actions, must agree on
//! every step.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tower_recovery::circuit_breaker::{Breaker, Permit, State};
use tower_recovery::classify::Outcome;
use tower_recovery::clock::ManualClock;

const SEC: u64 = 1_000_000_000;
const OPEN: u64 = 5 * SEC;
const OPEN_MAX: u64 = 20 * SEC;
const HEALTHY: u64 = 10 * SEC;
const BUCKET: u64 = SEC;
const BUCKETS: u64 = 4;

#[derive(Clone, Copy, Debug)]
enum Policy {
    Consecutive(u32),
    Count { size: usize, min: u64, ppm: u64 },
    Time { min: u64, ppm: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Cfg {
    policy: Policy,
    permits: u16,
    growth: bool,
    max_wait: Option<u64>,
}

#[derive(Clone, Debug)]
enum Op {
    Admit,
    Complete(usize, Outcome),
    Drop(usize),
    Advance(u64),
    Reset,
    ForceOpen,
    Disable,
    Close,
    Observe,
}

#[derive(Clone, Copy, Debug)]
struct Ticket {
    generation: u64,
    state: State,
}

struct Model {
    cfg: Cfg,
    now: u64,
    state: State,
    generation: u64,
    consecutive: u32,
    count: VecDeque<bool>,
    time: Vec<(u64, bool)>,
    open_until: u64,
    half_until: u64,
    available: u16,
    successes: u16,
    level: u32,
    closed_at: u64,
    rejected: u64,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Self {
            cfg,
            now: 0,
            state: State::Closed,
            generation: 0,
            consecutive: 0,
            count: VecDeque::new(),
            time: Vec::new(),
            open_until: 0,
            half_until: u64::MAX,
            available: 0,
            successes: 0,
            level: 0,
            closed_at: 0,
            rejected: 0,
        }
    }

    fn go(&mut self, to: State) {
        match to {
            State::Open => {
                if self.state == State::Closed && self.now - self.closed_at >= HEALTHY {
                    self.level = 0;
                }
                let mult: f64 = if self.cfg.growth { 2.0 } else { 1.0 };
                let max = if self.cfg.growth { OPEN_MAX } else { OPEN };
                let grown = OPEN as f64 * mult.powi(self.level as i32);
                let d = if grown >= max as f64 {
                    max
                } else {
                    grown as u64
                };
                if self.cfg.growth && d < max {
                    self.level += 1;
                }
                self.open_until = self.now + d;
            }
            State::HalfOpen => {
                self.available = self.cfg.permits;
                self.successes = 0;
                self.half_until = self.cfg.max_wait.map_or(u64::MAX, |w| self.now + w);
            }
            State::Closed => {
                self.consecutive = 0;
                self.count.clear();
                self.time.clear();
                self.closed_at = self.now;
            }
            _ => {}
        }
        self.state = to;
        self.generation += 1;
    }

    fn refresh(&mut self) -> State {
        loop {
            match self.state {
                State::Open if self.now >= self.open_until => self.go(State::HalfOpen),
                State::HalfOpen if self.now >= self.half_until => self.reopen_at_timeout(),
                s => return s,
            }
        }
    }

    /// What a read reports: due timed transitions projected, none made.
    /// Returns the state and, when open, the time to the next probe.
    fn project(&self) -> (State, Option<u64>) {
        match self.state {
            State::Open if self.now < self.open_until => {
                (State::Open, Some(self.open_until - self.now))
            }
            State::Open => (State::HalfOpen, None),
            State::HalfOpen if self.now >= self.half_until => {
                let until = self.half_until + self.open_nanos(self.level);
                if self.now < until {
                    (State::Open, Some(until - self.now))
                } else {
                    (State::HalfOpen, None)
                }
            }
            s => (s, None),
        }
    }

    /// The overdue half-open timeout: re-opened as of the timeout itself.
    fn reopen_at_timeout(&mut self) {
        let now = self.now;
        self.now = self.half_until;
        self.go(State::Open);
        self.now = now;
    }

    fn open_nanos(&self, level: u32) -> u64 {
        let mult: f64 = if self.cfg.growth { 2.0 } else { 1.0 };
        let max = if self.cfg.growth { OPEN_MAX } else { OPEN };
        let grown = OPEN as f64 * mult.powi(level as i32);
        if grown >= max as f64 {
            max
        } else {
            grown as u64
        }
    }

    fn admit(&mut self) -> Result<Ticket, (State, Option<Duration>)> {
        let state = self.refresh();
        let ticket = Ticket {
            generation: self.generation,
            state,
        };
        let rejected = match state {
            State::Closed | State::Disabled => return Ok(ticket),
            State::HalfOpen if self.available > 0 => {
                self.available -= 1;
                return Ok(ticket);
            }
            State::Open => (
                State::Open,
                Some(Duration::from_nanos(self.open_until - self.now)),
            ),
            // Every permit in use: until the half-open wait ends, or the
            // base open duration without one.
            State::HalfOpen => (
                State::HalfOpen,
                Some(Duration::from_nanos(match self.cfg.max_wait {
                    Some(_) => self.half_until - self.now,
                    None => OPEN,
                })),
            ),
            s => (s, None),
        };
        self.rejected += 1;
        Err(rejected)
    }

    fn live(&self) -> (u64, u64) {
        match self.cfg.policy {
            Policy::Consecutive(_) => (0, 0),
            Policy::Count { .. } => (
                self.count.len() as u64,
                self.count.iter().filter(|f| **f).count() as u64,
            ),
            Policy::Time { .. } => {
                let tick = self.now / BUCKET;
                let live: Vec<_> = self
                    .time
                    .iter()
                    .filter(|(t, _)| *t + BUCKETS >= tick)
                    .collect();
                (
                    live.len() as u64,
                    live.iter().filter(|(_, f)| *f).count() as u64,
                )
            }
        }
    }

    fn complete(&mut self, t: Ticket, outcome: Outcome) {
        let current = t.generation == self.generation;
        match t.state {
            State::Closed => {
                if outcome == Outcome::Ignore || !current {
                    return;
                }
                let failed = outcome == Outcome::Failure;
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let trip = match self.cfg.policy {
                    Policy::Consecutive(k) => self.consecutive >= k,
                    Policy::Count { size, min, ppm } => {
                        if self.count.len() == size {
                            self.count.pop_front();
                        }
                        self.count.push_back(failed);
                        let (calls, failures) = self.live();
                        // The minimum is capped at the window's size.
                        calls >= min.min(size as u64) && failures * 1_000_000 >= ppm * calls
                    }
                    Policy::Time { min, ppm } => {
                        self.time.push((self.now / BUCKET, failed));
                        let (calls, failures) = self.live();
                        calls >= min && failures * 1_000_000 >= ppm * calls
                    }
                };
                if trip {
                    self.go(State::Open);
                }
            }
            // The half-open wait ran out before the probe finished: the
            // re-open is made now and the outcome is stale.
            State::HalfOpen
                if current && self.state == State::HalfOpen && self.now >= self.half_until =>
            {
                self.reopen_at_timeout()
            }
            State::HalfOpen => match outcome {
                Outcome::Ignore => self.release(t),
                Outcome::Failure if current => self.go(State::Open),
                Outcome::Success if current => {
                    self.successes += 1;
                    if self.successes >= self.cfg.permits {
                        self.go(State::Closed);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn release(&mut self, t: Ticket) {
        if t.state == State::HalfOpen
            && t.generation == self.generation
            && self.available < self.cfg.permits
        {
            self.available += 1;
        }
    }

    fn close(&mut self) -> bool {
        match self.state {
            State::Open | State::HalfOpen => {
                self.go(State::Closed);
                true
            }
            _ => false,
        }
    }
}

fn cfg() -> impl Strategy<Value = Cfg> {
    let rate = prop_oneof![Just(250_000u64), Just(500_000), Just(1_000_000)];
    let policy = prop_oneof![
        (1u32..5).prop_map(Policy::Consecutive),
        (1usize..8, 1u64..8, rate.clone()).prop_map(|(size, min, ppm)| Policy::Count {
            size,
            min,
            ppm
        }),
        (1u64..8, rate).prop_map(|(min, ppm)| Policy::Time { min, ppm }),
    ];
    (policy, 1u16..4, any::<bool>(), prop::option::of(1u64..4)).prop_map(
        |(policy, permits, growth, wait)| Cfg {
            policy,
            permits,
            growth,
            max_wait: wait.map(|w| w * SEC),
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        4 => Just(Outcome::Failure),
        3 => Just(Outcome::Success),
        1 => Just(Outcome::Ignore),
    ];
    prop_oneof![
        8 => Just(Op::Admit),
        8 => (any::<usize>(), outcome).prop_map(|(i, o)| Op::Complete(i, o)),
        1 => any::<usize>().prop_map(Op::Drop),
        4 => prop_oneof![0u64..1_500, Just(1_000u64), Just(5_000u64), 0u64..25_000].prop_map(|ms| Op::Advance(ms * 1_000_000)),
        1 => Just(Op::Reset),
        1 => Just(Op::Close),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Disable),
        3 => Just(Op::Observe),
    ]
}

fn build(cfg: &Cfg, clock: &ManualClock) -> Breaker {
    let mut b = Breaker::builder("model")
        .open_duration(Duration::from_nanos(OPEN))
        .healthy_period(Duration::from_nanos(HEALTHY))
        .half_open_permits(cfg.permits)
        .clock(clock.clone());
    if cfg.growth {
        b = b.open_growth(2.0, Duration::from_nanos(OPEN_MAX));
    }
    if let Some(w) = cfg.max_wait {
        b = b.half_open_max_wait(Duration::from_nanos(w));
    }
    let rate = |ppm: u64| ppm as f64 / 1e6;
    match cfg.policy {
        Policy::Consecutive(k) => b.consecutive_failures(k),
        Policy::Count { size, min, ppm } => b
            .count_window(size as u32)
            .minimum_calls(min)
            .failure_rate(rate(ppm)),
        Policy::Time { min, ppm } => b
            .time_window(Duration::from_nanos(BUCKET * BUCKETS), BUCKETS as u32)
            .minimum_calls(min)
            .failure_rate(rate(ppm)),
    }
    .build()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn breaker_agrees_with_the_model(cfg in cfg(), ops in prop::collection::vec(op(), 1..160)) {
        let clock = ManualClock::new();
        let breaker = build(&cfg, &clock);
        let mut model = Model::new(cfg);
        let mut outstanding: Vec<(Permit<'_>, Ticket)> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            let op_kind = op.clone();
            match op {
                Op::Admit => {
                    let real = breaker.try_acquire();
                    let expected = model.admit();
                    match (real, expected) {
                        (Ok(permit), Ok(ticket)) => {
                            prop_assert_eq!(permit.is_probe(), ticket.state == State::HalfOpen, "step {}", step);
                            outstanding.push((permit, ticket));
                        }
                        (Err(r), Err((state, after))) => {
                            prop_assert_eq!(r.state(), state, "step {}", step);
                            prop_assert_eq!(r.retry_after(), after, "step {}", step);
                        }
                        (real, expected) => prop_assert!(false, "step {}: real {:?} model {:?}", step, real.map(|_| ()), expected),
                    }
                }
                Op::Complete(i, outcome) if !outstanding.is_empty() => {
                    let (permit, ticket) = outstanding.remove(i % outstanding.len());
                    permit.record(outcome);
                    model.complete(ticket, outcome);
                }
                Op::Drop(i) if !outstanding.is_empty() => {
                    let (permit, ticket) = outstanding.remove(i % outstanding.len());
                    drop(permit);
                    model.release(ticket);
                }
                Op::Complete(..) | Op::Drop(_) => {}
                Op::Advance(nanos) => {
                    clock.advance(Duration::from_nanos(nanos));
                    model.now += nanos;
                }
                Op::Reset => {
                    breaker.reset();
                    model.level = 0;
                    if model.state == State::Closed {
                        // Not a transition: counts cleared, same generation.
                        model.consecutive = 0;
                        model.count.clear();
                        model.time.clear();
                        model.closed_at = model.now;
                    } else {
                        model.go(State::Closed);
                    }
                }
                Op::ForceOpen => {
                    breaker.force_open();
                    model.go(State::ForcedOpen);
                }
                Op::Disable => {
                    breaker.disable();
                    model.go(State::Disabled);
                }
                Op::Close => {
                    prop_assert_eq!(breaker.close(), model.close(), "step {}", step);
                }
                Op::Observe => {}
            }
            // Observations that apply no timed transition, after every step.
            prop_assert_eq!(breaker.generation(), model.generation, "step {}: generation", step);
            let counts = breaker.counts();
            prop_assert_eq!(counts.consecutive_failures, model.consecutive, "step {}: consecutive", step);
            prop_assert_eq!((counts.window_calls, counts.window_failures), model.live(), "step {}: window", step);
            if !matches!(op_kind, Op::Observe) {
                continue;
            }
            // `state()` and `snapshot()` project due transitions and make
            // none: the generation is unchanged after them.
            let (state, next_probe) = model.project();
            prop_assert_eq!(breaker.state(), state, "step {}: state", step);
            let snap = breaker.snapshot();
            prop_assert_eq!(snap.state, state, "step {}: snapshot state", step);
            prop_assert_eq!(snap.rejected, model.rejected, "step {}: rejected", step);
            if state == State::HalfOpen {
                // The performed period's free permits, unless the read went
                // past its timeout into a new period (every permit free).
                let moved_on = model.state == State::HalfOpen
                    && model.cfg.max_wait.is_some()
                    && model.now >= model.half_until;
                let permits = if model.state == State::HalfOpen && !moved_on { model.available } else { model.cfg.permits };
                prop_assert_eq!(snap.available_permits, Some(permits), "step {}: permits", step);
            }
            prop_assert_eq!(snap.next_probe_in, next_probe.map(Duration::from_nanos), "step {}: next probe", step);
            prop_assert_eq!(breaker.generation(), model.generation, "step {}: reads made no transition", step);
        }
    }
}
