//! Standing states: what this replica knows of each dependency's fleet-wide
//! manual state, and the rules, by command number, that decide what a
//! manual-state command (reset, force-open, disable) does here, whether it
//! was delivered (live or on a catch-up) or found standing (read when this
//! replica joined, returned, or on a periodic read).
//!
//! The numbers are the coordinator's, given in one atomic step with the
//! standing state, so "the latest" is the highest number: a replica
//! applies each dependency's manual-state commands only in increasing
//! number, however they reach it, and ends in the state of the highest.

use super::{Action, Command};

/// How a manual-state command reached this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// Delivered as it was sent, or found in the command log on a
    /// catch-up.
    Delivered,
    /// Read as the dependency's standing state.
    Standing,
}

/// What a manual-state command does here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing: it, or a later one for the dependency, was applied here
    /// already (or it has no number to order it by).
    Skip,
    /// Noted as seen; nothing to do (a reset standing for a replica that
    /// the fleet never put in a state: nothing of the fleet's to clear).
    Note,
    /// As the command says (a reset resets the breaker and the recovery),
    /// as a command from another replica always did.
    Full,
    /// Only what is not so already: the breaker forced open or disabled
    /// unless it is; a reset only if the breaker is forced open or disabled
    /// (it clears a manual state, it does not close a breaker that opened
    /// on its own since).
    Converge,
}

/// One dependency's manual state as this replica knows it.
#[derive(Clone, Debug, Default)]
pub(super) struct Manual {
    /// The highest number of a manual-state command for the dependency
    /// that this replica applied, or noted (0: none).
    seen: u64,
    /// Whether the last one seen put the breaker in a fleet state
    /// (force-open, disable) rather than clearing it (reset).
    in_fleet_state: bool,
    /// The latest manual-state command known for the dependency (a reset
    /// included): as last read from the coordinator, or delivered since.
    pub(super) known: Option<Command>,
    /// The standing states were read (and applied) since the dependency's
    /// recovery attached, or an attempt found the coordinator unreachable.
    pub(super) settled: bool,
}

impl Manual {
    /// Decides what `command` does here, and notes it as seen.
    pub(super) fn decide(&mut self, command: &Command, ours: bool, via: Via) -> Step {
        debug_assert!(command.action.is_manual_state());
        if command.id == 0 {
            // A coordinator that does not number its commands: nothing to
            // order by. Delivered: as before standing states (this
            // replica's own was applied where it was made). Standing:
            // never applied (it would be applied again on every read).
            return match (via, ours) {
                (Via::Delivered, false) => Step::Full,
                _ => Step::Skip,
            };
        }
        if command.id <= self.seen {
            return Step::Skip;
        }
        self.seen = command.id;
        self.note(command);
        let was = self.in_fleet_state;
        self.in_fleet_state = command.action != Action::Reset;
        match via {
            // Another replica's command, in order: as it says.
            Via::Delivered if !ours => Step::Full,
            // This replica's own, applied where it was made: converge in
            // case another replica's earlier command was applied here
            // between that and now (two operators at once).
            Via::Delivered => Step::Converge,
            Via::Standing if command.action == Action::Reset && !was => Step::Note,
            Via::Standing => Step::Converge,
        }
    }

    /// Keeps `command` as the latest known, unless a later one is.
    pub(super) fn note(&mut self, command: &Command) {
        if self.known.as_ref().is_none_or(|k| k.id <= command.id) {
            self.known = Some(command.clone());
        }
    }

    /// What a read of the standing states found for the dependency: the
    /// record, or none (never set, or lost with Redis's data).
    pub(super) fn read(&mut self, record: Option<&Command>) {
        match record {
            Some(record) => self.note(record),
            None => self.known = None,
        }
    }

    /// Whether the command numbered `id` was applied, or passed, here.
    pub(super) fn applied(&self, id: u64) -> bool {
        id != 0 && self.seen >= id
    }
}

