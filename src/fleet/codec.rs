//! The text forms of outcomes and heartbeats, for coordinators that store
//! strings: tab-separated fields (tabs, newlines and backslashes escaped),
//! a version first, so that a reader can refuse what it cannot read.

#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::Arc;

use super::{Action, Command, DependencyBeat, Heartbeat, Outcome, Published};

const VERSION: &str = "v1";

fn escape(field: &str, out: &mut String) {
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn join(fields: &[&str]) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        escape(f, &mut out);
    }
    out
}

fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\t' => fields.push(String::new()),
            '\\' => {
                let last = fields.last_mut().expect("one field at least");
                match chars.next() {
                    Some('t') => last.push('\t'),
                    Some('n') => last.push('\n'),
                    Some(other) => last.push(other),
                    None => {}
                }
            }
            c => fields.last_mut().expect("one field at least").push(c),
        }
    }
    fields
}

/// `Published` as one line.
pub(crate) fn encode_published(p: &Published) -> String {
    let token = p.token.to_string();
    let (attempt, error) = match &p.outcome {
        Outcome::Started { attempt } => (*attempt, ""),
        Outcome::AttemptFailed { attempt, error } => (*attempt, error.as_str()),
        Outcome::Recovered { attempts } => (*attempts, ""),
        Outcome::Exhausted { attempts, error } => (*attempts, error.as_str()),
    };
    let attempt = attempt.to_string();
    join(&[
        VERSION,
        &p.dependency,
        &p.replica,
        &token,
        p.outcome.as_str(),
        &attempt,
        error,
    ])
}

/// The line [`encode_published`] wrote, or `None`.
pub(crate) fn decode_published(line: &str) -> Option<Published> {
    let f = split(line);
    if f.len() != 7 || f[0] != VERSION {
        return None;
    }
    let token: u64 = f[3].parse().ok()?;
    let n: u32 = f[5].parse().ok()?;
    let error = f[6].clone();
    let outcome = match f[4].as_str() {
        "started" => Outcome::Started { attempt: n },
        "attempt_failed" => Outcome::AttemptFailed { attempt: n, error },
        "recovered" => Outcome::Recovered { attempts: n },
        "exhausted" => Outcome::Exhausted { attempts: n, error },
        _ => return None,
    };
    Some(Published {
        dependency: Arc::from(f[1].as_str()),
        replica: Arc::from(f[2].as_str()),
        token,
        outcome,
    })
}

/// A command's line, as the coordinator sends it: `v2`, its number and
/// when it was sent (both given by the coordinator), then
/// [`encode_command_fields`].
#[cfg(test)]
pub(crate) fn encode_command(c: &Command) -> String {
    format!(
        "v2\t{}\t{}\t{}",
        c.id,
        c.sent_at_ms,
        encode_command_fields(c)
    )
}

/// A command's fields after its number and time: the dependency, the
/// action, the replica it came from.
pub(crate) fn encode_command_fields(c: &Command) -> String {
    join(&[&c.dependency, c.action.as_str(), &c.from])
}

/// A command's line, or `None`.
pub(crate) fn decode_command(line: &str) -> Option<Command> {
    let f = split(line);
    if f.len() != 6 || f[0] != "v2" {
        return None;
    }
    Some(Command {
        id: f[1].parse().ok()?,
        sent_at_ms: f[2].parse().ok()?,
        dependency: Arc::from(f[3].as_str()),
        action: Action::from_name(&f[4])?,
        from: Arc::from(f[5].as_str()),
    })
}

/// A dependency's standing state, as a coordinator that stores strings
/// keeps it: `field` the dependency, `value` its command's line. `None`
/// for anything odd (not UTF-8, not a command line, a trigger, no number,
/// or a line about another dependency than its field).
pub(crate) fn decode_standing(field: &[u8], value: &[u8]) -> Option<Command> {
    let command = decode_command(std::str::from_utf8(value).ok()?)?;
    (command.action.is_manual_state() && command.id != 0 && command.dependency.as_bytes() == field)
        .then_some(command)
}

/// A heartbeat as lines: the replica first, then one per dependency.
pub(crate) fn encode_heartbeat(beat: &Heartbeat) -> String {
    let mut out = join(&[VERSION, &beat.replica, &beat.sent_at_ms.to_string()]);
    for d in &beat.dependencies {
        out.push('\n');
        out.push_str(&join(&[
            &d.name,
            d.breaker.as_deref().unwrap_or(""),
            &d.recovery,
            if d.down { "1" } else { "0" },
        ]));
    }
    out
}

