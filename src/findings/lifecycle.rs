//! The finding lifecycle as types: the states a finding can be in, the outcomes it ends with, the
//! labels it carries, and the one table of allowed transitions ([`allowed`]). The findings store
//! refuses a change this table does not allow, so a new state or a wrong move is a compile error
//! here or a loud error there, never a silent string in SQL. Pure: no I/O.
//!
//! ```text
//!   decide ──► verifying ──► revoking ──► notifying ──► revoked / already_revoked
//!      │           │            │  ▲            (notification abandoned keeps the outcome)
//!      │           ▼            ▼  │
//!      │     already_revoked, inactive, unknown_token, failed
//!      ├──► awaiting_pull ──(installation acknowledges)──► notifying / revoked / ... / failed
//!      └──► expired, invalid, unattributed (offline), revoked / already_revoked / unknown_token
//!           (this Spillway's own admin keys)
//! ```
//! A re-registration moves findings in progress between `verifying`, `revoking` and
//! `awaiting_pull`; removing the installation fails them (`installation_removed`).

use serde::Serialize;

/// Where a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    Verifying,
    Revoking,
    Notifying,
    AwaitingPull,
    Revoked,
    AlreadyRevoked,
    UnknownToken,
    Inactive,
    Expired,
    Invalid,
    Unattributed,
    Failed,
}

/// The calls (and the pull) a finding goes through; a failed finding's outcome names its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Verify,
    Revoke,
    Notify,
    Pull,
}

/// How a finding ended (the `outcome` column). A finding in `notifying` already carries the
/// outcome of its revoke (`revoked` or `already_revoked`), which the notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Revoked,
    AlreadyRevoked,
    UnknownToken,
    Inactive,
    Expired,
    Invalid,
    Unattributed,
    /// Gave up at this step (attempts or age exhausted, or the call was refused).
    Failed(Step),
    InstallationRemoved,
}

/// A finding's (and its candidate's) label, as GitHub's feedback spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    TruePositive,
    FalsePositive,
}

const ALL_STATES: [FindingState; 12] = [
    FindingState::Verifying,
    FindingState::Revoking,
    FindingState::Notifying,
    FindingState::AwaitingPull,
    FindingState::Revoked,
    FindingState::AlreadyRevoked,
    FindingState::UnknownToken,
    FindingState::Inactive,
    FindingState::Expired,
    FindingState::Invalid,
    FindingState::Unattributed,
    FindingState::Failed,
];

impl FindingState {
    /// The states a worker acts on.
    pub const WORKER: [FindingState; 3] = [
        FindingState::Verifying,
        FindingState::Revoking,
        FindingState::Notifying,
    ];
    /// Every state, in the lifecycle's order.
    pub const ALL: [FindingState; 12] = ALL_STATES;

    /// The states still in progress (a worker's or the installation's move next).
    pub const IN_PROGRESS: [FindingState; 4] = [
        FindingState::Verifying,
        FindingState::Revoking,
        FindingState::Notifying,
        FindingState::AwaitingPull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingState::Verifying => "verifying",
            FindingState::Revoking => "revoking",
            FindingState::Notifying => "notifying",
            FindingState::AwaitingPull => "awaiting_pull",
            FindingState::Revoked => "revoked",
            FindingState::AlreadyRevoked => "already_revoked",
            FindingState::UnknownToken => "unknown_token",
            FindingState::Inactive => "inactive",
            FindingState::Expired => "expired",
            FindingState::Invalid => "invalid",
            FindingState::Unattributed => "unattributed",
            FindingState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<FindingState> {
        ALL_STATES.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !Self::IN_PROGRESS.contains(&self)
    }

    /// The call a worker makes in this state.
    pub fn step(self) -> Option<Step> {
        match self {
            FindingState::Verifying => Some(Step::Verify),
            FindingState::Revoking => Some(Step::Revoke),
            FindingState::Notifying => Some(Step::Notify),
            FindingState::AwaitingPull => Some(Step::Pull),
            _ => None,
        }
    }

    /// The terminal state an outcome ends in.
    pub fn ending(outcome: Outcome) -> FindingState {
        match outcome {
            Outcome::Revoked => FindingState::Revoked,
            Outcome::AlreadyRevoked => FindingState::AlreadyRevoked,
            Outcome::UnknownToken => FindingState::UnknownToken,
            Outcome::Inactive => FindingState::Inactive,
            Outcome::Expired => FindingState::Expired,
            Outcome::Invalid => FindingState::Invalid,
            Outcome::Unattributed => FindingState::Unattributed,
            Outcome::Failed(_) | Outcome::InstallationRemoved => FindingState::Failed,
        }
    }
}

impl std::fmt::Display for FindingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Verify => "verify",
            Step::Revoke => "revoke",
            Step::Notify => "notify",
            Step::Pull => "pull",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Revoked => "revoked",
            Outcome::AlreadyRevoked => "already_revoked",
            Outcome::UnknownToken => "unknown_token",
            Outcome::Inactive => "inactive",
            Outcome::Expired => "expired",
            Outcome::Invalid => "invalid",
            Outcome::Unattributed => "unattributed",
            Outcome::Failed(Step::Verify) => "failed_verify",
            Outcome::Failed(Step::Revoke) => "failed_revoke",
            Outcome::Failed(Step::Notify) => "failed_notify",
            Outcome::Failed(Step::Pull) => "failed_pull",
            Outcome::InstallationRemoved => "installation_removed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [
            Outcome::Revoked,
            Outcome::AlreadyRevoked,
            Outcome::UnknownToken,
            Outcome::Inactive,
            Outcome::Expired,
            Outcome::Invalid,
            Outcome::Unattributed,
            Outcome::Failed(Step::Verify),
            Outcome::Failed(Step::Revoke),
            Outcome::Failed(Step::Notify),
            Outcome::Failed(Step::Pull),
            Outcome::InstallationRemoved,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// A token the installation confirmed was its own (the label the finding earns).
    pub fn label(self) -> Option<Label> {
        match self {
            Outcome::Revoked | Outcome::AlreadyRevoked | Outcome::Inactive | Outcome::Expired => {
                Some(Label::TruePositive)
            }
            Outcome::Invalid => Some(Label::FalsePositive),
            _ => None,
        }
    }
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::TruePositive => "true_positive",
            Label::FalsePositive => "false_positive",
        }
    }
}

