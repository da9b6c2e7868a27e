//! The fleet's background task: keeps a subscription to the outcomes,
//! applies the fleet's standing states, catches up on what was published
//! while it was away, refreshes the lease holders it shows, sends this
//! replica's heartbeat and reads the others'. It reconnects, with a
//! growing delay, while the coordinator is away.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ApplyTo, Inner};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Messages queued on the subscription taken at once.
const BATCH: usize = 1024;

/// Commands older than this are not applied on a return: an operator's
/// action from long ago is history, not an instruction.
const CATCH_UP_WINDOW: Duration = Duration::from_secs(300);

pub(super) async fn run(inner: Arc<Inner>) {
    let mut retry = RETRY_FIRST;
    let mut joined = false;
    loop {
        if inner.stopped() {
            return;
        }
        // On joining, the commands already sent are history: their numbers
        // are read before subscribing, so that every command sent after is
        // either delivered or found by the catch-up below.
        if !joined {
            joined = join_commands(&inner).await;
        }
        let subscribed = if joined {
            inner.coordinator.subscribe().await
        } else {
            Err(super::Unavailable::new("the command log could not be read"))
        };
        inner.observe(&subscribed);
        let mut subscription = match subscribed {
            Ok(s) => s,
            Err(_) => {
                if !pause(&inner, &mut retry).await {
                    return;
                }
                continue;
            }
        };
        // Subscribed first, then the standing states read: a manual-state
        // command sent after the read is delivered (or found below), one
        // sent before it is in the read; each is applied in order of
        // number, whichever way it comes. Before the first heartbeat (in
        // `catch_up`): a replica that joins never reports a dependency as
        // it was before the fleet's state. If they cannot be read,
        // subscribe again.
        if !read_standing(&inner, ApplyTo::All).await {
            drop(subscription);
            if !pause(&inner, &mut retry).await {
                return;
            }
            continue;
        }
        // Subscribed first, then caught up: nothing published in between
        // is missed (and a duplicate changes nothing).
        catch_up(&inner).await;
        // The commands missed must be read before any delivered live is
        // applied (a later one would mark them seen): if the log cannot be
        // read, subscribe again.
        if !catch_up_commands(&inner).await {
            drop(subscription);
            if !pause(&inner, &mut retry).await {
                return;
            }
            continue;
        }
        retry = RETRY_FIRST;
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
                    // (a recovery attached, its wake-up not seen yet)
                    if inner.unsettled() && !read_standing(&inner, ApplyTo::Unsettled).await {
                        // Settled as it is (not kept unready by an
                        // outage), and subscribed again: the standing
                        // states are read and applied on that return.
                        inner.settle_unreachable();
                        break;
                    }
                    if Instant::now() >= next_beat {
                        // The standing states as they are now, for the
                        // report only (what changes them comes live).
                        read_standing(&inner, ApplyTo::ReportOnly).await;
                        beat(&inner).await;
                        next_beat = Instant::now() + inner.settings.heartbeat_every;
                    }
                }
                () = woken => {
                    // A recovery attached: its dependency is put in the
                    // fleet's standing state, then caught up on. If they
                    // cannot be read: as above, subscribed again.
                    if inner.unsettled() && !read_standing(&inner, ApplyTo::Unsettled).await {
                        inner.settle_unreachable();
                        break;
                    }
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

/// Waits before subscribing again (the delay grows), or until woken.
/// Returns `false` when the fleet stopped. The dependencies registered are
/// settled meanwhile: their standing states are applied on reconnection.
async fn pause(inner: &Inner, retry: &mut Duration) -> bool {
    inner.settle_unreachable();
    let woken = inner.wake().notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    if inner.stopped() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(*retry) => {}
        () = woken => {}
    }
    *retry = (*retry * 2).min(RETRY_MAX);
    true
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

/// Marks the commands sent before this replica joined as seen. Returns
/// whether the log was read.
async fn join_commands(inner: &Inner) -> bool {
    let recent = match inner.coordinator.recent_commands().await {
        Ok(recent) => recent,
        Err(e) => {
            inner.observe::<()>(&Err(e));
            return false;
        }
    };
    // A success is not observed: the replica is connected once it is
    // subscribed (a command sent now would not reach it live yet).
    if let Some(last) = recent.iter().map(|c| c.id).max() {
        inner
            .last_command
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
    }
    true
}

/// Applies, in order, the commands sent while this replica was away (or
/// between joining and subscribing): those numbered after the last it saw,
/// sent within the window; older ones are only marked seen. Returns
/// whether the log was read.
async fn catch_up_commands(inner: &Inner) -> bool {
    let recent = inner.coordinator.recent_commands().await;
    inner.observe(&recent);
    let Ok(recent) = recent else { return false };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let oldest = now_ms.saturating_sub(CATCH_UP_WINDOW.as_millis() as u64);
    for command in recent {
        if command.sent_at_ms >= oldest {
            inner.apply(command);
        } else {
            inner
                .last_command
                .fetch_max(command.id, std::sync::atomic::Ordering::AcqRel);
        }
    }
    true
}

/// Reads the standing states and applies them as `apply_to` says. Returns
/// whether they were read. A failed read is tried again once at once, unreported: the first
/// call after the coordinator came back may fail on a connection from
/// before (which a coordinator then drops), and the pause before
/// subscribing again may have grown to seconds meanwhile.
async fn read_standing(inner: &Inner, apply_to: ApplyTo) -> bool {
    // This replica's dependencies only: a standing hash of any size costs
    // one field each.
    let names = inner.names();
    let mut read = inner.coordinator.standing(&names).await;
    if read.is_err() {
        read = inner.coordinator.standing(&names).await;
    }
    inner.observe(&read);
    match read {
        Ok(records) => {
            inner.sync_standing(&records, apply_to);
            true
        }
        Err(_) => false,
    }
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
