//! What the mirror applies to a store: one [`MirrorOp`] per write, serialized into the journal
//! (and into the intent recorded before the primary write).
//!
//! An op a client identity wrote is stored with that identity's name (never a token), so the
//! replay sends it with the identity's backend token: the payload is then `@name\n` before the
//! op's JSON. An op with no identity is the JSON alone, as every version wrote it, so a journal
//! written before identities existed replays unchanged (as the operator).
//!
//! Ops name collections by the client's id and tenants and databases by the client's names;
//! both are translated for the target store when the op is applied, so an op queued before a
//! collection existed on the target, or before a cutover, still lands in the right place.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shift_chroma::Operation;

use crate::auth::Caller;
use crate::ids::ClientCollectionId;

/// The four record writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Add,
    Upsert,
    Update,
    Delete,
}

impl RecordKind {
    pub fn from_operation(operation: Operation) -> Option<RecordKind> {
        match operation {
            Operation::CollectionAdd => Some(RecordKind::Add),
            Operation::CollectionUpsert => Some(RecordKind::Upsert),
            Operation::CollectionUpdate => Some(RecordKind::Update),
            Operation::CollectionDelete => Some(RecordKind::Delete),
            _ => None,
        }
    }

    /// The last path segment of the write.
    pub fn verb(self) -> &'static str {
        match self {
            RecordKind::Add => "add",
            RecordKind::Upsert => "upsert",
            RecordKind::Update => "update",
            RecordKind::Delete => "delete",
        }
    }
}

/// One write to apply to a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (serde's default): an internally tagged enum is decoded through a buffered
// copy of the whole op, bodies included, which costs the replay a fifth of its time.
#[serde(rename_all = "snake_case")]
pub enum MirrorOp {
    /// A record write, with the body the primary took (a delete by filter carries the ids it
    /// resolved to).
    Records {
        kind: RecordKind,
        collection: ClientCollectionId,
        body: Value,
    },
    /// Makes the target hold what the source holds for these ids: upsert the ones the source
    /// has, delete the others. Used where the outcome on the primary is unknown (a timeout, a
    /// crash between the primary write and the journal).
    Reconcile {
        collection: ClientCollectionId,
        ids: Vec<String>,
    },
    /// Creates the collection on the target if it lacks it.
    EnsureCollection {
        collection: ClientCollectionId,
    },
    /// Changes name, metadata or configuration (the `PUT` body).
    UpdateCollection {
        collection: ClientCollectionId,
        body: Value,
    },
    /// Deletes the collection named `name` (Chroma deletes by name).
    DeleteCollection {
        collection: Option<ClientCollectionId>,
        tenant: String,
        database: String,
        name: String,
    },
    /// Brings a collection's existence, name and metadata on the target in line with the
    /// source; for lifecycle writes whose outcome is unknown.
    ReconcileCollection {
        collection: Option<ClientCollectionId>,
        tenant: String,
        database: String,
        name: String,
    },
    /// Forks `source` into `fork` named `new_name`.
    ForkCollection {
        source: ClientCollectionId,
        fork: ClientCollectionId,
        new_name: String,
    },
    CreateTenant {
        name: String,
    },
    UpdateTenant {
        tenant: String,
        body: Value,
    },
    CreateDatabase {
        tenant: String,
        name: String,
    },
    DeleteDatabase {
        tenant: String,
        database: String,
    },
    /// An update of ids the source lacked, then a delete of them: what the primary got for an
    /// update naming ids it did not hold (see the write path's note on updates). Mirrored so
    /// that the target fixes the collection's dimension as the primary did, and keeps nothing
    /// of the update, as the primary keeps nothing.
    ForgetMissing {
        collection: ClientCollectionId,
        /// The update, restricted to `ids`.
        body: Value,
        ids: Vec<String>,
    },
    /// Attaches or detaches a function: `suffix` is the path after the collection id.
    Function {
        collection: ClientCollectionId,
        suffix: String,
        body: Value,
    },
}

impl MirrorOp {
    /// The collection the op is about, as the journal's lag key.
    pub fn lag_key(&self) -> String {
        match self {
            MirrorOp::Records { collection, .. }
            | MirrorOp::Reconcile { collection, .. }
            | MirrorOp::EnsureCollection { collection }
            | MirrorOp::UpdateCollection { collection, .. }
            | MirrorOp::Function { collection, .. }
            | MirrorOp::ForgetMissing { collection, .. } => collection.to_string(),
            MirrorOp::ForkCollection { fork, .. } => fork.to_string(),
            MirrorOp::DeleteCollection {
                collection, name, ..
            }
            | MirrorOp::ReconcileCollection {
                collection, name, ..
            } => collection
                .as_ref()
                .map_or_else(|| name.clone(), |c| c.to_string()),
            MirrorOp::CreateTenant { .. }
            | MirrorOp::UpdateTenant { .. }
            | MirrorOp::CreateDatabase { .. }
            | MirrorOp::DeleteDatabase { .. } => String::new(),
        }
    }

