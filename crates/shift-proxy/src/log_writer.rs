//! The access log's writer: its lines (one per request) are appended to a buffer in memory and
//! written out by a thread of their own, a batch at a time, so a request pays for formatting
//! its line but not for a `write` system call. Every other log line (rare, and some read at
//! once by operators and tests) is written as it comes ([`stdout_with_access_log`]), so an
//! access line may come out up to [`BATCH_INTERVAL`] after lines logged later.
//!
//! Nothing is dropped: a writer that falls more than [`BUFFER_LIMIT`] behind makes the threads
//! that log wait until it has caught up. The lines of the last moments (at most
//! [`BATCH_INTERVAL`]) are written when the [`LogFlushGuard`] is dropped, so keep the guard
//! until the process exits (lines logged after it is dropped are lost, as are those of the
//! last moments of a process that crashes).
//!
//! Use [`stdout_with_access_log`] as the fmt subscriber's writer. Better still, hand the writer
//! the access log itself ([`LogWriter::take_access_log`]): requests then leave their fields
//! ([`AccessRecord`]) and this thread formats the lines too, off the request path.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::writer::{MakeWriter, MakeWriterExt};

use crate::access_line::{AccessFormat, AccessRecord};
use crate::observe::ACCESS_LOG_TARGET;

/// How far (in bytes) the writer may fall behind before logging threads wait for it.
pub const BUFFER_LIMIT: usize = 4 << 20;

/// How long the writer collects lines before it writes them out (it waits only while
/// there is something to write).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// A cloneable [`Write`] that hands log lines to the background writer.
#[derive(Clone, Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what is still buffered and stops the background writer when dropped.
#[derive(Debug)]
pub struct LogFlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The background writer waits on it for lines (and for the end).
    wake: Condvar,
    /// Logging threads wait on it for room in the buffer.
    room: Condvar,
    limit: usize,
    interval: Duration,
}

#[derive(Debug, Default)]
struct State {
    buffer: Vec<u8>,
    /// Access lines still to format, in the order the requests ended.
    records: Vec<AccessRecord>,
    /// How records are formatted.
    format: AccessFormat,
    /// The background writer waits for lines: the next line wakes it.
    idle: bool,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a buffer that is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an unformatted record counts for against [`BUFFER_LIMIT`] (about its line's length).
const RECORD_BYTES: usize = 320;

impl State {
    fn pending(&self) -> usize {
        self.buffer.len() + self.records.len() * RECORD_BYTES
    }

    fn is_empty(&self) -> bool {
        self.buffer.is_empty() && self.records.is_empty()
    }
}

/// The writer that takes the access log's records, once one was given it.
static ACCESS_SINK: OnceLock<LogWriter> = OnceLock::new();

/// The log writer that takes the access log's records ([`LogWriter::take_access_log`]);
/// `None` when the access log goes through tracing's formatter.
pub fn access_sink() -> Option<&'static LogWriter> {
    ACCESS_SINK.get()
}

/// The fmt subscriber's writer: access-log lines through `writer`, every other line straight
/// to standard output.
pub fn stdout_with_access_log(
    writer: LogWriter,
) -> impl for<'a> MakeWriter<'a> + Send + Sync + 'static {
    split_access_log(writer, std::io::stdout)
}

