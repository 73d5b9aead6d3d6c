//! The request metrics' handles, resolved once per label set: the access log layer counts
//! every request, and looking its series up by label values each time (hashing the values,
//! a lock on the family's map) is work a request does not need.
//!
//! A series is created on first use, as `with_label_values` creates it, so `/metrics` shows
//! exactly the series it showed before; a status outside [`CACHED_STATUSES`] is looked up by
//! label values each time.

use std::sync::OnceLock;

use http::StatusCode;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use shift_chroma::Operation;
use shift_config::BackendName;

/// The statuses whose counters are kept: the ones Chroma and the proxy answer with.
const CACHED_STATUSES: [u16; 16] = [
    200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 502, 503, 504,
];

/// Who answered a request: one of the stores, or the proxy itself.
const ANSWERERS: usize = 3;

/// The handles of one operation.
#[derive(Debug, Default)]
struct OperationSeries {
    duration: OnceLock<Histogram>,
    /// By backend (old, new).
    upstream: [OnceLock<Histogram>; 2],
    /// By answerer (old, new, proxy) and status (in [`CACHED_STATUSES`] order).
    requests: [[OnceLock<IntCounter>; CACHED_STATUSES.len()]; ANSWERERS],
}

/// The series of `chroma_shift_requests_total`, `chroma_shift_request_duration_seconds` and
/// `chroma_shift_upstream_duration_seconds`, by operation.
#[derive(Debug)]
pub struct RequestSeries {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    /// Indexed by [`Operation::index`].
    operations: Box<[OperationSeries]>,
}

/// The `backend` label of a request's answer.
fn answerer_label(backend: Option<BackendName>) -> &'static str {
    backend.map_or("proxy", |b| b.as_str())
}

fn answerer_index(backend: Option<BackendName>) -> usize {
    match backend {
        Some(BackendName::Old) => 0,
        Some(BackendName::New) => 1,
        None => 2,
    }
}

impl RequestSeries {
    pub fn new(
        requests: IntCounterVec,
        request_duration: HistogramVec,
        upstream_duration: HistogramVec,
    ) -> RequestSeries {
        RequestSeries {
            requests,
            request_duration,
            upstream_duration,
            operations: (0..Operation::COUNT)
                .map(|_| OperationSeries::default())
                .collect(),
        }
    }

    /// Counts a request `backend` (or the proxy, `None`) answered with `status`.
    pub fn count(&self, operation: Operation, backend: Option<BackendName>, status: StatusCode) {
        let labels = || [operation.name(), answerer_label(backend), status.as_str()];
        match CACHED_STATUSES.iter().position(|s| *s == status.as_u16()) {
            Some(slot) => self.operations[operation.index()].requests[answerer_index(backend)]
                [slot]
                .get_or_init(|| self.requests.with_label_values(&labels()))
                .inc(),
            None => self.requests.with_label_values(&labels()).inc(),
        }
    }

    /// Observes a request's time to its response head.
    pub fn observe_duration(&self, operation: Operation, seconds: f64) {
        self.operations[operation.index()]
            .duration
            .get_or_init(|| self.request_duration.with_label_values(&[operation.name()]))
            .observe(seconds);
    }

    /// Observes the time `backend` took to send its response head.
    pub fn observe_upstream(&self, operation: Operation, backend: BackendName, seconds: f64) {
        self.operations[operation.index()].upstream[answerer_index(Some(backend))]
            .get_or_init(|| {
                self.upstream_duration
                    .with_label_values(&[backend.as_str(), operation.name()])
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, Opts};

    fn series() -> RequestSeries {
        RequestSeries::new(
            IntCounterVec::new(Opts::new("r", "r"), &["operation", "backend", "status"]).unwrap(),
            HistogramVec::new(HistogramOpts::new("d", "d"), &["operation"]).unwrap(),
            HistogramVec::new(HistogramOpts::new("u", "u"), &["backend", "operation"]).unwrap(),
        )
    }

    /// The cached handles count into the same series `with_label_values` names, cached
    /// status or not, and create no series before their first use.
    #[test]
    fn handles_count_into_the_labelled_series() {
        let s = series();
        assert_eq!(
            prometheus::core::Collector::collect(&s.requests)[0]
                .get_metric()
                .len(),
            0
        );
        for _ in 0..3 {
            s.count(Operation::Heartbeat, Some(BackendName::Old), StatusCode::OK);
        }
        s.count(Operation::CollectionQuery, None, StatusCode::IM_A_TEAPOT);
        s.count(
            Operation::Unknown,
            Some(BackendName::New),
            StatusCode::NOT_FOUND,
        );
        let get = |labels: &[&str]| s.requests.with_label_values(labels).get();
        assert_eq!(get(&["heartbeat", "old", "200"]), 3);
        assert_eq!(get(&["collection_query", "proxy", "418"]), 1);
        assert_eq!(get(&["unknown", "new", "404"]), 1);
        assert_eq!(get(&["heartbeat", "new", "200"]), 0);

        s.observe_duration(Operation::CollectionQuery, 0.25);
        s.observe_upstream(Operation::CollectionQuery, BackendName::New, 0.5);
        let duration = s.request_duration.with_label_values(&["collection_query"]);
        assert_eq!(duration.get_sample_count(), 1);
        assert_eq!(duration.get_sample_sum(), 0.25);
        let upstream = s
            .upstream_duration
            .with_label_values(&["new", "collection_query"]);
        assert_eq!(upstream.get_sample_sum(), 0.5);
        assert_eq!(
            s.upstream_duration
                .with_label_values(&["old", "collection_query"])
                .get_sample_count(),
            0
        );
    }
}
