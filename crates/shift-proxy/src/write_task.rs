//! What record writes and lifecycle writes share: the task a write hands itself to once it
//! holds its gate pass and order locks, and how that task carries out the decision of
//! [`crate::settle`].
//!
//! The task, not the client's connection, owns everything from the intent on (durable before
//! the primary sees the write): a client that hangs up, an HTTP/2 stream reset or the end of
//! the shutdown grace cannot drop a write between the primary's answer and the journal. When
//! the primary's outcome is unknown (a timeout, a connection lost mid-request, a 5xx), the
//! records stay locked for `unknown_outcome_grace` and then the journal gets a reconciliation
//! of them, which copies whatever the primary ended up holding. Intents left without a task
//! are settled by [`crate::intents`].
//!
//! # One fsync per record write
//!
//! A record write's intent is the reconciliation of its records (collection and ids, as the
//! write's identity): what recovery makes of any record write ([`MirrorOp::recovery`]), so it
//! is recorded as that from the start, a few hundred bytes where the op in full may be 80 KB
//! (an intent recorded by an earlier build holds the op in full and recovers to the same
//! reconciliation). The intent is the write's only durable commit: the settlement (drop the
//! intent, append the entry; or drop it alone) is committed without an fsync ([`WriteJournal::settle_intent`]) and made
//! durable by the next durable commit of the state, whoever makes it (the next write's intent,
//! the replay's remove of anything but adds, upserts and deletes, a switch, the close). The
//! state's commits are ordered, so a crash
//! loses only deferred settlements newer than the last durable commit, and no intent newer
//! than them is on disk. Why a crash (or a state disk that fails, which loses the same) at
//! each await of the task leaves a correct state:
//!
//! 1. while the intent is being recorded: the primary has not seen the write and the client
//!    has no answer; nothing of it is anywhere, or the intent alone (step 2).
//! 2. while the primary (and in sync mode the secondary) works, or during the grace after an
//!    unknown outcome: the intent is pending; recovery turns it into a reconciliation of its
//!    records, applied once the replay's hold has passed, which copies whatever the primary
//!    ended up with (nothing, or the write).
//! 3. after the settlement committed, before it is durable (the window this design opens),
//!    the client answered or not: the intent is pending again and becomes the same
//!    reconciliation. It is as good as the settlement it replaces: the primary holds this
//!    write (or refused it) and no later write of these records, since a later write's
//!    intent would be durable, and with it this settlement. The secondary ends with what the
//!    primary holds, the write acknowledged or not; the replay may have applied the lost
//!    entry already, which the reconciliation repeats harmlessly. Entries that survived are
//!    older than the lost ones, so the reconciliation lands after them, in order. The replay's
//!    removes of applied adds, upserts and deletes are deferred too (see the replay's
//!    `removal_may_wait`): lost in the same crash, their entries come back and are applied
//!    again, harmlessly, before the reconciliation, which still lands last.
//! 4. after the settlement is durable: as before this design.
//!
//! The client is acknowledged after step 3: a write is acknowledged once its intent, which
//! holds everything its recovery needs (the secondary is brought in line from the primary,
//! never from the intent's bytes), is durable and settled in memory.
//!
//! Where recovery is not as good as the settlement, the settlement is durable, as before:
//! lifecycle writes (recovery replays some of them, a fork say, as they were, which is wrong
//! for one the primary refused) and an update whose missing ids are also forgotten (the
//! settlement carries a second op recovery would not rebuild).

use http::Response;
use hyper::body::Incoming;
use serde_json::Value;
use shift_config::{BackendName, MirrorMode};
use shift_state::{IntentId, NewEntry};
use tokio::sync::{oneshot, OwnedMutexGuard};

use crate::apply::ApplyError;
use crate::body::ProxyBody;
use crate::coord::WriteJournal;
use crate::error::{BackendError, BackendErrorKind, ProxyError, RefusedRequest, StateFailure};
use crate::failpoints::failpoint;
use crate::forward::{state_failure, Answered, BufferedRequest};
use crate::gate::WritePass;
use crate::locks::OrderGuard;
use crate::mirror::{EncodedOp, MirrorOp};
use crate::plane::DataPlaneState;
use crate::settle::{ClientAnswer, Decision, JournalAction, PrimaryOutcome, SecondaryOutcome};

/// Sends the client its answer from the settlement task.
pub(crate) type ClientAnswerTx = oneshot::Sender<Result<Answered, ProxyError>>;

/// A write on its way, owned by its settlement task: dropping it releases the gate pass and
/// the order locks, so a switch waits for it and no write of the same records overtakes it.
pub(crate) struct PendingWrite {
    pub(crate) _pass: WritePass,
    pub(crate) _guards: Guards,
    pub(crate) mode: MirrorMode,
    pub(crate) primary: BackendName,
    pub(crate) secondary: BackendName,
    /// The primary's path for the request.
    pub(crate) path: String,
    pub(crate) request: BufferedRequest,
}

