//! The write protocol as one decision table: what happens to a write once the primary (and, in
//! sync mode, the secondary) answered.
//!
//! Record writes and lifecycle writes both settle through [`decide`], so the two paths cannot
//! drift apart. The table is a pure function of what happened; the write path carries the
//! decision out (journal, discard, answer) and counts it under [`Decision::label`].

use shift_config::SecondaryFailure;

/// How the primary took a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryOutcome {
    /// A 2xx: applied.
    Applied,
    /// A 4xx, or a 501: refused; nothing changed.
    Refused,
    /// The request never left the proxy (the connection could not be made): nothing changed.
    NotSent,
    /// Any other 5xx, a timeout, a connection lost mid-request: it may or may not be applied.
    Unknown,
}

impl PrimaryOutcome {
    /// Sorts the primary's status (`None`: no answer) into an outcome. `sent` is false when the
    /// request never reached the primary.
    pub fn classify(status: Option<http::StatusCode>, sent: bool) -> PrimaryOutcome {
        match status {
            Some(s) if s.is_success() => PrimaryOutcome::Applied,
            // 501: the store does not implement the route (fork on a local Chroma, functions);
            // it changed nothing and never will.
            Some(s) if s.is_client_error() || s == http::StatusCode::NOT_IMPLEMENTED => {
                PrimaryOutcome::Refused
            }
            Some(_) => PrimaryOutcome::Unknown,
            None if !sent => PrimaryOutcome::NotSent,
            None => PrimaryOutcome::Unknown,
        }
    }
}

/// How the secondary took a write sent to it at the same time (sync mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondaryOutcome {
    /// Not sent to the secondary: journaled mode, or sync mode with a backlog to keep order.
    NotSent,
    Applied,
    /// Refused for good (it would be refused again).
    Refused,
    /// Failed in a way that may or may not have applied it (unreachable, 5xx, timeout).
    Failed,
}

/// What the journal gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalAction {
    /// The write itself, for the secondary.
    Write,
    /// A reconciliation of the write's records (or collection): make the secondary hold what
    /// the primary holds, whatever that turns out to be.
    Reconcile,
    /// Nothing: the intent is dropped.
    Discard,
}

/// What the client hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAnswer {
    /// The primary's own answer (or its failure), passed on.
    Primary,
    /// An error saying the write reached the primary but not the secondary
    /// (`on_secondary_failure = "fail"`).
    SecondaryFailed,
}

/// The settlement of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub journal: JournalAction,
    pub client: ClientAnswer,
    /// The outcome label of `chroma_shift_mirrored_writes_total`.
    pub label: &'static str,
    /// Whether the journal entry must wait until the primary has settled: after an unknown
    /// outcome the primary may still apply the write late, so the reconciliation reads it only
    /// once the grace has passed, and later writes of the same records wait for it.
    pub after_grace: bool,
}

const fn decision(journal: JournalAction, client: ClientAnswer, label: &'static str) -> Decision {
    Decision {
        journal,
        client,
        label,
        after_grace: false,
    }
}

