//! A recovery's side of its fleet: taking the lease before a cycle's first
//! attempt (or again, if it was lost), waiting on another replica's cycle,
//! publishing this replica's outcomes, and probing the breaker when another
//! replica recovered the dependency.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{RecoveryState, Shared};
use crate::fleet::{Acquire, Fallback, Following, Guard, Holder, Member, Outcome, View};

/// What a cycle's turn in the fleet came to.
pub(super) enum Turn {
    /// Run the attempt: under this lease, or (`None`) on this replica's own
    /// while the coordinator is unreachable and the fallback is local.
    Run(Option<Guard>),
    /// The fleet's cycle, which this one waited on, ended on another
    /// replica.
    Ended {
        holder: Arc<str>,
        result: Result<(), String>,
    },
}

pub(super) type TurnFuture = Pin<Box<dyn Future<Output = Turn> + Send>>;

/// The lease this replica holds for its cycle `.0`.
pub(super) type Held = Option<(u64, Guard)>;

/// Whether attempt of `cycle` needs a turn: the recovery is in a fleet and
/// does not hold a live lease for the cycle.
pub(super) fn needs_turn(shared: &Shared, held: &Held, cycle: u64) -> Option<Member> {
    let member = shared.fleet.as_ref()?;
    let ours = held
        .as_ref()
        .is_some_and(|(c, guard)| *c == cycle && !guard.is_lost());
    (!ours).then(|| member.clone())
}

/// Takes the lease, or waits on the replica that holds it until its cycle
/// ends or its lease is free.
pub(super) fn turn(member: Member) -> TurnFuture {
    Box::pin(take_turn(member))
}

/// Clears what the replica says it waits on when the turn ends, or is
/// dropped with its cycle (cancelled).
struct ClearFollowing(Member);

impl Drop for ClearFollowing {
    fn drop(&mut self) {
        self.0.set_following(None);
    }
}

async fn take_turn(member: Member) -> Turn {
    let _clear = ClearFollowing(member.clone());
    let inner = member.inner().clone();
    let settings = inner.settings;
    let name = member.name.clone();
    let mut view = member.view.clone();
    let mut followed: Option<u64> = None;
    let mut fell_back = false;
    loop {
        // The fleet's cycle recovered the dependency a moment ago (our
        // cycle started as its outcome was on its way): nothing to run, the
        // breaker probes.
        if let Some(holder) = just_recovered(
            &view.borrow_and_update(),
            &inner.replica,
            settings.renew_every,
        ) {
            member.set_following(None);
            return Turn::Ended {
                holder,
                result: Ok(()),
            };
        }
        let asked = Instant::now();
        let acquired = inner
            .coordinator
            .acquire(&name, &inner.replica, settings.lease_ttl)
            .await;
        inner.observe(&acquired);
        match acquired {
            Ok(Acquire::Granted(lease)) => {
                member.set_following(None);
                inner.set_holder(
                    &name,
                    Some(Holder::new(
                        lease.replica(),
                        lease.token(),
                        Some(settings.lease_ttl),
                    )),
                );
                tracing::info!(
                    dependency = &*name,
                    replica = &*inner.replica,
                    token = lease.token(),
                    "Recovery lease for '{name}' taken: this replica recovers it for the fleet"
                );
                return Turn::Run(Some(Guard::spawn(member.fleet.clone(), lease, asked)));
            }
            Ok(Acquire::HeldBy(holder)) if holder.replica == inner.replica => {
                // Our own last cycle's lease, its release still on its way
                // (or lost with the connection: then it expires).
                let pause = settings
                    .renew_every
                    .min(std::time::Duration::from_millis(50));
                tokio::time::sleep(pause).await;
            }
            Ok(Acquire::HeldBy(holder)) => {
                if followed != Some(holder.token) {
                    followed = Some(holder.token);
                    tracing::info!(
                        dependency = &*name,
                        holder = &*holder.replica,
                        token = holder.token,
                        "Recovery of '{name}' is running on replica '{}': waiting for its outcome",
                        holder.replica
                    );
                    #[cfg(feature = "metrics")]
                    metrics::counter!(
                        crate::fleet::FLEET_RUNNING_ELSEWHERE,
                        "dependency" => name.to_string()
                    )
                    .increment(1);
                    member.set_following(Some(Following {
                        holder: holder.clone(),
                        attempts_failed: 0,
                        last_error: None,
                    }));
                }
                if let Some(ended) = follow(&member, &mut view, &holder).await {
                    member.set_following(None);
                    return ended;
                }
            }
            Err(e) => match settings.fallback {
                Fallback::Local => {
                    member.set_following(None);
                    tracing::warn!(
                        dependency = &*name,
                        error = %e,
                        "Fleet coordinator unreachable: recovering '{name}' locally"
                    );
                    return Turn::Run(None);
                }
                _ => {
                    if !fell_back {
                        fell_back = true;
                        tracing::warn!(
                            dependency = &*name,
                            error = %e,
                            "Fleet coordinator unreachable: recovery of '{name}' waits for it (fallback: wait)"
                        );
                    }
                    tokio::time::sleep(settings.renew_every).await;
                }
            },
        }
    }
}

