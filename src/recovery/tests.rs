//! Exhaustive test of the recovery machine: every sequence of events up to a
//! depth, checked against the rules of the module docs after every step.
//!
//! Depth 6 by default (about 24.1 million sequences over 17 events, under
//! the strict and under the adaptive rules);
//! `RECOVERY_MACHINE_DEPTH` sets another.

use std::time::Duration;

use tokio::time::Instant;

use super::machine::{Adaptive, Effect, Event, Kind, Machine, Rules};
use super::{RecoveryState, Seen, State, TriggerOutcome};
use crate::circuit_breaker::Breaker;
use crate::clock::ManualClock;

const S: Duration = Duration::from_secs(1);

const MAX_ATTEMPTS: u32 = 2;
const COOLDOWN: Duration = Duration::from_secs(60);
/// Adaptive rules small enough for the steps to cross them.
const ADAPTIVE: Adaptive = Adaptive {
    retry_first: Duration::from_secs(30),
    retry_max: Duration::from_secs(60),
    healthy_period: Duration::from_secs(90),
    min_cooldown: Duration::from_secs(5),
    flapping_window: Duration::from_secs(120),
};

fn rules(adaptive: bool) -> Rules {
    Rules {
        max_attempts: MAX_ATTEMPTS,
        cooldown: COOLDOWN,
        adaptive: adaptive.then_some(ADAPTIVE),
        jitter_seed: 7,
    }
}

/// The events the enumeration draws from. Attempt events are aimed at the
/// attempt the machine asked for last (or, when none is pending, at an old
/// cycle: stale).
#[derive(Clone, Copy, Debug)]
enum Step {
    TriggerManual,
    TriggerAutomatic,
    TriggerEarly,
    CheckFailed,
    CheckPassed,
    CallSucceeded,
    BreakerOpened,
    BreakerOpenedEarlier,
    BreakerHealed,
    AttemptStarted,
    AttemptOk,
    AttemptErr,
    StaleOk,
    Reset,
    ClosedByUs,
    Wait30,
    Wait61,
}

const STEPS: [Step; 17] = [
    Step::TriggerManual,
    Step::TriggerAutomatic,
    Step::TriggerEarly,
    Step::CheckFailed,
    Step::CheckPassed,
    Step::CallSucceeded,
    Step::BreakerOpened,
    Step::BreakerOpenedEarlier,
    Step::BreakerHealed,
    Step::AttemptStarted,
    Step::AttemptOk,
    Step::AttemptErr,
    Step::StaleOk,
    Step::Reset,
    Step::ClosedByUs,
    Step::Wait30,
    Step::Wait61,
];

#[derive(Clone)]
struct World {
    machine: Machine,
    now: Instant,
    start: Instant,
    /// The attempt the machine asked for and has not cancelled.
    pending: Option<(u64, u32)>,
    /// Alerts sent so far.
    alerts: u64,
    /// Alerts sent since the last recovery or reset.
    outage_alerts: u64,
    adaptive: bool,
}