/// The order locks a write holds.
pub(crate) enum Guards {
    Records {
        _records: OrderGuard,
    },
    Lifecycle {
        _lifecycle: OwnedMutexGuard<()>,
        _collection: Option<OrderGuard>,
    },
}

/// What the journal may get for a write.
pub(crate) struct Queued {
    pub(crate) write: Vec<EncodedOp>,
    pub(crate) reconcile: MirrorOp,
}

/// How a refusal of a body the proxy cannot read begins. Chroma refuses most such bodies
/// itself, but takes some (invalid UTF-8, a lone surrogate or deep nesting in a field it
/// ignores) that the proxy could not mirror as they were applied.
pub const UNMIRRORABLE: &str =
    "chroma-shift cannot mirror this write: its body is not JSON chroma-shift can read (Chroma ignores unknown fields, but their bytes must still be valid JSON within 128 levels)";

/// A write's body as JSON, or a refusal in Chroma's shape (the proxy could not mirror it).
pub(crate) fn parse_body(bytes: &[u8]) -> Result<Value, RefusedRequest> {
    serde_json::from_slice(bytes).map_err(unmirrorable)
}

/// The refusal of a body the proxy cannot read.
pub(crate) fn unmirrorable(error: impl std::fmt::Display) -> RefusedRequest {
    RefusedRequest::Unmirrorable(format!("{UNMIRRORABLE}: {error}"))
}

/// The primary's outcome from what it answered.
pub(crate) fn classify(result: &Result<Response<Incoming>, BackendError>) -> PrimaryOutcome {
    match result {
        Ok(response) => PrimaryOutcome::classify(Some(response.status()), true),
        Err(error) => {
            PrimaryOutcome::classify(None, !matches!(error.kind, BackendErrorKind::Connect(_)))
        }
    }
}

/// The secondary's outcome of a sync-mode apply, and its error.
pub(crate) fn secondary_outcome(
    result: Result<(), ApplyError>,
) -> (SecondaryOutcome, Option<ApplyError>) {
    match result {
        Ok(()) => (SecondaryOutcome::Applied, None),
        Err(error @ ApplyError::Refused { .. }) => (SecondaryOutcome::Refused, Some(error)),
        Err(error) => (SecondaryOutcome::Failed, Some(error)),
    }
}

/// What the client hears once the write is settled.
fn client_answer(
    decision: Decision,
    primary: BackendName,
    secondary: BackendName,
    primary_answer: Result<Response<ProxyBody>, ProxyError>,
    secondary_error: Option<ApplyError>,
) -> Result<Answered, ProxyError> {
    match decision.client {
        ClientAnswer::Primary => primary_answer.map(|response| Answered {
            response,
            backend: primary,
        }),
        ClientAnswer::SecondaryFailed => Err(ProxyError::Backend(BackendError {
            backend: secondary,
            kind: BackendErrorKind::Transport(format!(
                "the write was applied on the primary but failed on the secondary ({}); it is queued for the secondary",
                secondary_error.map(|e| e.to_string()).unwrap_or_default()
            )),
        })),
    }
}

/// Runs a write's settlement in a task of its own, so that it runs to the end whatever
/// happens to the client's connection, and waits for the client's answer.
pub(crate) async fn detach<F, Fut>(work: F) -> Result<Answered, ProxyError>
where
    F: FnOnce(ClientAnswerTx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    // The task goes on in the request's trace span (none unless `[tracing]` is on).
    let span = if crate::trace_ctx::enabled() {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    };
    tokio::spawn(tracing::Instrument::instrument(work(tx), span));
    rx.await.unwrap_or_else(|_| {
        Err(ProxyError::Internal(
            "the write's settlement task ended without an answer; see the proxy's log".to_owned(),
        ))
    })
}

/// Records the intent; `None` (and the error kept for the answer) when the state store
/// cannot. `client_gone` only labels the log line.
pub(crate) async fn record_intent(
    plane: &DataPlaneState,
    payload: Vec<u8>,
    client_gone: bool,
) -> Option<IntentId> {
    match plane.journal.record_intent(payload).await {
        Ok(intent) => Some(intent),
        Err(error) => {
            tracing::error!(%error, client_gone, "cannot record a write intent; the write is refused");
            plane.set_last_state_error(error.to_string());
            None
        }
    }
}

/// The answer to a write whose intent could not be recorded: nothing was applied.
pub(crate) fn refuse_before_write(plane: &DataPlaneState, answer: ClientAnswerTx) {
    let _ = answer.send(Err(ProxyError::State(StateFailure::BeforeWrite(
        plane.last_state_error(),
    ))));
}

fn count(plane: &DataPlaneState, mode: MirrorMode, outcome: &str) {
    let mode = match mode {
        MirrorMode::Journaled => "journaled",
        MirrorMode::Sync => "sync",
    };
    plane
        .metrics
        .mirrored_writes
        .with_label_values(&[mode, outcome])
        .inc();
}