/// Access-log lines through `writer`, every other line through `other`.
fn split_access_log<M>(writer: LogWriter, other: M) -> impl for<'a> MakeWriter<'a> + Send + Sync
where
    M: for<'a> MakeWriter<'a> + Send + Sync,
{
    let access = move || writer.clone();
    access
        .with_filter(|meta: &tracing::Metadata<'_>| meta.target() == ACCESS_LOG_TARGET)
        .or_else(other)
}

/// Sets up the process's logging as `[log]` says (`RUST_LOG` wins over its level): every line
/// to standard output, the access log's through the background writer, which also formats
/// them, except for a terminal (there tracing's coloured lines are kept). Keep the guard until
/// the end: it writes out the last lines. `chroma-shift serve` and the benches' proxy use it.
pub fn init_logging(config: &shift_config::LogConfig) -> std::io::Result<LogFlushGuard> {
    init_logging_with(config, tracing_subscriber::layer::Identity::new())
}

/// As [`init_logging`], with `extra` (the trace exporter's layer) beside the log lines. Spans
/// of [`crate::trace_ctx::TARGET`] never reach the log: log lines look the same with the trace
/// export on.
pub fn init_logging_with<L>(
    config: &shift_config::LogConfig,
    extra: L,
) -> std::io::Result<LogFlushGuard>
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.level))
        .add_directive(
            format!("{}=off", crate::trace_ctx::TARGET)
                .parse()
                .map_err(std::io::Error::other)?,
        );
    let (writer, guard) = log_writer(std::io::stdout())?;
    // Colours only for a terminal: a log file or a pipeline gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(stdout_with_access_log(writer.clone()));
    let (fmt, format) = match config.format {
        shift_config::LogFormat::Json => {
            (fmt.json().flatten_event(true).boxed(), AccessFormat::Json)
        }
        shift_config::LogFormat::Text => (fmt.boxed(), AccessFormat::Text),
    };
    let installed = tracing_subscriber::registry()
        .with(extra)
        .with(fmt.with_filter(filter))
        .try_init();
    if installed.is_ok() && !ansi {
        writer.take_access_log(format);
    }
    Ok(guard)
}

/// Starts the background writer over `out` (standard output in the proxy).
pub fn log_writer<W: Write + Send + 'static>(
    out: W,
) -> std::io::Result<(LogWriter, LogFlushGuard)> {
    log_writer_with(out, BUFFER_LIMIT, BATCH_INTERVAL)
}

fn log_writer_with<W: Write + Send + 'static>(
    mut out: W,
    limit: usize,
    interval: Duration,
) -> std::io::Result<(LogWriter, LogFlushGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        room: Condvar::new(),
        limit,
        interval,
    });
    let background = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("log-writer".to_owned())
        .spawn(move || {
            let mut batch = Vec::new();
            let mut records = Vec::new();
            while background.next_batch(&mut batch, &mut records) {
                // Nowhere to report a failed log write: the line is lost, the proxy goes on.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
            }
        })?;
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogFlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

impl Shared {
    /// Waits for lines, lets more gather for `interval`, then takes them all into `batch`
    /// (the records formatted after the lines already written; `records` is scratch space);
    /// false once closed with nothing left.
    fn next_batch(&self, batch: &mut Vec<u8>, records: &mut Vec<AccessRecord>) -> bool {
        let mut state = self.lock();
        while state.is_empty() {
            if state.closed {
                return false;
            }
            state.idle = true;
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if !state.closed {
            // Lines written meanwhile join this batch without waking anyone.
            drop(state);
            std::thread::sleep(self.interval);
            state = self.lock();
        }
        std::mem::swap(&mut state.buffer, batch);
        std::mem::swap(&mut state.records, records);
        let format = state.format;
        drop(state);
        self.room.notify_all();
        for record in records.drain(..) {
            record.write_line(format, batch);
        }
        true
    }
}

impl Shared {
    /// Waits until `len` more bytes fit under the limit (or the buffer is empty, or closed).
    fn room_for<'a>(&self, mut state: MutexGuard<'a, State>, len: usize) -> MutexGuard<'a, State> {
        while !state.closed && !state.is_empty() && state.pending() + len > self.limit {
            state = self
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state
    }

    /// Wakes the background writer if it waits for lines.
    fn wake_writer(&self, mut state: MutexGuard<'_, State>) {
        if std::mem::take(&mut state.idle) {
            drop(state);
            self.wake.notify_one();
        }
    }
}

impl LogWriter {
    /// Makes this writer the access log's: from now on requests hand it their
    /// [`AccessRecord`]s and its thread formats them as `format` says, instead of each request
    /// formatting its line through tracing. Once per process; false (and nothing changed) when
    /// a writer already took it.
    pub fn take_access_log(&self, format: AccessFormat) -> bool {
        self.set_access_format(format);
        ACCESS_SINK.set(self.clone()).is_ok()
    }

    fn set_access_format(&self, format: AccessFormat) {
        self.shared.lock().format = format;
    }