fn check(world: &mut World, step: Step, path: &[Step]) {
    let before = world.machine.clone();
    let state_before = before.state(world.now);
    assert_eq!(
        before.state(world.now),
        state_before,
        "reading changes nothing"
    );
    let now = match step {
        Step::Wait30 => world.now + Duration::from_secs(30),
        Step::Wait61 => world.now + Duration::from_secs(61),
        _ => world.now,
    };
    let stale = (before.cycle().saturating_sub(1), 1);
    let target = world.pending.unwrap_or(stale);
    let event = match step {
        Step::TriggerManual => Event::Trigger(Kind::Manual),
        Step::TriggerAutomatic => Event::Trigger(Kind::Automatic),
        Step::TriggerEarly => Event::Trigger(Kind::Early),
        Step::CheckFailed => Event::Check { passed: false },
        Step::CheckPassed => Event::Check { passed: true },
        Step::CallSucceeded => Event::CallSucceeded,
        Step::BreakerOpened => Event::BreakerOpened { at: now },
        // The breaker's own opening time, earlier than the event: it may
        // even predate the end of the last outage recorded.
        Step::BreakerOpenedEarlier => Event::BreakerOpened {
            at: world.start.max(now - Duration::from_secs(45)),
        },
        Step::BreakerHealed => Event::BreakerHealed { at: now },
        Step::AttemptStarted => Event::AttemptStarted {
            cycle: target.0,
            attempt: target.1,
        },
        Step::AttemptOk => Event::AttemptDone {
            cycle: target.0,
            attempt: target.1,
            result: Ok(()),
        },
        Step::AttemptErr => Event::AttemptDone {
            cycle: target.0,
            attempt: target.1,
            result: Err("refused".into()),
        },
        Step::StaleOk => Event::AttemptDone {
            cycle: stale.0,
            attempt: stale.1,
            result: Ok(()),
        },
        Step::Reset => Event::Reset,
        Step::ClosedByUs => Event::ClosedByUs,
        Step::Wait30 | Step::Wait61 => Event::Tick,
    };
    // What the state is once time has passed, before the event itself.
    let projected = before.state(now);
    let reply = world.machine.on(event, now);
    world.now = now;
    let m = &world.machine;
    let after = m.state(now);
    let ctx = || format!("path {path:?} then {step:?}: {projected:?} -> {after:?}");

    // Trigger outcomes (module docs, "Triggers coalesce").
    match step {
        Step::TriggerManual => {
            let expected = if projected == RecoveryState::Recovering {
                TriggerOutcome::AlreadyRunning
            } else {
                TriggerOutcome::Started
            };
            assert_eq!(reply.outcome, Some(expected), "{}", ctx());
        }
        Step::TriggerEarly => {
            // Degraded, not down: a cycle when idle, nothing else, and no
            // outage begins or ends.
            let expected = match projected {
                RecoveryState::Recovering => TriggerOutcome::AlreadyRunning,
                RecoveryState::Idle => TriggerOutcome::Started,
                RecoveryState::Exhausted | RecoveryState::CoolingDown => TriggerOutcome::Ignored,
            };
            assert_eq!(reply.outcome, Some(expected), "{}", ctx());
            assert_eq!(m.down_since(), before.down_since(), "{}", ctx());
        }
        Step::TriggerAutomatic
        | Step::CheckFailed
        | Step::BreakerOpened
        | Step::BreakerOpenedEarlier => {
            let expected = match projected {
                RecoveryState::Recovering => TriggerOutcome::AlreadyRunning,
                RecoveryState::Exhausted => TriggerOutcome::Ignored,
                RecoveryState::CoolingDown => TriggerOutcome::Deferred,
                RecoveryState::Idle => TriggerOutcome::Started,
            };
            assert_eq!(reply.outcome, Some(expected), "{}", ctx());
        }
        _ => {}
    }
    if reply.outcome == Some(TriggerOutcome::Started) {
        assert_eq!(after, RecoveryState::Recovering, "{}", ctx());
    }

    // At most one cycle in flight: one attempt asked for at a time, always
    // of the current cycle, numbered 1 for a new cycle and one more after a
    // failed attempt, never past the maximum.
    let attempts: Vec<_> = reply
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Attempt { cycle, attempt } => Some((*cycle, *attempt)),
            _ => None,
        })
        .collect();
    assert!(attempts.len() <= 1, "{}", ctx());
    if reply.effects.contains(&Effect::Cancel) {
        world.pending = None;
    }
    if let Some(&(cycle, attempt)) = attempts.first() {
        assert_eq!(cycle, m.cycle(), "{}", ctx());
        assert_eq!(after, RecoveryState::Recovering, "{}", ctx());
        assert!((1..=MAX_ATTEMPTS).contains(&attempt), "{}", ctx());
        let next_of_failed = matches!(step, Step::AttemptErr) && world.pending.is_some();
        if next_of_failed {
            assert_eq!(attempt, target.1 + 1, "{}", ctx());
        } else {
            assert_eq!(attempt, 1, "a new cycle starts at 1: {}", ctx());
            assert!(cycle > before.cycle(), "{}", ctx());
        }
        world.pending = Some((cycle, attempt));
    } else if after != RecoveryState::Recovering
        || matches!(step, Step::AttemptOk | Step::AttemptErr) && world.pending == Some(target)
    {
        world.pending = None;
    }
    if after == RecoveryState::Recovering && state_before == RecoveryState::Recovering {
        assert_eq!(m.cycle(), before.cycle(), "cycle kept: {}", ctx());
    }

    // Results of another cycle or attempt change nothing.
    if matches!(step, Step::StaleOk)
        || matches!(
            step,
            Step::AttemptStarted | Step::AttemptOk | Step::AttemptErr
        ) && target == stale
            && world.pending.is_none()
            && before.cycle() != target.0
    {
        // (The ledger's clock moves with any event.)
        let rules_and_state = |m: &Machine| {
            let mut m = m.clone();
            m.ledger = Default::default();
            format!("{m:?}")
        };
        assert_eq!(rules_and_state(m), rules_and_state(&before), "{}", ctx());
    }

    // The breaker is closed only by a successful attempt, which starts the
    // cooldown.
    let closes = reply.effects.contains(&Effect::CloseBreaker);
    if closes {
        assert!(matches!(step, Step::AttemptOk), "{}", ctx());
        assert_eq!(after, RecoveryState::CoolingDown, "{}", ctx());
        let expected = if world.adaptive {
            // The minimum, doubled per other recovery in the window, capped.
            let others = m.recent_recoveries(now) as u32 - 1;
            (ADAPTIVE.min_cooldown * 2u32.pow(others)).min(COOLDOWN)
        } else {
            COOLDOWN
        };
        assert_eq!(m.cooldown_remaining(now), Some(expected), "{}", ctx());
    }

    // Exhaustion: the alert fires once per exhausted cycle.
    let alerts = reply
        .effects
        .iter()
        .filter(|e| **e == Effect::Alert)
        .count() as u64;
    world.alerts += alerts;
    let outage_began = before.down_since().is_none() && m.down_since().is_some();
    if m.recoveries > before.recoveries || matches!(step, Step::Reset) || outage_began {
        world.outage_alerts = 0;
    }
    let exhausted = m.exhausted_cycles - before.exhausted_cycles;
    assert!(exhausted <= 1, "{}", ctx());
    if world.adaptive {
        // Adaptive: the first exhaustion of an outage alerts, later ones
        // of the same outage do not; each retries later by itself.
        let first = world.outage_alerts == 0;
        assert_eq!(alerts, exhausted * u64::from(first), "{}", ctx());
        if exhausted == 1 {
            let next = m.retry_remaining(now).expect("a retry is planned");
            assert!(
                next >= ADAPTIVE.retry_first.mul_f64(0.9)
                    && next <= ADAPTIVE.retry_max.mul_f64(1.1),
                "retry in {next:?}: {}",
                ctx()
            );
        }
    } else {
        // Strict: every exhausted cycle alerts, and none retries.
        assert_eq!(world.alerts, m.exhausted_cycles, "{}", ctx());
        assert_eq!(m.retry_remaining(now), None, "{}", ctx());
    }
    world.outage_alerts += alerts;
    if alerts == 1 {
        assert_eq!(after, RecoveryState::Exhausted, "{}", ctx());
        assert_eq!(m.attempt, MAX_ATTEMPTS, "{}", ctx());
    }

    // The time in each state adds up to the time observed; downtime is
    // the sum of the outages recorded.
    let ledger = &m.ledger;
    assert_eq!(
        ledger.in_state.iter().sum::<Duration>(),
        now - ledger.since.expect("an event was seen"),
        "{}",
        ctx()
    );
    let observed = now - ledger.since.unwrap();
    assert_eq!(
        ledger.in_state_last_hour(now).iter().sum::<Duration>(),
        observed.min(super::machine::LAST_HOUR),
        "{}",
        ctx()
    );
    assert!(ledger.outages <= m.recoveries, "{}", ctx());
    assert!(ledger.downtime <= now - ledger.since.unwrap(), "{}", ctx());

    // Counters are monotonic, one recovery at most per event, and each MTTR
    // sample lies within the time that has passed.
    assert!(m.recoveries >= before.recoveries, "{}", ctx());
    assert!(m.recoveries - before.recoveries <= 1, "{}", ctx());
    assert!(m.failed_attempts >= before.failed_attempts, "{}", ctx());
    assert!(m.mttr.len() as u64 <= m.recoveries, "{}", ctx());
    let elapsed = now - world.start;
    assert!(m.mttr.iter().all(|d| *d <= elapsed), "{}", ctx());
    if m.recoveries > before.recoveries && before.down_since().is_some() {
        assert_eq!(m.down_since(), None, "the outage ended: {}", ctx());
        let sample = *m.mttr.back().expect("a sample");
        assert_eq!(
            sample,
            now - before.down_since().unwrap(),
            "MTTR is the outage's length: {}",
            ctx()
        );
    }
    if let Some(since) = m.down_since() {
        assert!(since <= now, "{}", ctx());
    }
    // A sign that the dependency is back ends the outage, whatever the
    // state (a cooldown included): one recovery, its true length. (A check
    // that passes while the breaker is still open is no such sign.)
    let back = match step {
        Step::BreakerHealed => true,
        Step::CheckPassed | Step::CallSucceeded => !before.breaker_down(),
        _ => false,
    };
    if back {
        assert_eq!(m.down_since(), None, "{}", ctx());
        if let Some(since) = before.down_since() {
            assert_eq!(m.recoveries, before.recoveries + 1, "{}", ctx());
            assert_eq!(m.mttr.back(), Some(&(now - since)), "{}", ctx());
        } else {
            assert_eq!(m.recoveries, before.recoveries, "{}", ctx());
        }
    }
    // An outage that ended by itself while nothing ran leaves no cycle.
    if back {
        assert_ne!(after, RecoveryState::Recovering, "{}", ctx());
        assert_ne!(after, RecoveryState::Exhausted, "{}", ctx());
    }
    // A deferral dropped at the end of the cooldown leaves no outage open.
    if reply
        .effects
        .contains(&Effect::Log(super::machine::Log::DeferredDropped))
    {
        assert_eq!(m.down_since(), None, "{}", ctx());
    }
    // An outage never starts before the last one recorded ended, so a
    // sample never counts time already counted.
    if let (Some(since), Some(end)) = (m.down_since(), m.last_outage_end()) {
        assert!(since >= end, "{}", ctx());
    }
    // Our close ends whatever re-opened the breaker since our success: no
    // deferral and no outage outlive it (unless a new cycle runs).
    if matches!(step, Step::ClosedByUs) && after != RecoveryState::Recovering {
        assert_eq!(m.down_since(), None, "{}", ctx());
        assert!(!m.breaker_down(), "{}", ctx());
    }
    // Manual intervention: a reset always leaves the machine idle.
    if matches!(step, Step::Reset) {
        assert_eq!(after, RecoveryState::Idle, "{}", ctx());
    }
}