/// Another replica's `Recovered`, received within `window`.
fn just_recovered(view: &View, me: &str, window: std::time::Duration) -> Option<Arc<str>> {
    let (published, at) = view.last.as_ref()?;
    (matches!(published.outcome, Outcome::Recovered { .. })
        && &*published.replica != me
        && at.is_some_and(|at| at.elapsed() < window))
    .then(|| published.replica.clone())
}

/// Waits on `holder`'s cycle for a renewal interval: its end, or `None`
/// (time to look at the lease again).
async fn follow(
    member: &Member,
    view: &mut watch::Receiver<View>,
    holder: &Holder,
) -> Option<Turn> {
    let inner = member.inner();
    let deadline = Instant::now() + inner.settings.renew_every;
    loop {
        let news = view
            .borrow_and_update()
            .last
            .as_ref()
            .filter(|(p, _)| p.token == holder.token)
            .map(|(p, _)| p.outcome.clone());
        match news {
            Some(Outcome::Recovered { .. }) => {
                return Some(Turn::Ended {
                    holder: holder.replica.clone(),
                    result: Ok(()),
                });
            }
            Some(Outcome::Exhausted { attempts, error }) => {
                return Some(Turn::Ended {
                    holder: holder.replica.clone(),
                    result: Err(format!(
                        "exhausted on replica '{}' after {attempts} attempts: {error}",
                        holder.replica
                    )),
                });
            }
            Some(Outcome::AttemptFailed { attempt, error }) => {
                member.set_following(Some(Following {
                    holder: holder.clone(),
                    attempts_failed: attempt,
                    last_error: Some(error),
                }));
            }
            _ => {}
        }
        // The coordinator went away: look at the lease again at once (the
        // fallback decides).
        if !inner.connected() {
            return None;
        }
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(deadline).await;
                    return None;
                }
            }
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// Publishes what the machine made of an attempt of `cycle` under the
/// lease held for it, and lets the lease go when the cycle is over.
pub(super) fn after_attempt(
    held: &mut Held,
    cycle: u64,
    attempt: u32,
    result: &Result<(), String>,
    state: RecoveryState,
    current: bool,
) {
    let Some((c, guard)) = held.as_ref() else {
        return;
    };
    if *c != cycle || !current {
        return;
    }
    match result {
        Ok(()) => {
            guard.publish(Outcome::Recovered { attempts: attempt });
            *held = None;
        }
        Err(error) if state == RecoveryState::Recovering => {
            guard.publish(Outcome::AttemptFailed {
                attempt,
                error: error.clone(),
            });
        }
        Err(error) => {
            guard.publish(Outcome::Exhausted {
                attempts: attempt,
                error: error.clone(),
            });
            *held = None;
        }
    }
}

/// Publishes the start of an attempt of `cycle`.
pub(super) fn attempt_started(held: &Held, cycle: u64, attempt: u32) {
    if let Some((c, guard)) = held.as_ref() {
        if *c == cycle {
            guard.publish(Outcome::Started { attempt });
        }
    }
}

/// Lets the lease go when its cycle ended otherwise (cancelled: the
/// dependency came back by another path, or a reset). When the watched
/// breaker is closed again the dependency is back, and the fleet is told.
pub(super) fn release_if_over(shared: &Shared, held: &mut Held, cycle: u64, recovering: bool) {
    let over = held
        .as_ref()
        .is_some_and(|(c, _)| *c != cycle || !recovering);
    if !over {
        return;
    }
    if let Some((_, guard)) = held.take() {
        let closed = shared
            .breaker
            .as_ref()
            .and_then(|(weak, _)| weak.upgrade())
            .is_some_and(|b| b.state() == crate::circuit_breaker::State::Closed);
        if closed {
            let attempts = crate::sync::lock(&shared.state).machine.attempt;
            guard.publish(Outcome::Recovered { attempts });
        }
    }
}

/// Another replica's recovery succeeded: probe this replica's breaker at
/// once rather than wait out its open duration. `seen` is the last outcome
/// handled (its token and kind).
pub(super) fn on_news(
    shared: &Shared,
    view: &watch::Receiver<View>,
    seen: &mut Option<(u64, &'static str)>,
) {
    let Some(member) = shared.fleet.as_ref() else {
        return;
    };
    let news = view
        .borrow()
        .last
        .as_ref()
        .map(|(p, at)| (p.clone(), at.is_some()));
    let Some((published, fresh)) = news else {
        return;
    };
    let key = (published.token, published.outcome.as_str());
    if *seen == Some(key) {
        return;
    }
    *seen = Some(key);
    if !fresh || published.replica == member.inner().replica {
        return;
    }
    if let Outcome::Recovered { .. } = published.outcome {
        let breaker = shared.breaker.as_ref().and_then(|(weak, _)| weak.upgrade());
        if let Some(breaker) = breaker {
            if breaker.probe_now() {
                let name = &*shared.name;
                tracing::info!(
                    dependency = name,
                    holder = &*published.replica,
                    "Recovery of '{name}' succeeded on replica '{}': probing the breaker now",
                    published.replica
                );
            }
        }
    }
}