/// How a settlement reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Settlement {
    /// With an fsync of its own.
    Durable,
    /// With the next durable commit: recovering the intent is as good (see the module doc).
    Deferred,
}

impl Settlement {
    /// A record write's settlement is deferred, unless it carries more than its own op (an
    /// update's forgotten ids). A lifecycle write's is durable.
    fn of(guards: &Guards, queued: &Queued, journal: JournalAction) -> Settlement {
        match guards {
            Guards::Records { .. }
                if journal != JournalAction::Write || queued.write.len() == 1 =>
            {
                Settlement::Deferred
            }
            Guards::Records { .. } | Guards::Lifecycle { .. } => Settlement::Durable,
        }
    }
}

/// Queues `ops` for the secondary, turning the intent into journal entries.
async fn journal(
    journal: &dyn WriteJournal,
    intent: IntentId,
    secondary: BackendName,
    ops: Vec<EncodedOp>,
    settlement: Settlement,
) -> Result<(), ProxyError> {
    let entries = ops
        .into_iter()
        .map(|op| NewEntry {
            target: secondary,
            collection: op.lag_key,
            // The request's trace context, for the replay's span (only with `[tracing]` on).
            payload: crate::trace_ctx::stamp(op.bytes),
        })
        .collect();
    let committed = match settlement {
        Settlement::Durable => journal.commit_intent(intent, entries),
        Settlement::Deferred => journal.settle_intent(intent, entries),
    };
    let span = crate::trace_ctx::journal_span();
    tracing::Instrument::instrument(committed, span)
        .await
        .map_err(state_failure)
}

async fn discard(
    journal: &dyn WriteJournal,
    intent: IntentId,
    settlement: Settlement,
) -> Result<(), ProxyError> {
    let discarded = match settlement {
        Settlement::Durable => journal.discard_intent(intent).await,
        Settlement::Deferred => journal.discard_intent_deferred(intent).await,
    };
    discarded.map_err(state_failure)
}

/// What the settlement task knows once the stores answered.
pub(crate) struct Settled {
    pub(crate) intent: IntentId,
    pub(crate) decision: Decision,
    pub(crate) queued: Queued,
    pub(crate) primary_answer: Result<Response<ProxyBody>, ProxyError>,
    pub(crate) secondary_error: Option<ApplyError>,
}

/// Carries a decision out: journal or discard the intent, answer the client, and after an
/// unknown outcome wait out the grace (records still locked) before queuing the
/// reconciliation, so the primary has settled when it is read.
pub(crate) async fn carry_out(
    plane: &DataPlaneState,
    write: PendingWrite,
    settled: Settled,
    answer: ClientAnswerTx,
) {
    let Settled {
        intent,
        decision,
        queued,
        primary_answer,
        secondary_error,
    } = settled;
    let (primary, secondary) = (write.primary, write.secondary);
    let settlement = Settlement::of(&write._guards, &queued, decision.journal);
    let state = &*plane.journal;
    if decision.after_grace {
        // The client hears the primary's failure now; the records stay locked meanwhile.
        let _ = answer.send(client_answer(
            decision,
            primary,
            secondary,
            primary_answer,
            secondary_error,
        ));
        tokio::time::sleep(plane.writes.unknown_outcome_grace).await;
        failpoint("write::before_reconcile");
        let reconcile = queued.reconcile.encode_as(&write.request.caller);
        if let Err(error) = journal(state, intent, secondary, vec![reconcile], settlement).await {
            tracing::error!(%error, %intent, "cannot queue a reconciliation; the intent is settled once the state store can write");
        }
        count(plane, write.mode, decision.label);
        drop(write);
        return;
    }
    failpoint("write::before_commit");
    let result = match decision.journal {
        JournalAction::Write => journal(state, intent, secondary, queued.write, settlement).await,
        JournalAction::Reconcile => {
            let reconcile = queued.reconcile.encode_as(&write.request.caller);
            journal(state, intent, secondary, vec![reconcile], settlement).await
        }
        JournalAction::Discard => discard(state, intent, settlement).await,
    };
    failpoint("write::after_commit");
    count(plane, write.mode, decision.label);
    let answer_now = match result {
        Ok(()) => client_answer(
            decision,
            primary,
            secondary,
            primary_answer,
            secondary_error,
        ),
        // The primary applied it and it is not queued: never acknowledged. The intent left
        // behind is settled once the state store can write.
        Err(error)
            if decision.journal == JournalAction::Write
                || decision.client == ClientAnswer::SecondaryFailed =>
        {
            Err(ProxyError::State(StateFailure::AfterPrimary(
                error.to_string(),
            )))
        }
        // The primary did not apply it: its answer is still true, and the intent left
        // behind is settled later (a harmless reconciliation).
        Err(error) => {
            tracing::error!(%error, %intent, "cannot settle a write intent now; it is settled later");
            client_answer(
                decision,
                primary,
                secondary,
                primary_answer,
                secondary_error,
            )
        }
    };
    let _ = answer.send(answer_now);
    drop(write);
}
