//! What the state store alone costs a mirrored write, outside the proxy: each write records
//! its intent, then, in journaled mode, settles it into a journal entry (a payload the size of
//! a 10-record 384-dimension add as JSON), reads it back and removes it as the replay would;
//! in sync mode it discards the intent. Prints the process's CPU time and the bytes it wrote
//! per write (Linux: `/proc/self/stat` and `/proc/self/io`).
//!
//! `cargo run --release -p shift-state --example state_cycle -- [journaled|sync] [WRITES] [TASKS] [PAYLOAD_BYTES] [INTENT_BYTES]`
//! (defaults: journaled, 2000 writes, 8 concurrent tasks, 80,800 bytes, a 160-byte intent
//! as the proxy records a 10-record write's (its reconciliation); an INTENT_BYTES equal to
//! PAYLOAD_BYTES is what the proxy recorded up to `99dad48`, the op in full; the store in a
//! fresh temporary directory).

use std::sync::Arc;
use std::time::Instant;

use shift_config::BackendName;
use shift_state::{NewEntry, StateStore};

/// The journal payload of a 10-record add of 384 floats written as JSON, as in the benches.
const DEFAULT_PAYLOAD_BYTES: usize = 80_800;
/// A 10-record write's intent as the proxy records it: `{"reconcile":{...,"ids":[...]}}`.
const DEFAULT_INTENT_BYTES: usize = 160;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let journaled = match args.next().as_deref() {
        None | Some("journaled") => true,
        Some("sync") => false,
        Some(other) => return Err(format!("mode {other:?}: journaled or sync").into()),
    };
    let writes: usize = args.next().map_or(Ok(2000), |v| v.parse())?;
    let tasks: usize = args.next().map_or(Ok(8), |v| v.parse())?.max(1);
    let payload_bytes: usize = args
        .next()
        .map_or(Ok(DEFAULT_PAYLOAD_BYTES), |v| v.parse())?;
    let intent_bytes: usize = args
        .next()
        .map_or(Ok(DEFAULT_INTENT_BYTES), |v| v.parse())?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(StateStore::open(dir.path()).await?);
    let payload: Vec<u8> = b"0.123456789,"
        .iter()
        .copied()
        .cycle()
        .take(payload_bytes)
        .collect();
    let intent = payload[..intent_bytes.min(payload_bytes)].to_vec();

    let (cpu_before, written_before) = (cpu_seconds()?, written_bytes()?);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (store, payload, intent) = (store.clone(), payload.clone(), intent.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..writes / tasks {
                cycle(&store, &intent, &payload, journaled).await?;
            }
            Ok::<(), shift_state::StoreError>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    let done = (writes / tasks * tasks) as f64;
    let cpu_after = cpu_seconds()?;
    let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let written = written_bytes()? - written_before;
    let stats = store.commit_stats();
    println!(
        "{} writes ({}), {tasks} tasks: {:.0} us wall, CPU {:.0} us user + {:.0} us system, {:.0} KB written per write (payload {:.1} KB, intent {} B); {} commits, {} durable",
        done,
        if journaled { "journaled" } else { "sync" },
        elapsed.as_secs_f64() * 1e6 / done,
        cpu.0 * 1e6 / done,
        cpu.1 * 1e6 / done,
        written as f64 / done / 1e3,
        payload_bytes as f64 / 1e3,
        intent.len(),
        stats.commits,
        stats.durable_commits,
    );
    Ok(())
}

/// One write's state changes, as the proxy makes them.
async fn cycle(
    store: &StateStore,
    intent: &[u8],
    payload: &[u8],
    journaled: bool,
) -> Result<(), shift_state::StoreError> {
    let intent = store.record_intent(intent.to_vec()).await?;
    if !journaled {
        return store.discard_intent_deferred(intent).await;
    }
    let entry = NewEntry {
        target: BackendName::New,
        collection: "c".into(),
        payload: payload.to_vec(),
    };
    let seqs = store.settle_intent(intent, vec![entry]).await?;
    store.read(BackendName::New, None, 1)?;
    store.remove_deferred(BackendName::New, &seqs).await
}

/// The process's user and system CPU time so far, in seconds.
fn cpu_seconds() -> std::io::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 after the command's name.
    Ok((ticks(11) / 100.0, ticks(12) / 100.0))
}

/// Bytes this process has written through write calls so far (`wchar`).
fn written_bytes() -> std::io::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    Ok(io
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}