fn explore(world: &World, path: &mut Vec<Step>, depth: usize, count: &mut u64) {
    if path.len() == depth {
        *count += 1;
        return;
    }
    for step in STEPS {
        let mut next = world.clone();
        check(&mut next, step, path);
        path.push(step);
        explore(&next, path, depth, count);
        path.pop();
    }
}

fn explore_all(adaptive: bool, default_depth: usize) {
    let depth = std::env::var("RECOVERY_MACHINE_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(default_depth);
    let start = Instant::now();
    let world = World {
        machine: Machine::new(rules(adaptive)),
        now: start,
        start,
        pending: None,
        alerts: 0,
        outage_alerts: 0,
        adaptive,
    };
    let mut count = 0;
    explore(&world, &mut Vec::new(), depth, &mut count);
    assert_eq!(count, (STEPS.len() as u64).pow(depth as u32));
}

#[test]
fn every_event_sequence_keeps_the_strict_rules() {
    explore_all(false, 6);
}

#[test]
fn every_event_sequence_keeps_the_adaptive_rules() {
    explore_all(true, 6);
}

/// Runs attempt 1 of the current cycle at `now`, with `result`.
fn attempt_one(m: &mut Machine, now: Instant, result: Result<(), String>) -> super::machine::Reply {
    let cycle = m.cycle();
    let _ = m.on(Event::AttemptStarted { cycle, attempt: 1 }, now);
    m.on(
        Event::AttemptDone {
            cycle,
            attempt: 1,
            result,
        },
        now,
    )
}

/// Adaptive: exhausted cycles of one outage retry on a growing, jittered
/// interval, alert once, and the interval starts over after a healthy
/// period.
#[test]
fn exhausted_cycles_retry_on_a_growing_interval_and_alert_once() {
    let t0 = Instant::now();
    let mut m = Machine::new(Rules {
        max_attempts: 1,
        ..rules(true)
    });
    let mut now = t0;
    let mut alerts = 0;
    let mut delays = Vec::new();
    let _ = m.on(Event::Check { passed: false }, now);
    for _ in 0..6 {
        let r = attempt_one(&mut m, now, Err("refused".into()));
        alerts += r.effects.iter().filter(|e| **e == Effect::Alert).count();
        let next = m.retry_remaining(now).expect("retry planned");
        delays.push(next);
        now += next;
        let r = m.on(Event::Tick, now);
        assert!(
            r.effects
                .iter()
                .any(|e| matches!(e, Effect::Attempt { .. })),
            "still down: the retry starts a cycle"
        );
    }
    assert_eq!(alerts, 1, "one alert per outage");
    let secs: Vec<f64> = delays.iter().map(Duration::as_secs_f64).collect();
    // 30 s, then 60 s (the cap), each within ±10%.
    assert!((27.0..=33.0).contains(&secs[0]), "{secs:?}");
    assert!(
        secs[1..].iter().all(|s| (54.0..=66.0).contains(s)),
        "{secs:?}"
    );
    assert!(secs.windows(2).any(|w| w[0] != w[1]), "jittered: {secs:?}");
    // The dependency comes back; after the healthy period the next outage
    // starts over at the first delay.
    let _ = m.on(Event::Check { passed: true }, now);
    assert_eq!(m.state(now), RecoveryState::Idle);
    now += ADAPTIVE.healthy_period;
    let _ = m.on(Event::Check { passed: false }, now);
    let r = attempt_one(&mut m, now, Err("refused".into()));
    assert!(r.effects.contains(&Effect::Alert), "a new outage alerts");
    let next = m.retry_remaining(now).unwrap().as_secs_f64();
    assert!((27.0..=33.0).contains(&next), "{next}");
}

/// Adaptive: the cooldown is short after a one-off failure and grows for a
/// dependency that keeps failing within the window.
#[test]
fn the_cooldown_grows_with_recent_recoveries() {
    let hour = Adaptive {
        flapping_window: Duration::from_secs(3600),
        ..ADAPTIVE
    };
    let mut m = Machine::new(Rules {
        adaptive: Some(hour),
        ..rules(true)
    });
    let mut now = Instant::now();
    let mut cooldowns = Vec::new();
    for _ in 0..6 {
        let _ = m.on(Event::Trigger(Kind::Automatic), now);
        let _ = attempt_one(&mut m, now, Ok(()));
        let cooldown = m.cooldown_remaining(now).unwrap();
        cooldowns.push(cooldown.as_secs());
        now += cooldown;
    }
    assert_eq!(cooldowns, [5, 10, 20, 40, 60, 60]);
    // Quiet for longer than the window: short again.
    now += hour.flapping_window;
    let _ = m.on(Event::Trigger(Kind::Automatic), now);
    let _ = attempt_one(&mut m, now, Ok(()));
    assert_eq!(m.cooldown_remaining(now), Some(ADAPTIVE.min_cooldown));
}

/// Found in the second review: a probe failing between our attempt's
/// success and our close re-opened the breaker; our close closed it, but
/// the deferred trigger of that re-opening was honoured after the cooldown:
/// a second recovery for one outage.
#[tokio::test(start_paused = true)]
async fn a_reopening_between_our_success_and_our_close_is_not_a_second_outage() {
    let manual = ManualClock::new();
    let b = Breaker::builder("m")
        .consecutive_failures(1)
        .open_duration(S)
        .clock(manual.clone())
        .build();
    let rx = b.watch();
    let sig = *rx.borrow();
    let mut st = State {
        machine: Machine::new(Rules {
            max_attempts: 3,
            ..rules(false)
        }),
        seen: Seen {
            generation: sig.word >> 3,
            opens: sig.opens,
            heals: sig.heals,
        },
        effects: Vec::new(),
    };
    let look = |st: &mut State| {
        let s = *rx.borrow();
        st.sync(Some(s), Instant::now());
    };
    // Closed -> Open: the task looks, a cycle starts.
    b.try_acquire().unwrap().failure();
    look(&mut st);
    let cycle = st.machine.cycle();
    assert!(
        st.effects
            .iter()
            .any(|e| matches!(e, Effect::Attempt { .. }))
    );
    st.effects.clear();
    tokio::time::advance(Duration::from_secs(5)).await;
    let _ = st
        .machine
        .on(Event::AttemptStarted { cycle, attempt: 1 }, Instant::now());
    // The attempt succeeds (step branch): sync, then AttemptDone.
    look(&mut st);
    let r = st.machine.on(
        Event::AttemptDone {
            cycle,
            attempt: 1,
            result: Ok(()),
        },
        Instant::now(),
    );
    assert!(r.effects.contains(&Effect::CloseBreaker));
    assert_eq!(st.machine.recoveries, 1);
    // Another thread, before the task carries out CloseBreaker: the open wait
    // is over, a probe fails (HalfOpen -> Open).
    manual.advance(S);
    b.try_acquire().unwrap().failure();
    // Loop top: sync (sees the re-opening), then CloseBreaker is carried out.
    look(&mut st);
    assert!(b.close(), "our close closes the re-opened breaker");
    // What the task does when its close closed the breaker.
    look(&mut st);
    let _ = st.machine.on(Event::ClosedByUs, Instant::now());
    st.effects.clear();
    // The breaker is Closed; nothing says the dependency is down. The cooldown ends.
    tokio::time::advance(Duration::from_secs(61)).await;
    let r = st.machine.on(Event::Tick, Instant::now());
    let started = r
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Attempt { .. }));
    if started {
        let cycle = st.machine.cycle();
        let _ = st
            .machine
            .on(Event::AttemptStarted { cycle, attempt: 1 }, Instant::now());
        let _ = st.machine.on(
            Event::AttemptDone {
                cycle,
                attempt: 1,
                result: Ok(()),
            },
            Instant::now(),
        );
    }
    assert!(
        !started,
        "a deferred trigger was honoured for a closed breaker: recoveries {}, mttr {:?}",
        st.machine.recoveries,
        st.machine.mttr()
    );
}