/// The standing state each dependency's record says, among `records` (as
/// read; odd ones are skipped): the one with the highest number.
pub(super) fn record_for<'a>(records: &'a [Command], dependency: &str) -> Option<&'a Command> {
    records
        .iter()
        .filter(|c| &*c.dependency == dependency && c.action.is_manual_state() && c.id != 0)
        .max_by_key(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(action: Action, id: u64, from: &str) -> Command {
        let mut c = Command::new("model_server", action, from);
        c.id = id;
        c
    }

    #[test]
    fn a_joining_replica_applies_a_standing_force_open_once() {
        let mut m = Manual::default();
        let fo = cmd(Action::ForceOpen, 10, "a");
        assert_eq!(m.decide(&fo, false, Via::Standing), Step::Converge);
        assert!(m.applied(10));
        // Read again (periodically, or on a return): not applied again, so
        // a local reset since is not fought.
        assert_eq!(m.decide(&fo, false, Via::Standing), Step::Skip);
        // Delivered live after it was found standing (it was queued on the
        // subscription): applied once only.
        assert_eq!(m.decide(&fo, false, Via::Delivered), Step::Skip);
    }

    #[test]
    fn a_stale_standing_read_then_a_later_reset_ends_reset() {
        // The read gave the force-open (10); the reset (11) was sent
        // meanwhile and is delivered after.
        let mut m = Manual::default();
        assert_eq!(
            m.decide(&cmd(Action::ForceOpen, 10, "a"), false, Via::Standing),
            Step::Converge
        );
        assert_eq!(
            m.decide(&cmd(Action::Reset, 11, "b"), false, Via::Delivered),
            Step::Full
        );
        assert_eq!(m.known.as_ref().unwrap().action, Action::Reset);
    }

    #[test]
    fn an_earlier_command_delivered_after_a_later_standing_state_is_skipped() {
        // Reset (5) and force-open (6) sent after this replica subscribed
        // and before it read the standing states: the read gives the
        // force-open; the two delivered after it change nothing.
        let mut m = Manual::default();
        assert_eq!(
            m.decide(&cmd(Action::ForceOpen, 6, "a"), false, Via::Standing),
            Step::Converge
        );
        assert_eq!(
            m.decide(&cmd(Action::Reset, 5, "b"), false, Via::Delivered),
            Step::Skip
        );
        assert_eq!(
            m.decide(&cmd(Action::ForceOpen, 6, "a"), false, Via::Delivered),
            Step::Skip
        );
        assert_eq!(m.known.as_ref().unwrap().id, 6);
    }

    #[test]
    fn a_standing_reset_clears_only_a_state_the_fleet_put_here() {
        // Joining after a force-open and its reset: nothing to clear.
        let mut fresh = Manual::default();
        assert_eq!(
            fresh.decide(&cmd(Action::Reset, 11, "b"), false, Via::Standing),
            Step::Note
        );
        assert!(fresh.applied(11));
        // Away (past the catch-up window) while a force-open it had applied
        // was reset: cleared on its return.
        let mut away = Manual::default();
        assert_eq!(
            away.decide(&cmd(Action::ForceOpen, 10, "a"), false, Via::Delivered),
            Step::Full
        );
        assert_eq!(
            away.decide(&cmd(Action::Reset, 11, "b"), false, Via::Standing),
            Step::Converge
        );
        // Then a new force-open while away again: applied on the return.
        assert_eq!(
            away.decide(&cmd(Action::ForceOpen, 12, "a"), false, Via::Standing),
            Step::Converge
        );
    }

    #[test]
    fn this_replicas_own_commands_converge() {
        let mut m = Manual::default();
        // b's force-open (10) delivered here after this replica reset
        // locally and sent its reset (11): its echo resets again.
        assert_eq!(
            m.decide(&cmd(Action::ForceOpen, 10, "b"), false, Via::Delivered),
            Step::Full
        );
        assert_eq!(
            m.decide(&cmd(Action::Reset, 11, "a"), true, Via::Delivered),
            Step::Converge
        );
        // Its own force-open found standing after a restart under the same
        // replica id: applied (the process that sent it is gone).
        let mut restarted = Manual::default();
        assert_eq!(
            restarted.decide(&cmd(Action::ForceOpen, 12, "a"), true, Via::Standing),
            Step::Converge
        );
    }

    #[test]
    fn unnumbered_commands_keep_the_old_rules() {
        let mut m = Manual::default();
        let c = cmd(Action::ForceOpen, 0, "b");
        assert_eq!(m.decide(&c, false, Via::Delivered), Step::Full);
        assert_eq!(m.decide(&c, false, Via::Delivered), Step::Full);
        assert_eq!(m.decide(&c, true, Via::Delivered), Step::Skip);
        assert_eq!(m.decide(&c, false, Via::Standing), Step::Skip);
        assert!(!m.applied(0));
    }

    #[test]
    fn a_read_without_a_record_forgets_the_known_state() {
        let mut m = Manual::default();
        m.read(Some(&cmd(Action::Disable, 7, "a")));
        assert_eq!(m.known.as_ref().unwrap().id, 7);
        // An older record read (a reordered reply) does not hide it.
        m.read(Some(&cmd(Action::ForceOpen, 3, "a")));
        assert_eq!(m.known.as_ref().unwrap().id, 7);
        m.read(None);
        assert!(m.known.is_none());
        // Reading applies nothing.
        assert!(!m.applied(7));
    }

    #[test]
    fn the_record_for_a_dependency_is_its_highest_numbered_manual_state() {
        let mut other = cmd(Action::ForceOpen, 99, "a");
        other.dependency = "asr".into();
        let records = vec![
            cmd(Action::ForceOpen, 4, "a"),
            cmd(Action::Reset, 9, "b"),
            cmd(Action::Trigger, 20, "b"),
            cmd(Action::Disable, 0, "b"),
            other,
        ];
        let r = record_for(&records, "model_server").unwrap();
        assert_eq!((r.action, r.id), (Action::Reset, 9));
        assert_eq!(record_for(&records, "asr").unwrap().id, 99);
        assert!(record_for(&records, "database").is_none());
    }
}
