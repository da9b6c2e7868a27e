//! The fleet's background task: keeps a subscription to the outcomes,
//! catches up on what was published while it was away, refreshes the lease
//! holders it shows, sends this replica's heartbeat and reads the others'.
//! It reconnects, with a growing delay, while the coordinator is away.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Messages queued on the subscription taken at once.
const BATCH: usize = 1024;

pub(super) async fn run(inner: Arc<Inner>) {
    let mut retry = RETRY_FIRST;
    loop {
        if inner.stopped() {
            return;
        }
        let subscribed = inner.coordinator.subscribe().await;
        inner.observe(&subscribed);
        let mut subscription = match subscribed {
            Ok(s) => s,
            Err(_) => {
                let woken = inner.wake().notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if inner.stopped() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = woken => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = RETRY_FIRST;
        // Subscribed first, then caught up: nothing published in between
        // is missed (and a duplicate changes nothing).
        catch_up(&inner).await;
        let every = inner
            .settings
            .renew_every
            .min(inner.settings.heartbeat_every);
        let mut poll = tokio::time::interval(every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_beat = Instant::now();
        let mut known = inner.names().len();
        loop {
            let woken = inner.wake().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if inner.stopped() {
                return;
            }
            tokio::select! {
                message = subscription.next() => match message {
                    Some(super::Message::Outcome(heard_msg)) => {
                        // The messages queued already are taken too (up to
                        // a batch): one read per dependency of this
                        // replica heard of, however many messages (a flood
                        // on the channel is drained at memory speed, not at
                        // one round trip each).
                        let names = inner.names();
                        let mut heard: Vec<Arc<str>> = Vec::new();
                        let mut note = |d: Arc<str>| {
                            if names.contains(&d) && !heard.contains(&d) {
                                heard.push(d);
                            }
                        };
                        note(heard_msg.dependency);
                        for _ in 0..BATCH {
                            let Some(message) = subscription.try_next() else {
                                break;
                            };
                            match message {
                                super::Message::Outcome(p) => note(p.dependency),
                                super::Message::Command(command) => inner.apply(command),
                            }
                        }
                        for dependency in heard {
                            confirm(&inner, &dependency).await;
                        }
                    }
                    Some(super::Message::Command(command)) => inner.apply(command),
                    None => {
                        inner.observe::<()>(&Err(super::Unavailable::new("subscription lost")));
                        break;
                    }
                },
                _ = poll.tick() => {
                    refresh_holders(&inner).await;
                    if Instant::now() >= next_beat {
                        beat(&inner).await;
                        next_beat = Instant::now() + inner.settings.heartbeat_every;
                    }
                }
                () = woken => {
                    // A dependency registered: catch up on it.
                    let now_known = inner.names().len();
                    if now_known != known {
                        known = now_known;
                        catch_up(&inner).await;
                    }
                }
            }
        }
    }
}

/// An outcome heard on the subscription is only news that one was
/// published: anyone who reaches the coordinator can publish anything on
/// the channel (a forged outcome with a huge token would hide every later
/// one). What is delivered is the dependency's last outcome as the
/// coordinator accepted it, under the fencing.
async fn confirm(inner: &Inner, dependency: &Arc<str>) {
    let last = inner.coordinator.last_outcome(dependency).await;
    inner.observe(&last);
    if let Ok(Some(published)) = last {
        inner.deliver(published, true);
    }
}

/// Reads every dependency's last outcome and holder.
async fn catch_up(inner: &Inner) {
    for name in inner.names() {
        let last = inner.coordinator.last_outcome(&name).await;
        inner.observe(&last);
        if let Ok(Some(published)) = last {
            inner.deliver(published, false);
        }
    }
    refresh_holders(inner).await;
    beat(inner).await;
}

async fn refresh_holders(inner: &Inner) {
    for name in inner.names() {
        let holder = inner.coordinator.holder(&name).await;
        inner.observe(&holder);
        if let Ok(holder) = holder {
            inner.set_holder(&name, holder);
        }
    }
}

async fn beat(inner: &Inner) {
    let beat = inner.beat();
    let sent = inner
        .coordinator
        .heartbeat(&beat, inner.settings.heartbeat_ttl)
        .await;
    inner.observe(&sent);
    let replicas = inner.coordinator.replicas().await;
    inner.observe(&replicas);
    if let Ok(mut replicas) = replicas {
        replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
        inner.set_replicas(replicas);
    }
}
