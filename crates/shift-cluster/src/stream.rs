//! The JetStream journal's append side (issue 13, step 3; not yet the [`WriteJournal`] of the
//! running proxy, whose replay still reads the redb state). One stream holds every
//! collection's journal, a subject per collection (`<prefix>.<collection>`):
//!
//! - an append names the subject's last sequence its writer saw
//!   (`Nats-Expected-Last-Subject-Sequence`): a new owner of a collection appends once at the
//!   sequence it read, and from then on every append of the old owner, made at an older
//!   sequence, is refused ([`StreamError::Fenced`]);
//! - an append carries a message id (`Nats-Msg-Id`): the same append sent again within the
//!   stream's duplicate window (a retry after a lost acknowledgement) is stored once and
//!   acknowledged as a duplicate. The server checks the expected sequence before the id, so a
//!   retry of an append that landed is refused as out of sequence: when the subject's last
//!   message carries the retry's id, it is the earlier attempt, answered as a duplicate;
//! - an acknowledged append is on disk: the server runs with `sync_interval: always`, and in
//!   production the stream has 3 replicas (`num_replicas`), acknowledged by a quorum.
//!
//! [`WriteJournal`]: shift_proxy::coord::WriteJournal

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;

/// The stream's shape.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The stream's name.
    pub name: String,
    /// Subjects are `<subject_prefix>.<collection>`.
    pub subject_prefix: String,
    /// Servers holding each message (3 in production; 1 on a single test server).
    pub replicas: usize,
    /// How long a message id is remembered for de-duplication.
    pub duplicate_window: Duration,
}

/// What went wrong with the journal stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("NATS: {0}")]
    Nats(String),
    /// The subject moved past the sequence this writer expected: another replica owns the
    /// collection now, or appended since.
    #[error("the journal of {collection} moved on (another replica appended): this replica no longer owns it")]
    Fenced { collection: String },
}

fn nats(error: impl std::fmt::Display) -> StreamError {
    StreamError::Nats(error.to_string())
}

/// An acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence in the stream (the subject's last sequence from now on).
    pub sequence: u64,
    /// Stored before, under the same message id; this append stored nothing.
    pub duplicate: bool,
}

/// The journal stream.
#[derive(Debug, Clone)]
pub struct JournalStream {
    js: jetstream::Context,
    stream: stream::Stream,
    settings: StreamSettings,
}

impl JournalStream {
    /// Connects to `url` and creates the stream unless it exists.
    pub async fn open(url: &str, settings: StreamSettings) -> Result<JournalStream, StreamError> {
        let client = async_nats::connect(url).await.map_err(nats)?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: settings.name.clone(),
                subjects: vec![format!("{}.>", settings.subject_prefix)],
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                duplicate_window: settings.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        Ok(JournalStream {
            js,
            stream,
            settings,
        })
    }

    /// The subject of `collection`'s journal; characters NATS gives a meaning to are
    /// replaced (collection ids are UUIDs, which have none).
    pub fn subject(&self, collection: &str) -> String {
        let token: String = collection
            .chars()
            .map(|c| match c {
                '.' | '*' | '>' => '_',
                c if c.is_whitespace() => '_',
                c => c,
            })
            .collect();
        format!("{}.{token}", self.settings.subject_prefix)
    }

    /// The sequence of `collection`'s last message; 0 when it has none.
    pub async fn last_sequence(&self, collection: &str) -> Result<u64, StreamError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(collection))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(error)
                if error.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(0)
            }
            Err(error) => Err(nats(error)),
        }
    }

    /// Appends `payload` to `collection`'s journal if its last sequence is still `expected`
    /// (0: empty), de-duplicated by `message_id`; resolves once the server stored it.
    pub async fn append(
        &self,
        collection: &str,
        expected: u64,
        message_id: &str,
        payload: Bytes,
    ) -> Result<Appended, StreamError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(message_id)
            .expected_last_subject_sequence(expected);
        let pending = self
            .js
            .send_publish(self.subject(collection), publish)
            .await
            .map_err(nats)?;
        match pending.await {
            Ok(ack) => Ok(Appended {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                // Our own earlier attempt, if it is the last message.
                let last = self
                    .stream
                    .get_last_raw_message_by_subject(&self.subject(collection))
                    .await
                    .map_err(nats)?;
                let id = last.headers.get(async_nats::header::NATS_MESSAGE_ID);
                if id.map(|id| id.as_str()) == Some(message_id) {
                    return Ok(Appended {
                        sequence: last.sequence,
                        duplicate: true,
                    });
                }
                Err(StreamError::Fenced {
                    collection: collection.to_owned(),
                })
            }
            Err(error) => Err(nats(error)),
        }
    }
}