    /// Whether applying the op reads the other store (the source): a reconciliation copies
    /// what the source holds. Such an op cannot be applied while the source is down, and must
    /// never be applied to the primary (it would copy the secondary's records into it).
    pub fn reads_the_source(&self) -> bool {
        match self {
            MirrorOp::Reconcile { .. } | MirrorOp::ReconcileCollection { .. } => true,
            MirrorOp::Records { .. }
            | MirrorOp::EnsureCollection { .. }
            | MirrorOp::UpdateCollection { .. }
            | MirrorOp::DeleteCollection { .. }
            | MirrorOp::ForkCollection { .. }
            | MirrorOp::CreateTenant { .. }
            | MirrorOp::UpdateTenant { .. }
            | MirrorOp::CreateDatabase { .. }
            | MirrorOp::DeleteDatabase { .. }
            | MirrorOp::Function { .. }
            | MirrorOp::ForgetMissing { .. } => false,
        }
    }

    /// What to queue for an intent left behind by a crash: the primary may or may not have
    /// applied the write, so converge the target to the source instead of replaying blindly.
    pub fn recovery(self) -> MirrorOp {
        match self {
            MirrorOp::Records {
                collection, body, ..
            } => MirrorOp::Reconcile {
                ids: ids_of(&body),
                collection,
            },
            MirrorOp::UpdateCollection { collection, .. } => {
                // Name and namespace are looked up again from the client id.
                MirrorOp::ReconcileCollection {
                    collection: Some(collection),
                    tenant: String::new(),
                    database: String::new(),
                    name: String::new(),
                }
            }
            MirrorOp::DeleteCollection {
                collection,
                tenant,
                database,
                name,
            } => MirrorOp::ReconcileCollection {
                collection,
                tenant,
                database,
                name,
            },
            // Idempotent ops, and reconciliations, are safe to apply again.
            other => other,
        }
    }

    /// Serializes once, for the intent and the journal entry alike, as the operator's.
    pub fn encode(&self) -> EncodedOp {
        self.encode_as(&Caller::Operator)
    }

    /// Serializes once, for the intent and the journal entry alike, with `caller`'s identity.
    pub fn encode_as(&self, caller: &Caller) -> EncodedOp {
        EncodedOp {
            lag_key: self.lag_key(),
            bytes: self.to_bytes_as(caller.identity()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_as(None)
    }

    /// The payload of the op, written by `identity` when given.
    pub fn to_bytes_as(&self, identity: Option<&str>) -> Vec<u8> {
        let mut bytes = match identity {
            Some(name) => format!("{IDENTITY_MARK}{name}\n").into_bytes(),
            None => Vec::new(),
        };
        // A tree of strings and JSON values always serializes.
        let _ = serde_json::to_writer(&mut bytes, self);
        bytes
    }

    /// The op of a payload, with or without an identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<MirrorOp, serde_json::Error> {
        serde_json::from_slice(split_identity(bytes).1)
    }
}

/// What starts a payload that names an identity; an op's JSON starts with `{`.
const IDENTITY_MARK: char = '@';

/// The identity a payload names, and the op's JSON after it.
fn split_identity(bytes: &[u8]) -> (Option<&str>, &[u8]) {
    // A journal entry may carry its request's trace context first (`trace_ctx::stamp`).
    let bytes = crate::trace_ctx::unstamped(bytes);
    let named = bytes.strip_prefix(&[IDENTITY_MARK as u8]).and_then(|rest| {
        let end = rest.iter().position(|b| *b == b'\n')?;
        let name = std::str::from_utf8(&rest[..end]).ok()?;
        Some((name, &rest[end + 1..]))
    });
    match named {
        Some((name, op)) => (Some(name), op),
        None => (None, bytes),
    }
}

/// The identity a journal or intent payload was written by; `None` for the operator's (and
/// for every entry written before identities existed).
pub fn identity_of(payload: &[u8]) -> Option<&str> {
    split_identity(payload).0
}

/// The op's JSON in a journal or intent payload, after the identity if it names one.
pub fn op_json(payload: &[u8]) -> &[u8] {
    split_identity(payload).1
}

/// The caller to apply a payload as.
pub fn caller_of(payload: &[u8]) -> Caller {
    Caller::from_journal(identity_of(payload))
}

impl MirrorOp {
    /// A record write encoded around its body exactly as the client sent it, with no parse
    /// tree in between: the same journal format as [`MirrorOp::encode_as`] of the op with that
    /// body parsed. `body` must be JSON that [`MirrorOp::from_bytes`] reads: the write path
    /// parsed it once already (to find its ids, and to refuse what it could not mirror).
    pub fn encode_records(
        kind: RecordKind,
        collection: &ClientCollectionId,
        body: &[u8],
        caller: &Caller,
    ) -> EncodedOp {
        const TAIL: &[u8] = b"null}}";
        let envelope = MirrorOp::Records {
            kind,
            collection: collection.clone(),
            body: Value::Null,
        }
        .to_bytes_as(caller.identity());
        // `{"records":{"kind":..,"collection":..,"body":null}}`: the body goes where the null
        // is (it is the last field).
        debug_assert!(envelope.ends_with(TAIL));
        let head = envelope.len() - TAIL.len();
        let mut bytes = Vec::with_capacity(head + body.len() + 2);
        bytes.extend_from_slice(&envelope[..head]);
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"}}");
        EncodedOp {
            lag_key: collection.to_string(),
            bytes,
        }
    }
}