/// The states a finding may be created in (by a decision).
pub fn initial(state: FindingState) -> bool {
    use FindingState::*;
    matches!(
        state,
        // Online paths, then offline verdicts, then this Spillway's own admin keys (revoked here).
        Verifying
            | Revoking
            | AwaitingPull
            | Expired
            | Invalid
            | Unattributed
            | Revoked
            | AlreadyRevoked
            | UnknownToken
    )
}

/// Whether a finding may move from `from` to `to`: the whole lifecycle in one place.
pub fn allowed(from: FindingState, to: FindingState) -> bool {
    use FindingState::*;
    match from {
        // The verify answer; failure; a re-registration (pull mode, or verify URL removed);
        // installation removed.
        Verifying => matches!(
            to,
            Revoking | AlreadyRevoked | Inactive | UnknownToken | Failed | AwaitingPull
        ),
        // The revoke answer (then notify, if the installation wants it); failure; pull mode.
        Revoking => matches!(
            to,
            Notifying | Revoked | AlreadyRevoked | UnknownToken | Failed | AwaitingPull
        ),
        // Notified, abandoned or notify URL removed: the revoke's outcome stands. Removed: failed.
        Notifying => matches!(to, Revoked | AlreadyRevoked | Failed),
        // The installation's acknowledgement; expiry; back to push mode.
        AwaitingPull => matches!(
            to,
            Notifying | Revoked | AlreadyRevoked | UnknownToken | Failed | Verifying | Revoking
        ),
        Revoked | AlreadyRevoked | UnknownToken | Inactive | Expired | Invalid | Unattributed
        | Failed => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_stored_strings() {
        for state in ALL_STATES {
            assert_eq!(FindingState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::String(state.as_str().into())
            );
        }
        assert_eq!(FindingState::parse("revoking "), None);
        for outcome in [
            "revoked",
            "failed_pull",
            "installation_removed",
            "failed_notify",
        ] {
            assert_eq!(Outcome::parse(outcome).unwrap().as_str(), outcome);
        }
        assert_eq!(Outcome::parse("failed"), None);
    }

    #[test]
    fn terminal_states_never_move_and_in_progress_ones_always_can_fail() {
        for from in ALL_STATES {
            let moves = ALL_STATES.iter().filter(|to| allowed(from, **to)).count();
            if from.is_terminal() {
                assert_eq!(moves, 0, "{from} is terminal but may move");
            } else {
                assert!(allowed(from, FindingState::Failed), "{from} cannot fail");
                assert!(
                    !allowed(from, from),
                    "{from} to itself is a retry, not a move"
                );
            }
        }
    }

    #[test]
    fn the_happy_paths_are_allowed_and_shortcuts_are_not() {
        use FindingState::*;
        for path in [
            &[Verifying, Revoking, Notifying, Revoked][..],
            &[Verifying, Revoking, AlreadyRevoked],
            &[Revoking, Revoked],
            &[AwaitingPull, Notifying, AlreadyRevoked],
            &[AwaitingPull, Revoking, Revoked],
            &[Verifying, AwaitingPull, UnknownToken],
        ] {
            assert!(initial(path[0]), "{path:?}");
            for w in path.windows(2) {
                assert!(allowed(w[0], w[1]), "{} -> {}", w[0], w[1]);
            }
        }
        // A token is never notified about before it is revoked, nor revoked after it proved
        // inactive, nor created mid-way through the calls.
        assert!(!allowed(Verifying, Notifying));
        assert!(!allowed(Inactive, Revoking));
        assert!(!allowed(Notifying, Revoking));
        assert!(!initial(Notifying));
        assert!(!initial(Failed));
        assert!(!initial(Inactive));
    }

    #[test]
    fn every_outcome_ends_in_a_terminal_state_and_labels_follow_the_installation() {
        for outcome in [
            Outcome::Revoked,
            Outcome::Failed(Step::Pull),
            Outcome::InstallationRemoved,
            Outcome::Invalid,
        ] {
            assert!(FindingState::ending(outcome).is_terminal());
        }
        assert_eq!(Outcome::Revoked.label(), Some(Label::TruePositive));
        assert_eq!(Outcome::Invalid.label(), Some(Label::FalsePositive));
        assert_eq!(Outcome::UnknownToken.label(), None);
        assert_eq!(Outcome::Failed(Step::Revoke).label(), None);
        assert_eq!(FindingState::Verifying.step(), Some(Step::Verify));
        assert_eq!(FindingState::Revoked.step(), None);
    }
}