/// The table. `secondary` is [`SecondaryOutcome::NotSent`] in journaled mode.
pub fn decide(
    primary: PrimaryOutcome,
    secondary: SecondaryOutcome,
    policy: SecondaryFailure,
) -> Decision {
    use ClientAnswer::{Primary, SecondaryFailed};
    use JournalAction::{Discard, Reconcile, Write};
    use PrimaryOutcome as P;
    use SecondaryOutcome as S;
    match (primary, secondary) {
        // The primary may hold it: converge the secondary to whatever the primary ends up with.
        (P::Unknown, _) => Decision {
            after_grace: true,
            ..decision(Reconcile, Primary, "reconcile_queued")
        },
        (P::Applied, S::NotSent) => decision(Write, Primary, "journaled"),
        (P::Applied, S::Applied) => decision(Discard, Primary, "applied"),
        (P::Applied, S::Refused | S::Failed) => match policy {
            // The replay retries it; a refusal ends as a dead letter with its reason.
            SecondaryFailure::Journal => decision(Write, Primary, "fallback_journaled"),
            // The client hears of the failure and may retry; meanwhile the secondary is brought
            // in line with the primary.
            SecondaryFailure::Fail => decision(Reconcile, SecondaryFailed, "failed"),
        },
        // Nothing changed on the primary; undo what the secondary may have taken.
        (P::Refused | P::NotSent, S::Applied | S::Failed) => {
            decision(Reconcile, Primary, "reconcile_queued")
        }
        (P::Refused | P::NotSent, S::NotSent | S::Refused) => {
            decision(Discard, Primary, "not_mirrored")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use ClientAnswer::*;
    use JournalAction::*;
    use PrimaryOutcome as P;
    use SecondaryOutcome as S;

    #[test]
    fn statuses_sort_into_outcomes() {
        let cases = [
            (Some(StatusCode::OK), true, P::Applied),
            (Some(StatusCode::CREATED), true, P::Applied),
            (Some(StatusCode::BAD_REQUEST), true, P::Refused),
            (Some(StatusCode::NOT_FOUND), true, P::Refused),
            (Some(StatusCode::CONFLICT), true, P::Refused),
            (Some(StatusCode::NOT_IMPLEMENTED), true, P::Refused),
            (Some(StatusCode::INTERNAL_SERVER_ERROR), true, P::Unknown),
            (Some(StatusCode::BAD_GATEWAY), true, P::Unknown),
            (Some(StatusCode::SERVICE_UNAVAILABLE), true, P::Unknown),
            (None, true, P::Unknown),
            (None, false, P::NotSent),
        ];
        for (status, sent, expected) in cases {
            assert_eq!(
                PrimaryOutcome::classify(status, sent),
                expected,
                "{status:?} sent={sent}"
            );
        }
    }

    /// Every row of the table, written out: (primary, secondary, policy) -> (journal, client,
    /// label, after_grace).
    #[test]
    fn every_case_of_the_table() {
        use SecondaryFailure::{Fail, Journal};
        #[rustfmt::skip]
        let rows = [
            // Journaled mode.
            (P::Applied, S::NotSent, Journal, Write, Primary, "journaled", false),
            (P::Applied, S::NotSent, Fail, Write, Primary, "journaled", false),
            (P::Refused, S::NotSent, Journal, Discard, Primary, "not_mirrored", false),
            (P::NotSent, S::NotSent, Journal, Discard, Primary, "not_mirrored", false),
            (P::Unknown, S::NotSent, Journal, Reconcile, Primary, "reconcile_queued", true),
            // Sync mode.
            (P::Applied, S::Applied, Journal, Discard, Primary, "applied", false),
            (P::Applied, S::Applied, Fail, Discard, Primary, "applied", false),
            (P::Applied, S::Failed, Journal, Write, Primary, "fallback_journaled", false),
            (P::Applied, S::Refused, Journal, Write, Primary, "fallback_journaled", false),
            (P::Applied, S::Failed, Fail, Reconcile, SecondaryFailed, "failed", false),
            (P::Applied, S::Refused, Fail, Reconcile, SecondaryFailed, "failed", false),
            (P::Refused, S::Applied, Journal, Reconcile, Primary, "reconcile_queued", false),
            (P::Refused, S::Failed, Fail, Reconcile, Primary, "reconcile_queued", false),
            (P::Refused, S::Refused, Journal, Discard, Primary, "not_mirrored", false),
            (P::NotSent, S::Applied, Journal, Reconcile, Primary, "reconcile_queued", false),
            (P::NotSent, S::Refused, Fail, Discard, Primary, "not_mirrored", false),
            (P::Unknown, S::Applied, Journal, Reconcile, Primary, "reconcile_queued", true),
            (P::Unknown, S::Failed, Fail, Reconcile, Primary, "reconcile_queued", true),
        ];
        for (p, s, policy, journal, client, label, after_grace) in rows {
            assert_eq!(
                decide(p, s, policy),
                Decision {
                    journal,
                    client,
                    label,
                    after_grace
                },
                "{p:?} {s:?} {policy:?}"
            );
        }
    }

    /// No case acknowledges a write the primary applied without queuing something for the
    /// secondary, unless the secondary applied it too.
    #[test]
    fn an_applied_write_always_reaches_the_secondary() {
        for s in [S::NotSent, S::Applied, S::Refused, S::Failed] {
            for policy in [SecondaryFailure::Journal, SecondaryFailure::Fail] {
                let d = decide(P::Applied, s, policy);
                assert!(
                    d.journal != Discard || s == S::Applied,
                    "{s:?} {policy:?} -> {d:?}"
                );
            }
        }
    }
}