/// An op serialized, with the collection it is about.
#[derive(Debug, Clone)]
pub struct EncodedOp {
    pub lag_key: String,
    pub bytes: Vec<u8>,
}

/// The `ids` array of a record-write body.
pub fn ids_of(body: &Value) -> Vec<String> {
    body.get("ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops_survive_the_journal_encoding() {
        let op = MirrorOp::Records {
            kind: RecordKind::Upsert,
            collection: "c1".into(),
            body: json!({"ids": ["a"], "embeddings": ["AACAPw=="]}),
        };
        assert_eq!(MirrorOp::from_bytes(&op.to_bytes()).unwrap(), op);
    }

    #[test]
    fn a_body_encoded_as_sent_decodes_as_the_parsed_body_encoded() {
        let sent = br#" {"ids": ["a", "b"], "embeddings": [[1.5, 2e3], "AACAPw=="],
            "metadatas": [{"k": "\u00e9"}, null], "ids": ["a", "b"]} "#;
        let collection: ClientCollectionId = "c1".into();
        let parsed = MirrorOp::Records {
            kind: RecordKind::Add,
            collection: collection.clone(),
            body: serde_json::from_slice(sent).unwrap(),
        };
        for caller in [Caller::Operator, Caller::from_journal(Some("team-a"))] {
            let raw = MirrorOp::encode_records(RecordKind::Add, &collection, sent, &caller);
            assert_eq!(MirrorOp::from_bytes(&raw.bytes).unwrap(), parsed);
            assert_eq!(caller_of(&raw.bytes), caller);
            assert_eq!(raw.lag_key, parsed.encode_as(&caller).lag_key);
        }
    }

    #[test]
    fn a_crashed_record_write_recovers_as_a_reconcile_of_its_ids() {
        let op = MirrorOp::Records {
            kind: RecordKind::Delete,
            collection: "c1".into(),
            body: json!({"ids": ["a", "b"]}),
        };
        assert_eq!(
            op.recovery(),
            MirrorOp::Reconcile {
                collection: "c1".into(),
                ids: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn an_identity_rides_with_the_op_and_entries_without_one_read_as_before() {
        let op = MirrorOp::Records {
            kind: RecordKind::Add,
            collection: "c1".into(),
            body: json!({"ids": ["a"]}),
        };
        let caller = Caller::Identity("team-a".into());
        let encoded = op.encode_as(&caller);
        assert!(encoded.bytes.starts_with(b"@team-a\n{"));
        assert_eq!(MirrorOp::from_bytes(&encoded.bytes).unwrap(), op);
        assert_eq!(identity_of(&encoded.bytes), Some("team-a"));
        assert_eq!(caller_of(&encoded.bytes), caller);
        // The operator's entries are the JSON alone: what the previous version wrote and reads.
        let operator = op.encode_as(&Caller::Operator).bytes;
        assert_eq!(operator, serde_json::to_vec(&op).unwrap());
        assert_eq!(caller_of(&operator), Caller::Operator);
        // A forwarded client credential is never stored.
        let forwarded = Caller::Forwarded(vec![(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer s3cret"),
        )]);
        assert_eq!(op.encode_as(&forwarded).bytes, operator);
        let old = br#"{"reconcile":{"collection":"c1","ids":["a"]}}"#;
        assert_eq!(identity_of(old), None);
        assert!(MirrorOp::from_bytes(old).is_ok());
    }

    #[test]
    fn journal_entries_from_before_the_id_types_decode_and_encode_the_same() {
        let old = br#"{"fork_collection":{"source":"c1","fork":"c2","new_name":"n"}}"#;
        let op = MirrorOp::from_bytes(old).unwrap();
        assert_eq!(op.lag_key(), "c2");
        assert_eq!(op.to_bytes(), old.to_vec());
        let old =
            br#"{"delete_collection":{"collection":null,"tenant":"t","database":"d","name":"n"}}"#;
        assert_eq!(MirrorOp::from_bytes(old).unwrap().to_bytes(), old.to_vec());
    }
}
