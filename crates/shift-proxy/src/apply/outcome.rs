//! How a store's answer to an applied op sorts: done, worth retrying, refused for good, or a
//! halt of the whole target. Pure functions of the answer, each case tested on its own.

use std::time::Duration;

use http::{header, StatusCode};
use shift_config::BackendName;

use crate::backend::Answer;
use crate::error::BackendError;
use crate::resolve::ResolveError;

/// Why an op did not apply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// Worth retrying: the store was unreachable, slow, overloaded or failing.
    #[error("{reason}")]
    Retry {
        reason: String,
        /// What the store asked for with `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The store refused the op; retrying will not change its mind.
    #[error("{reason}")]
    Refused {
        reason: String,
        /// The refusal was an embedding dimension that differs from the collection's.
        dimension_mismatch: bool,
    },
    /// The store turned the proxy itself away: its credentials (401, 403) or its configuration
    /// (a 404 for a collection or tenant the proxy knows). Every op would fail the same way
    /// until someone fixes it, so the replay stops the target and probes, rather than parking
    /// each write as a dead letter.
    #[error("{reason}")]
    Halted { reason: String, cause: HaltCause },
}

/// Why a store turned the proxy away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltCause {
    /// 401 or 403: the proxy's credentials for the store are missing, wrong or rotated.
    Unauthorized,
    /// 404 of a path the proxy knows exists (a mapped collection, a tenant): the store is not
    /// the one the proxy was set up against, or was changed behind its back.
    Misconfigured,
}

impl HaltCause {
    /// The metric label and status word.
    pub fn as_str(self) -> &'static str {
        match self {
            HaltCause::Unauthorized => "unauthorized",
            HaltCause::Misconfigured => "misconfigured",
        }
    }
}

/// What a 404 means for the op that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// The path names something the proxy knows exists on the store: a configuration problem.
    Misconfigured,
    /// The 404 is about the op itself (a function that does not exist): refuse the op.
    Refused,
}

/// Sorts a store's failure answer (not 2xx) into worth retrying, refused for good, or a halt
/// of the whole target. A pure function of the answer, so each case is tested on its own.
///
/// - 408, 429 and 5xx are retried, except 501 (Not Implemented) and 505 (HTTP Version Not
///   Supported): the store will never do the op, so waiting for it would block the journal;
/// - 401 and 403 halt the target: the store refuses the proxy, not the write;
/// - 404 halts the target when `not_found` says the path is one the proxy knows exists;
/// - every other status refuses the op (parked as a dead letter with `reason`).
pub fn classify(
    status: StatusCode,
    reason: String,
    body: &str,
    retry_after: Option<Duration>,
    not_found: NotFound,
) -> ApplyError {
    match status {
        StatusCode::NOT_IMPLEMENTED | StatusCode::HTTP_VERSION_NOT_SUPPORTED => {
            ApplyError::refused(format!("not implemented by the target: {reason}"))
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => ApplyError::Retry {
            reason,
            retry_after,
        },
        s if s.is_server_error() => ApplyError::Retry {
            reason,
            retry_after,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApplyError::Halted {
            reason,
            cause: HaltCause::Unauthorized,
        },
        StatusCode::NOT_FOUND if not_found == NotFound::Misconfigured => ApplyError::Halted {
            reason,
            cause: HaltCause::Misconfigured,
        },
        _ => ApplyError::Refused {
            reason,
            dimension_mismatch: body.contains("expecting embedding with dimension"),
        },
    }
}

impl ApplyError {
    pub(super) fn refused(reason: impl Into<String>) -> ApplyError {
        ApplyError::Refused {
            reason: reason.into(),
            dimension_mismatch: false,
        }
    }

    /// Worth retrying later, with no hint of when: a local failure such as the state's.
    pub(super) fn retry_later(error: impl std::fmt::Display) -> ApplyError {
        ApplyError::Retry {
            reason: error.to_string(),
            retry_after: None,
        }
    }
}

impl From<BackendError> for ApplyError {
    fn from(error: BackendError) -> ApplyError {
        ApplyError::Retry {
            reason: error.to_string(),
            retry_after: None,
        }
    }
}

impl From<ResolveError> for ApplyError {
    fn from(error: ResolveError) -> ApplyError {
        ApplyError::Retry {
            reason: error.to_string(),
            retry_after: None,
        }
    }
}

/// Sorts a store's answer into success or an [`ApplyError`] (see [`classify`]); a 404 means the
/// path the proxy knows is gone.
pub(super) fn check(target: BackendName, what: &str, answer: Answer) -> Result<Answer, ApplyError> {
    check_scoped(target, what, answer, NotFound::Misconfigured)
}

pub(super) fn check_scoped(
    target: BackendName,
    what: &str,
    answer: Answer,
    not_found: NotFound,
) -> Result<Answer, ApplyError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let text = answer.text();
    let reason = format!("{target} store answered {what} with {status}: {text}");
    let retry_after = answer
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Err(classify(status, reason, &text, retry_after, not_found))
}

/// Success, or the one failure status that means the op's effect is already there.
pub(super) fn accept(
    target: BackendName,
    what: &str,
    answer: Answer,
    already: StatusCode,
) -> Result<(), ApplyError> {
    if answer.status == already {
        return Ok(());
    }
    check(target, what, answer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort(status: u16, not_found: NotFound) -> ApplyError {
        let status = StatusCode::from_u16(status).unwrap();
        classify(status, format!("answered {status}"), "", None, not_found)
    }

    #[test]
    fn transient_answers_are_retried() {
        for status in [408, 429, 500, 502, 503, 504, 507, 599] {
            assert!(
                matches!(
                    sort(status, NotFound::Misconfigured),
                    ApplyError::Retry { .. }
                ),
                "{status}"
            );
        }
        let slow_down = classify(
            StatusCode::TOO_MANY_REQUESTS,
            "429".into(),
            "",
            Some(Duration::from_secs(7)),
            NotFound::Misconfigured,
        );
        assert!(matches!(
            slow_down,
            ApplyError::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
    }

    #[test]
    fn answers_that_never_change_are_refused_with_their_reason() {
        for status in [400, 405, 409, 413, 422, 501, 505] {
            match sort(status, NotFound::Misconfigured) {
                ApplyError::Refused { reason, .. } => {
                    assert!(reason.contains(&status.to_string()), "{reason}");
                    if status == 501 || status == 505 {
                        assert!(
                            reason.starts_with("not implemented by the target"),
                            "{reason}"
                        );
                    }
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        assert!(matches!(
            sort(404, NotFound::Refused),
            ApplyError::Refused { .. }
        ));
        let dimension = classify(
            StatusCode::BAD_REQUEST,
            "400".into(),
            r#"{"error":"InvalidArgumentError","message":"Collection expecting embedding with dimension of 3, got 2"}"#,
            None,
            NotFound::Misconfigured,
        );
        assert!(matches!(
            dimension,
            ApplyError::Refused {
                dimension_mismatch: true,
                ..
            }
        ));
    }

    #[test]
    fn refusals_of_the_proxy_itself_halt_the_target() {
        for (status, cause) in [
            (401, HaltCause::Unauthorized),
            (403, HaltCause::Unauthorized),
            (404, HaltCause::Misconfigured),
        ] {
            match sort(status, NotFound::Misconfigured) {
                ApplyError::Halted { cause: got, .. } => assert_eq!(got, cause, "{status}"),
                other => panic!("{status}: {other:?}"),
            }
        }
    }
}
