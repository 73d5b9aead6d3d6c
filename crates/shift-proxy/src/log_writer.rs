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
//! Use [`stdout_with_access_log`] as the fmt subscriber's writer.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::writer::{MakeWriter, MakeWriterExt};

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
            while background.next_batch(&mut batch) {
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
    /// Waits for lines, lets more gather for `interval`, then takes them all into `batch`;
    /// false once closed with nothing left.
    fn next_batch(&self, batch: &mut Vec<u8>) -> bool {
        let mut state = self.lock();
        while state.buffer.is_empty() {
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
        drop(state);
        self.room.notify_all();
        true
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
        while !state.closed
            && !state.buffer.is_empty()
            && state.buffer.len() + bytes.len() > shared.limit
        {
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.buffer.extend_from_slice(bytes);
        if std::mem::take(&mut state.idle) {
            drop(state);
            shared.wake.notify_one();
        }
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
