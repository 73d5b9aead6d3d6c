//! The JetStream stream under the cluster's journal ([`crate::journal`], the proxy's
//! [`WriteJournal`] with `nats_url`): publishing, reading and purging its subjects. One stream
//! holds every collection's journal; [`JournalStream::append`] names a subject per collection
//! (`<prefix>.<collection>`), [`JournalStream::publish`] any subject:
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

use std::collections::HashMap;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;

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
        format!("{}.{}", self.settings.subject_prefix, token(collection))
    }

    /// The sequence of `collection`'s last message; 0 when it has none.
    pub async fn last_sequence(&self, collection: &str) -> Result<u64, StreamError> {
        Ok(self
            .last(&self.subject(collection))
            .await?
            .map_or(0, |message| message.sequence))
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
        let subject = self.subject(collection);
        match self
            .publish(
                &subject,
                Some(expected),
                message_id,
                HeaderMap::new(),
                payload,
            )
            .await?
        {
            Published::Stored(appended) => Ok(appended),
            Published::Moved => Err(StreamError::Fenced {
                collection: collection.to_owned(),
            }),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// `<subject_prefix>.<tail>`: a subject of this stream (`tail` is dot-separated tokens).
    pub fn under(&self, tail: &str) -> String {
        format!("{}.{tail}", self.settings.subject_prefix)
    }

    /// Publishes `payload` with `headers` to `subject`, de-duplicated by `message_id`; with
    /// `expected`, only if the subject's last sequence is still that (0: empty). A retry of an
    /// append that landed (the subject's last message carries `message_id`) answers as a
    /// duplicate; another writer's append since answers [`Published::Moved`].
    pub async fn publish(
        &self,
        subject: &str,
        expected: Option<u64>,
        message_id: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, StreamError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(payload)
            .message_id(message_id);
        if let Some(expected) = expected {
            publish = publish.expected_last_subject_sequence(expected);
        }
        let pending = self
            .js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(nats)?;
        match pending.await {
            Ok(ack) => Ok(Published::Stored(Appended {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                // Our own earlier attempt, if it is the last message.
                let last = self.last(subject).await?;
                if let Some(last) = last {
                    let id = last.headers.get(async_nats::header::NATS_MESSAGE_ID);
                    if id.map(|id| id.as_str()) == Some(message_id) {
                        return Ok(Published::Stored(Appended {
                            sequence: last.sequence,
                            duplicate: true,
                        }));
                    }
                }
                Ok(Published::Moved)
            }
            Err(error) => Err(nats(error)),
        }
    }

    /// The last message of `subject`, from the stream's leader; `None` when it has none.
    pub async fn last(&self, subject: &str) -> Result<Option<StreamMessage>, StreamError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(nats(error)),
        }
    }

    /// The first message of `subject` (a subject filter may have wildcards) with a sequence
    /// above `after`; `None` when there is none.
    pub async fn next_after(
        &self,
        subject: &str,
        after: u64,
    ) -> Result<Option<StreamMessage>, StreamError> {
        match self
            .stream
            .get_first_raw_message_by_subject(subject, after + 1)
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(nats(error)),
        }
    }

    /// Deletes the message at `sequence`; one already gone is fine.
    pub async fn delete(&self, sequence: u64) -> Result<(), StreamError> {
        match self.stream.delete_message(sequence).await {
            Ok(_) => Ok(()),
            Err(error) => match error.kind() {
                DeleteMessageErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                        || e.error_code() == ErrorCode::NO_MESSAGE_FOUND
                        || e.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED =>
                {
                    Ok(())
                }
                _ => Err(nats(error)),
            },
        }
    }

    /// Removes `subject`'s messages with a sequence below `below`.
    pub async fn purge_below(&self, subject: &str, below: u64) -> Result<(), StreamError> {
        self.stream
            .purge()
            .filter(subject)
            .sequence(below)
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// The subjects matching `filter` that hold messages, with their message counts.
    pub async fn subject_counts(
        &self,
        filter: &str,
    ) -> Result<HashMap<String, usize>, StreamError> {
        let mut subjects = self.stream.info_with_subjects(filter).await.map_err(nats)?;
        let mut counts = HashMap::new();
        while let Some(item) = subjects.next().await {
            let (subject, count) = item.map_err(nats)?;
            counts.insert(subject, count);
        }
        Ok(counts)
    }
}

/// The outcome of [`JournalStream::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored (or stored before, under the same message id).
    Stored(Appended),
    /// The subject's last sequence was not the one expected: another writer appended.
    Moved,
}

/// `text` as one subject token: characters NATS gives a meaning to become `_`, and an empty
/// text is `_`.
pub fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    text.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}
