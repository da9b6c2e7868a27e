//! The fleet's part of the admin surface (`/reliability`'s `fleet`
//! section, `/health`'s scope of each dependency that is down).

use serde_json::{Map, Value, json};

use super::{DependencyStatus, FleetStatus, Holder, MemberStatus, Outcome, Published};

fn holder_json(h: &Holder) -> Value {
    json!({
        "replica": &*h.replica,
        "token": h.token,
        "expires_in_seconds": h.expires_in.map(|d| d.as_secs_f64()),
    })
}

fn outcome_json(p: &Published, show: bool) -> Value {
    let (attempts, error) = match &p.outcome {
        Outcome::Started { attempt } => (*attempt, None),
        Outcome::AttemptFailed { attempt, error } => (*attempt, Some(error)),
        Outcome::Recovered { attempts } => (*attempts, None),
        Outcome::Exhausted { attempts, error } => (*attempts, Some(error)),
    };
    json!({
        "replica": &*p.replica,
        "token": p.token,
        "outcome": p.outcome.as_str(),
        "attempts": attempts,
        "error": if show { error.cloned() } else { None },
    })
}

/// A dependency's standing state: the command that set it, whether this
/// replica applied it and is in it now, and the replicas alive that are
/// not (by their last heartbeat, if it was sent since the command: an
/// older one says nothing of the state; this one as it is now).
fn standing_json(s: &FleetStatus, d: &DependencyStatus) -> Value {
    let Some(st) = &d.standing else {
        return Value::Null;
    };
    let want = st.command.action.breaker_state().map(|b| b.as_str());
    let mut diverging: Vec<&str> = s
        .replicas
        .iter()
        .filter(|r| r.replica != s.replica)
        .filter(|r| r.sent_at_ms >= st.command.sent_at_ms)
        .filter_map(|r| {
            let beat = r.dependencies.iter().find(|x| x.name == d.name)?;
            let breaker = beat.breaker.as_deref()?;
            (Some(breaker) != want).then_some(&*r.replica)
        })
        .collect();
    if st.diverges() {
        diverging.push(&s.replica);
    }
    diverging.sort_unstable();
    json!({
        "action": st.command.action.as_str(),
        "command": st.command.id,
        "from": &*st.command.from,
        // (a forged time must not overflow)
        "since": crate::util::rfc3339(
            std::time::UNIX_EPOCH
                .checked_add(std::time::Duration::from_millis(st.command.sent_at_ms))
                .unwrap_or(std::time::UNIX_EPOCH)
        ),
        "applied_here": st.applied_here,
        "breaker_here": st.breaker_here.map(|b| b.as_str()),
        "diverges_here": st.diverges(),
        "replicas_diverging": diverging,
    })
}

/// `/reliability`'s `fleet` section.
pub(crate) fn fleet_json(s: &FleetStatus, show: bool) -> Value {
    let mut deps = Map::new();
    for d in &s.dependencies {
        deps.insert(
            d.name.to_string(),
            json!({
                "lease_holder": d.holder.as_ref().map(holder_json),
                "last_outcome": d.last_outcome.as_ref().map(|p| outcome_json(p, show)),
                "replicas_reporting": d.reporting,
                "replicas_seeing_it_down": d.down_on.len(),
                "down_on": d.down_on.iter().map(|r| &**r).collect::<Vec<_>>(),
                "down_everywhere": d.down_everywhere(),
                "standing": standing_json(s, d),
            }),
        );
    }
    let replicas: Vec<Value> = s
        .replicas
        .iter()
        .map(|r| {
            let mut down = Map::new();
            for d in &r.dependencies {
                down.insert(
                    d.name.to_string(),
                    json!({
                        "breaker": d.breaker.as_deref(),
                        "recovery": &*d.recovery,
                        "down": d.down,
                    }),
                );
            }
            json!({ "replica": &*r.replica, "sent_at_ms": r.sent_at_ms, "dependencies": down })
        })
        .collect();
    json!({
        "replica": &*s.replica,
        "connected": s.connected,
        "disconnected_seconds": s.disconnected_for.map(|d| d.as_secs_f64()),
        "last_error": if show { s.last_error.clone() } else { None },
        "fallback": s.fallback.as_str(),
        "recovering_locally": !s.connected && s.fallback == super::Fallback::Local,
        "lease_ttl_seconds": s.lease_ttl.as_secs_f64(),
        "replicas_alive": s.replicas.len(),
        "standing_applied": s.standing_applied,
        "replicas": replicas,
        "dependencies": deps,
        "commands_applied": s.commands_applied.iter().map(|a| json!({
            "dependency": &*a.command.dependency,
            "action": a.command.action.as_str(),
            "from": &*a.command.from,
            "result": a.result,
            "command": a.command.id,
            "standing": a.standing,
            "at": crate::util::rfc3339(a.at),
        })).collect::<Vec<_>>(),
    })
}