    /// Queues one request's access line.
    pub fn record(&self, record: AccessRecord) {
        let shared = &self.shared;
        let state = shared.lock();
        if state.closed {
            // After the guard: nobody would write it out.
            return;
        }
        let mut state = shared.room_for(state, RECORD_BYTES);
        state.records.push(record);
        shared.wake_writer(state);
    }
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.closed {
            // After the guard: nobody would write it out.
            return Ok(bytes.len());
        }
        state = shared.room_for(state, bytes.len());
        state.buffer.extend_from_slice(bytes);
        shared.wake_writer(state);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogFlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes the test can read, counting the writes it took.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(bytes);
            sink.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(threads: usize, per_thread: usize, writer: &LogWriter) {
        std::thread::scope(|scope| {
            for t in 0..threads {
                let mut writer = writer.clone();
                scope.spawn(move || {
                    for i in 0..per_thread {
                        writer
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
    }

    /// Every line arrives whole, in each thread's order, once the guard is dropped; many
    /// lines take far fewer writes than lines.
    #[test]
    fn every_line_is_written_whole_and_in_order() {
        let sink = Sink::default();
        let (writer, guard) = log_writer_with(sink.clone(), BUFFER_LIMIT, BATCH_INTERVAL).unwrap();
        lines(4, 2_000, &writer);
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, i) = line
                .strip_prefix("thread ")
                .and_then(|l| l.split_once(" line "))
                .unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [2_000; 4]);
        assert!(
            writes < 8_000,
            "{writes} writes for 8000 lines: not batched"
        );
    }

    /// Access-log lines go through the background writer, the others straight through.
    #[test]
    fn only_access_lines_are_batched() {
        let access_sink = Sink::default();
        let other_sink = Sink::default();
        let (writer, guard) =
            log_writer_with(access_sink.clone(), BUFFER_LIMIT, BATCH_INTERVAL).unwrap();
        let other = other_sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(split_access_log(writer, move || other.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_LOG_TARGET, operation = "heartbeat", "request");
            tracing::warn!("something else");
        });
        let other_text = String::from_utf8(other_sink.0.lock().unwrap().0.clone()).unwrap();
        assert!(other_text.contains("something else"), "{other_text}");
        assert!(!other_text.contains("heartbeat"), "{other_text}");
        drop(guard);
        let access_text = String::from_utf8(access_sink.0.lock().unwrap().0.clone()).unwrap();
        assert!(
            access_text.contains("operation=\"heartbeat\""),
            "{access_text}"
        );
        assert!(!access_text.contains("something else"), "{access_text}");
    }

    /// Records are formatted by the writer's thread, in the order they came, in the format
    /// given, and count against the limit like lines.
    #[test]
    fn records_are_formatted_by_the_writer_in_order() {
        let sink = Sink::default();
        let (writer, guard) =
            log_writer_with(sink.clone(), 4 * RECORD_BYTES, Duration::from_millis(1)).unwrap();
        writer.set_access_format(AccessFormat::Json);
        let route = shift_chroma::classify(&http::Method::GET, "/api/v2/heartbeat");
        std::thread::scope(|scope| {
            let writer = writer.clone();
            scope.spawn(move || {
                for status in 0..200u16 {
                    writer.record(AccessRecord {
                        at: std::time::SystemTime::now(),
                        method: http::Method::GET,
                        operation: route.operation.name(),
                        params: route.params.clone(),
                        status,
                        backend: "old",
                        duration: Duration::from_micros(250),
                        upstream: None,
                        error: "",
                        identity: None,
                    });
                }
            });
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().0.clone()).unwrap();
        let statuses: Vec<u64> = text
            .lines()
            .map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(line["operation"], "heartbeat");
                assert_eq!(line["target"], ACCESS_LOG_TARGET);
                line["status"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(statuses, (0..200).collect::<Vec<_>>());
    }

    /// A writer far behind makes loggers wait; nothing is lost.
    #[test]
    fn a_full_buffer_holds_loggers_back_without_losing_lines() {
        let sink = Sink::default();
        let (writer, guard) = log_writer_with(sink.clone(), 64, Duration::from_millis(1)).unwrap();
        lines(3, 500, &writer);
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().0.clone()).unwrap();
        assert_eq!(text.lines().count(), 1_500);
    }
}
