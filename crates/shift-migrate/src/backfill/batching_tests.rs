use std::sync::Mutex;
use std::time::Duration;

use super::*;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:02}")).collect()
}

#[test]
fn a_batch_is_never_larger_than_either_store_takes() {
    assert_eq!(batch_size(None, 5000), 1000);
    assert_eq!(batch_size(None, 300), 300);
    assert_eq!(batch_size(Some(50), 300), 50);
    assert_eq!(batch_size(Some(5000), 300), 300);
    assert_eq!(batch_size(Some(0), 300), 1);
    assert_eq!(
        batch_size(Some(10), 0),
        1,
        "a store reporting 0 still gets one record"
    );
}

#[test]
fn concurrency_is_bounded() {
    assert_eq!(concurrency(None), 2);
    assert_eq!(concurrency(Some(0)), 1);
    assert_eq!(concurrency(Some(8)), 8);
    assert_eq!(concurrency(Some(1000)), 32);
}

#[test]
fn a_checkpoint_skips_the_prefix_it_covers() {
    let snapshot = ids(6);
    assert_eq!(resume(&snapshot, None), (0, snapshot.clone()));
    assert_eq!(resume(&snapshot, Some("r02")), (3, snapshot[3..].to_vec()));
    // A checkpoint between two ids (the id it named was deleted since): the later ones remain.
    assert_eq!(resume(&snapshot, Some("r02a")), (3, snapshot[3..].to_vec()));
    assert_eq!(resume(&snapshot, Some("r99")), (6, Vec::new()));
}

#[test]
fn ids_the_snapshot_missed_are_found() {
    let snapshot = ids(4);
    let again = vec![
        "r01".to_owned(),
        "new".to_owned(),
        "r03".to_owned(),
        "a".to_owned(),
    ];
    assert_eq!(missed(&snapshot, again), ["new", "a"]);
    assert!(missed(&snapshot, snapshot.clone()).is_empty());
}

/// What a fake copy saw: batches in the order they ended and finished, and the most in flight.
#[derive(Debug, Default)]
struct Seen {
    ended: Vec<Vec<String>>,
    finished: Vec<Vec<String>>,
    in_flight: usize,
    most_in_flight: usize,
}

/// Copies `ids` with a fake store in which a later batch ends sooner (paused time), failing the
/// batch that starts with `fail_at`, cancelling after `cancel_after` finished batches.
async fn run(
    ids: &[String],
    batch: usize,
    concurrency: usize,
    fail_at: Option<&str>,
    cancel_after: Option<usize>,
) -> (Result<(), String>, Seen) {
    let seen = Mutex::new(Seen::default());
    let result = copy_in_order(
        ids,
        batch,
        concurrency,
        |batch: Vec<String>| {
            let seen = &seen;
            async move {
                {
                    let mut s = seen.lock().unwrap();
                    s.in_flight += 1;
                    s.most_in_flight = s.most_in_flight.max(s.in_flight);
                }
                // The later the batch, the sooner it ends.
                let rank = 100 - batch[0][1..].parse::<u64>().unwrap();
                tokio::time::sleep(Duration::from_millis(rank)).await;
                let mut s = seen.lock().unwrap();
                s.in_flight -= 1;
                s.ended.push(batch.clone());
                if fail_at == Some(batch[0].as_str()) {
                    return Err(format!("copy: {} refused", batch[0]));
                }
                let copied = batch.len();
                Ok((batch, copied))
            }
        },
        |batch, copied| {
            let mut s = seen.lock().unwrap();
            assert_eq!(copied, batch.len());
            s.finished.push(batch);
            let cancelled = cancel_after.is_some_and(|n| s.finished.len() >= n);
            async move { Ok(cancelled) }
        },
    )
    .await;
    (result, seen.into_inner().unwrap())
}

#[tokio::test(start_paused = true)]
async fn batches_end_in_any_order_and_finish_in_id_order() {
    let all = ids(10);
    let (result, seen) = run(&all, 3, 3, None, None).await;
    result.unwrap();
    let sizes: Vec<usize> = seen.finished.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(seen.finished.concat(), all, "every id once, in order");
    assert_ne!(
        seen.ended, seen.finished,
        "the fake ends later batches first"
    );
    assert_eq!(
        seen.most_in_flight, 3,
        "concurrency is used and not exceeded"
    );
}

#[tokio::test(start_paused = true)]
async fn one_batch_at_a_time_when_asked() {
    let (result, seen) = run(&ids(5), 2, 1, None, None).await;
    result.unwrap();
    assert_eq!(seen.most_in_flight, 1);
    assert_eq!(seen.ended, seen.finished);
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_stops_the_copy_and_a_resume_starts_at_it() {
    let all = ids(10);
    let (result, seen) = run(&all, 3, 3, Some("r03"), None).await;
    assert_eq!(result.unwrap_err(), "copy: r03 refused");
    // The batch after the failed one may have ended, but it is not finished (checkpointed).
    assert_eq!(seen.finished, [all[..3].to_vec()]);
    assert!(seen.ended.contains(&all[6..9].to_vec()));
    // The checkpoint is the last id finished: a resumed run copies from the failed batch on.
    let checkpoint = seen.finished.last().and_then(|b| b.last()).cloned();
    let (done, todo) = resume(&all, checkpoint.as_deref());
    assert_eq!((done, todo), (3, all[3..].to_vec()));
}

#[tokio::test(start_paused = true)]
async fn a_cancel_stops_after_the_batch_that_saw_it() {
    let (result, seen) = run(&ids(10), 2, 2, None, Some(2)).await;
    result.unwrap();
    assert_eq!(seen.finished.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn nothing_to_copy_finishes_nothing() {
    let (result, seen) = run(&[], 3, 2, None, None).await;
    result.unwrap();
    assert!(seen.finished.is_empty() && seen.ended.is_empty());
}