/// A recovery's `fleet` entry in `/reliability`.
pub(crate) fn member_json(m: &MemberStatus, show: bool) -> Value {
    json!({
        "lease_holder": m.holder.as_ref().map(holder_json),
        "running_elsewhere": m.running_elsewhere.as_ref().map(|f| json!({
            "replica": &*f.holder.replica,
            "token": f.holder.token,
            "attempts_failed": f.attempts_failed,
            "last_error": if show { f.last_error.clone() } else { None },
        })),
        "recovering_locally": m.local_fallback,
    })
}

/// Whether `name`, down here, is down for the whole fleet
/// (`"fleet"`), only here (`"this_replica"`), or unknown (the coordinator
/// is unreachable, or no heartbeat reports it).
pub(crate) fn scope(s: &FleetStatus, name: &str) -> &'static str {
    let Some(d) = s.dependencies.iter().find(|d| &*d.name == name) else {
        return "unknown";
    };
    // The others as their heartbeats say; this replica as it is now (it
    // is asked only about a dependency down here, and its own heartbeat may
    // be a beat old).
    let me = &*s.replica;
    let others_reporting = s
        .replicas
        .iter()
        .filter(|r| &*r.replica != me && r.dependencies.iter().any(|x| &*x.name == name))
        .count();
    // Down here is what `/health` says (the breaker not closed, or the
    // check failing): another replica counts as down by its heartbeat's
    // `down`, or its breaker not closed (forced open or disabled there too:
    // a fleet-wide force-open is not "this replica" only).
    let others_down = s
        .replicas
        .iter()
        .filter(|r| {
            &*r.replica != me
                && r.dependencies.iter().any(|x| {
                    &*x.name == name
                        && (x.down || x.breaker.as_deref().is_some_and(|b| b != "closed"))
                })
        })
        .count();
    if !s.connected || others_reporting == 0 && d.reporting == 0 {
        "unknown"
    } else if others_down == others_reporting {
        "fleet"
    } else if others_down == 0 {
        "this_replica"
    } else {
        "some_replicas"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::scope;
    use crate::fleet::{DependencyBeat, DependencyStatus, Fallback, FleetStatus, Heartbeat};

    /// The fleet as replica `me` sees it: each replica's last heartbeat
    /// says whether the model server is down there.
    fn status(me: &str, beats: &[(&str, bool)]) -> FleetStatus {
        let replicas: Vec<Heartbeat> = beats
            .iter()
            .map(|(r, down)| {
                Heartbeat::new(
                    *r,
                    0,
                    vec![DependencyBeat::new("model_server", None, "idle", *down)],
                )
            })
            .collect();
        FleetStatus {
            replica: Arc::from(me),
            connected: true,
            disconnected_for: None,
            last_error: None,
            fallback: Fallback::Local,
            lease_ttl: Duration::from_secs(10),
            dependencies: vec![DependencyStatus {
                name: Arc::from("model_server"),
                holder: None,
                last_outcome: None,
                reporting: replicas.len(),
                down_on: beats
                    .iter()
                    .filter(|(_, down)| *down)
                    .map(|(r, _)| Arc::from(*r))
                    .collect(),
                standing: None,
            }],
            replicas,
            commands_applied: Vec::new(),
            standing_applied: true,
        }
    }

    #[test]
    fn this_replica_counts_as_down_whatever_its_last_heartbeat_said() {
        // a's heartbeat is a beat old (still up); b and c are down: the
        // dependency is down for the whole fleet.
        let s = status("a", &[("a", false), ("b", true), ("c", true)]);
        assert_eq!(scope(&s, "model_server"), "fleet");
        let s = status("a", &[("a", false), ("b", false), ("c", true)]);
        assert_eq!(scope(&s, "model_server"), "some_replicas");
        let s = status("a", &[("a", true), ("b", false), ("c", false)]);
        assert_eq!(scope(&s, "model_server"), "this_replica");
        // Alone in the fleet: down here is down for all of it.
        let s = status("a", &[("a", false)]);
        assert_eq!(scope(&s, "model_server"), "fleet");
        // Nobody reports it yet: unknown.
        let s = status("a", &[]);
        assert_eq!(scope(&s, "model_server"), "unknown");
        let mut s = status("a", &[("a", true), ("b", true)]);
        s.connected = false;
        assert_eq!(scope(&s, "model_server"), "unknown");
    }

    #[test]
    fn a_standing_state_lists_the_replicas_diverging_from_it() {
        use crate::circuit_breaker::State;
        use crate::fleet::{Action, Command, Standing};

        let mut s = status(
            "a",
            &[("a", false), ("b", false), ("c", false), ("d", false)],
        );
        let breakers = [Some("forced_open"), Some("closed"), Some("open"), None];
        for (r, b) in s.replicas.iter_mut().zip(breakers) {
            r.dependencies[0].breaker = b.map(Arc::from);
            r.sent_at_ms = 2_000;
        }
        let mut command = Command::new("model_server", Action::ForceOpen, "b");
        command.id = 42;
        command.sent_at_ms = 1_000;
        s.dependencies[0].standing = Some(Standing {
            command,
            applied_here: true,
            breaker_here: Some(State::ForcedOpen),
        });
        let json = super::fleet_json(&s, false);
        let standing = &json["dependencies"]["model_server"]["standing"];
        assert_eq!(standing["action"], "force_open");
        assert_eq!(standing["command"], 42);
        assert_eq!(standing["diverges_here"], false);
        // b reset alone, c's breaker opened on its own since: both
        // diverge; d reports no breaker; a (this one) is in it.
        assert_eq!(
            standing["replicas_diverging"],
            serde_json::json!(["b", "c"])
        );
        // A heartbeat sent before the command says nothing of it: not
        // listed (c's, here).
        s.replicas[2].sent_at_ms = 999;
        let json = super::fleet_json(&s, false);
        assert_eq!(
            json["dependencies"]["model_server"]["standing"]["replicas_diverging"],
            serde_json::json!(["b"])
        );
        s.replicas[2].sent_at_ms = 2_000;
        // A forged time must not overflow.
        s.dependencies[0]
            .standing
            .as_mut()
            .unwrap()
            .command
            .sent_at_ms = u64::MAX;
        let _ = super::fleet_json(&s, false);
        s.dependencies[0]
            .standing
            .as_mut()
            .unwrap()
            .command
            .sent_at_ms = 1_000;
        // This replica as it is now, not as its heartbeat said.
        s.dependencies[0].standing.as_mut().unwrap().breaker_here = Some(State::Closed);
        let json = super::fleet_json(&s, false);
        let standing = &json["dependencies"]["model_server"]["standing"];
        assert_eq!(standing["diverges_here"], true);
        assert_eq!(
            standing["replicas_diverging"],
            serde_json::json!(["a", "b", "c"])
        );
        // Not applied here yet (joining): pending, not diverging.
        s.dependencies[0].standing.as_mut().unwrap().applied_here = false;
        assert!(!s.dependencies[0].standing.as_ref().unwrap().diverges());
        s.dependencies[0].standing = None;
        let json = super::fleet_json(&s, false);
        assert!(json["dependencies"]["model_server"]["standing"].is_null());
    }

    #[test]
    fn a_breaker_forced_open_everywhere_is_down_for_the_fleet() {
        // A fleet-wide force-open: no heartbeat says down (a forced-open
        // breaker is not in `down`), but /health asks because the breaker
        // is not closed here, and it is not closed anywhere.
        let mut s = status("a", &[("a", false), ("b", false), ("c", false)]);
        for r in &mut s.replicas {
            r.dependencies[0].breaker = Some(Arc::from("forced_open"));
        }
        assert_eq!(scope(&s, "model_server"), "fleet");
        s.replicas[2].dependencies[0].breaker = Some(Arc::from("closed"));
        assert_eq!(scope(&s, "model_server"), "some_replicas");
    }
}
