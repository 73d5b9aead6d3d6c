//! [`ShadowReads`]: runs each shadow in a background task within the queue bound, fetches the
//! secondary's answer within the shadow timeout, and judges it against the primary's once both
//! are in. The score it keeps is in [`super::score`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{oneshot, Semaphore};

use super::compare::compare;
use super::score::Scoreboard;
use super::types::{
    MismatchSample, PrimaryHandoff, ShadowOutcome, ShadowRequest, ShadowSettings, SkipReason,
};
use super::MAX_COMPARED_BODY;
use crate::backend::Backends;
use crate::metrics::ProxyMetrics;

/// Runs shadow reads and keeps the score of shadows and canaries.
#[derive(Debug)]
pub struct ShadowReads {
    pub(super) settings: ShadowSettings,
    /// One permit per running shadow: the bounded queue.
    pub(super) permits: Arc<Semaphore>,
    pub(super) metrics: ProxyMetrics,
    /// Held for a few field updates at a time, never across an await.
    score: Mutex<Scoreboard>,
}

impl ShadowReads {
    pub fn new(settings: ShadowSettings, metrics: ProxyMetrics) -> ShadowReads {
        ShadowReads {
            permits: Arc::new(Semaphore::new(settings.queue)),
            settings,
            metrics,
            score: Mutex::new(Scoreboard::default()),
        }
    }

    pub(super) fn scoreboard(&self) -> std::sync::MutexGuard<'_, Scoreboard> {
        // A panic while holding it leaves counters, nothing inconsistent: keep using them.
        self.score
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a shadow of `request` in the background, sent to the secondary now. `None` when
    /// the queue is full: the shadow is dropped (and counted).
    pub fn start(
        self: &Arc<Self>,
        backends: Arc<Backends>,
        request: ShadowRequest,
    ) -> Option<PrimaryHandoff> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.record(
                &request.collection,
                request.read,
                &ShadowOutcome::Dropped,
                None,
                None,
                None,
            );
            return None;
        };
        let (sender, receiver) = oneshot::channel();
        let shadows = self.clone();
        let timeout = self.settings.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            shadows.metrics.shadow_in_flight.inc();
            let secondary = tokio::time::timeout(timeout, fetch(&backends, &request));
            let (secondary, primary) = tokio::join!(secondary, receiver);
            shadows.metrics.shadow_in_flight.dec();
            let primary = primary.unwrap_or(Err(SkipReason::PrimaryFailed));
            shadows.settle(&request, primary, secondary.ok());
        });
        Some(PrimaryHandoff { sender })
    }

    /// Judges a shadow once both answers are in (the secondary's is `None` when it timed out).
    pub(super) fn settle(
        &self,
        request: &ShadowRequest,
        primary: Result<Bytes, SkipReason>,
        secondary: Option<Result<(StatusCode, Bytes), String>>,
    ) {
        let (collection, read) = (&request.collection, request.read);
        let primary = match primary {
            Ok(body) if body.len() as u64 > MAX_COMPARED_BODY => Err(SkipReason::TooLarge),
            other => other,
        };
        let primary = match primary {
            Ok(body) => body,
            Err(reason) => {
                self.skip(collection, read, reason);
                return;
            }
        };
        let (outcome, comparison, error) = match secondary {
            None => (
                ShadowOutcome::Timeout,
                None,
                Some(format!(
                    "the {} store did not answer within {:?}",
                    request.secondary, self.settings.timeout
                )),
            ),
            Some(Err(error)) => (ShadowOutcome::Error, None, Some(error)),
            Some(Ok((status, body))) if !status.is_success() => (
                ShadowOutcome::Error,
                None,
                Some(format!(
                    "the {} store answered {status}: {}",
                    request.secondary,
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )),
            ),
            Some(Ok((_, body))) => match compare(read, &request.body, &primary, &body) {
                Ok(c) if c.mismatch.is_some() => (ShadowOutcome::Mismatch, Some(c), None),
                Ok(c) => (ShadowOutcome::Match, Some(c), None),
                Err(e) => (ShadowOutcome::Error, None, Some(e.to_string())),
            },
        };
        let sample = comparison
            .as_ref()
            .and_then(|c| c.mismatch.clone())
            .map(|description| MismatchSample {
                at_ms: crate::replay::now_ms(),
                collection: collection.clone(),
                operation: read.name(),
                primary: request.primary,
                secondary: request.secondary,
                description,
            });
        if let Some(sample) = &sample {
            tracing::info!(
                collection = %collection.id,
                name = %collection.name,
                operation = read.name(),
                description = %sample.description,
                "shadow read mismatch"
            );
        }
        self.record(
            collection,
            read,
            &outcome,
            comparison.as_ref(),
            sample,
            error,
        );
    }
}

/// The secondary's whole answer to a shadow, or why it failed.
async fn fetch(
    backends: &Backends,
    request: &ShadowRequest,
) -> Result<(StatusCode, Bytes), String> {
    let response = backends
        .get(request.secondary)
        .send_as(
            &request.caller,
            request.method.clone(),
            &request.path,
            request.headers.clone(),
            request.body.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let limit = usize::try_from(MAX_COMPARED_BODY).unwrap_or(usize::MAX);
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                format!(
                    "the {} store's answer is over {MAX_COMPARED_BODY} bytes",
                    request.secondary
                )
            } else {
                format!("the {} store failed mid-answer: {e}", request.secondary)
            }
        })?
        .to_bytes();
    Ok((status, body))
}