/// A cycle that waited on another replica of the fleet ends as that
/// replica's did: a success records the recovery and cools down without
/// closing the breaker (each replica probes its own); an exhaustion
/// exhausts without an alert (the other replica's was the fleet's); and
/// neither counts an attempt of this replica.
#[test]
fn a_cycle_ended_elsewhere_ends_here_without_close_alert_or_attempts() {
    for adaptive in [false, true] {
        let now = Instant::now();
        let mut m = Machine::new(rules(adaptive));
        let _ = m.on(Event::Trigger(Kind::Automatic), now);
        let cycle = m.cycle();
        let reply = m.on(
            Event::EndedElsewhere {
                cycle,
                attempt: 1,
                result: Ok(()),
            },
            now,
        );
        assert!(!reply.effects.contains(&Effect::CloseBreaker));
        assert_eq!(m.state(now), RecoveryState::CoolingDown);
        assert_eq!((m.recoveries, m.failed_attempts), (1, 0));

        let mut m = Machine::new(rules(adaptive));
        let _ = m.on(Event::Trigger(Kind::Automatic), now);
        let cycle = m.cycle();
        // A stale cycle's end changes nothing.
        let stale = m.on(
            Event::EndedElsewhere {
                cycle: cycle + 1,
                attempt: 1,
                result: Ok(()),
            },
            now,
        );
        assert!(stale.effects.is_empty());
        let reply = m.on(
            Event::EndedElsewhere {
                cycle,
                attempt: 1,
                result: Err("exhausted on replica 'a'".into()),
            },
            now,
        );
        assert!(!reply.effects.contains(&Effect::Alert));
        assert_eq!(m.state(now), RecoveryState::Exhausted);
        assert_eq!(m.exhausted_cycles, 1);
        assert_eq!(m.failed_attempts, 0);
        assert_eq!(m.last_error.as_deref(), Some("exhausted on replica 'a'"));
    }
}