/// The lines [`encode_heartbeat`] wrote, or `None`.
pub(crate) fn decode_heartbeat(text: &str) -> Option<Heartbeat> {
    let mut lines = text.split('\n');
    let head = split(lines.next()?);
    if head.len() != 3 || head[0] != VERSION {
        return None;
    }
    let sent_at_ms = head[2].parse().ok()?;
    let mut dependencies = Vec::new();
    for line in lines {
        let f = split(line);
        if f.len() != 4 {
            return None;
        }
        dependencies.push(DependencyBeat {
            name: Arc::from(f[0].as_str()),
            breaker: (!f[1].is_empty()).then(|| Arc::from(f[1].as_str())),
            recovery: Arc::from(f[2].as_str()),
            down: f[3] == "1",
        });
    }
    Some(Heartbeat {
        replica: Arc::from(head[1].as_str()),
        sent_at_ms,
        dependencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Lease;

    #[test]
    fn outcomes_round_trip() {
        let lease = Lease::new("model\tserver", "pod-1:a", 42);
        for outcome in [
            Outcome::Started { attempt: 1 },
            Outcome::AttemptFailed {
                attempt: 2,
                error: "refused\nline two \\ end".into(),
            },
            Outcome::Recovered { attempts: 3 },
            Outcome::Exhausted {
                attempts: 3,
                error: String::new(),
            },
        ] {
            let p = Published::new(&lease, outcome);
            assert_eq!(decode_published(&encode_published(&p)), Some(p));
        }
        assert_eq!(decode_published("v2\ta\tb\t1\tstarted\t1\t"), None);
        assert_eq!(decode_published("garbage"), None);
    }

    #[test]
    fn commands_round_trip() {
        for action in [
            Action::Reset,
            Action::ForceOpen,
            Action::Disable,
            Action::Trigger,
        ] {
            let mut c = Command::new("model_server", action, "pod\t1");
            c.id = 42;
            assert_eq!(decode_command(&encode_command(&c)), Some(c));
        }
        assert_eq!(decode_command("v2\t1\t2\tm\texplode\tpod"), None);
        assert_eq!(decode_command("v2\tx\t2\tm\treset\tpod"), None);
        assert_eq!(decode_command("v1\tm\treset\tpod"), None);
    }

    #[test]
    fn standing_states_decode_and_odd_ones_are_skipped() {
        let mut c = Command::new("model\tserver", Action::ForceOpen, "pod-1");
        c.id = 1_700_000_000_123;
        c.sent_at_ms = 1_700_000_000_000;
        let line = encode_command(&c);
        assert_eq!(
            decode_standing(b"model\tserver", line.as_bytes()),
            Some(c.clone())
        );
        for action in [Action::Reset, Action::Disable] {
            let mut d = c.clone();
            d.action = action;
            assert_eq!(
                decode_standing(b"model\tserver", encode_command(&d).as_bytes()),
                Some(d)
            );
        }
        // Filed under another dependency: a forged or misplaced line.
        assert_eq!(decode_standing(b"asr", line.as_bytes()), None);
        // A trigger does not stand; a line without a number orders nothing.
        let mut t = c.clone();
        t.action = Action::Trigger;
        assert_eq!(
            decode_standing(b"model\tserver", encode_command(&t).as_bytes()),
            None
        );
        let mut z = c.clone();
        z.id = 0;
        assert_eq!(
            decode_standing(b"model\tserver", encode_command(&z).as_bytes()),
            None
        );
        // Not UTF-8, not a line, numbers out of range: skipped, no panic.
        for value in [
            &b"\xff\xfe"[..],
            b"",
            b"v2",
            b"v2\t\t\t\t\t",
            b"v2\t99999999999999999999999\t1\tm\tforce_open\tp",
            b"v2\t-1\t1\tm\tforce_open\tp",
            b"v2\t1\t1\tm\tforce_open\tp\textra",
            b"\\\\\\",
        ] {
            assert_eq!(decode_standing(b"m", value), None, "{value:?}");
        }
        assert_eq!(
            decode_standing(b"m", b"v2\t5\t1\tm\tdisable\tp").map(|c| (c.id, c.action)),
            Some((5, Action::Disable))
        );
    }

    #[test]
    fn heartbeats_round_trip() {
        let beat = Heartbeat::new(
            "pod-1",
            1_700_000_000_000,
            vec![
                DependencyBeat::new("model_server", Some("open".into()), "recovering", true),
                DependencyBeat::new("data\nbase", None, "idle", false),
            ],
        );
        assert_eq!(decode_heartbeat(&encode_heartbeat(&beat)), Some(beat));
        let empty = Heartbeat::new("pod-2", 1, vec![]);
        assert_eq!(decode_heartbeat(&encode_heartbeat(&empty)), Some(empty));
    }
}
