//! `[server.limits]`: what keeps the data plane bounded under more load than it can hold.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::{invalid, ConfigError};

/// Load shedding and body limits of the data plane. The defaults fit a pod with 1 GiB of
/// memory: a mirrored write holds a few copies of its body (the bytes read, the parsed
/// document the mirror journals), so the budget of raw bodies stays well under the pod's
/// memory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests handled at once; past it a request is answered 503 with `Retry-After` at once,
    /// never queued. Heartbeat, healthcheck and version never count and are never refused.
    /// Writes held by a cutover or a pause count too: this also bounds that queue.
    pub max_in_flight: usize,
    /// Bytes of request bodies buffered at once, all requests together. A body that does not
    /// fit in what is left is answered 503 with `Retry-After`. The last eighth (at most what
    /// the budget has beyond `server.max_body`) is kept for bodies of at most 1 MiB, so large
    /// bodies cannot shut out queries and small writes. Must be at least `server.max_body`, or
    /// a body of the largest allowed size could never be admitted.
    pub body_budget: ByteSize,
    /// How long a request body may take to arrive once its head did; a client that stalls
    /// mid-body is answered 408 and its connection closed.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight: 512,
            body_budget: ByteSize::mib(128),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

impl LimitsConfig {
    pub(crate) fn validate(&self, max_body: ByteSize) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 {
            return Err(invalid("server.limits.max_in_flight", "must be above zero"));
        }
        if self.body_budget < max_body {
            return Err(invalid(
                "server.limits.body_budget",
                format!(
                    "must be at least server.max_body ({max_body}), or a body of the largest allowed size could never be admitted"
                ),
            ));
        }
        if self.body_read_timeout.is_zero() {
            return Err(invalid(
                "server.limits.body_read_timeout",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_below_the_largest_body_is_refused_naming_both_keys() {
        let limits = LimitsConfig {
            body_budget: ByteSize::mib(32),
            ..LimitsConfig::default()
        };
        let error = limits.validate(ByteSize::mib(64)).unwrap_err().to_string();
        assert!(error.contains("server.limits.body_budget"), "{error}");
        assert!(error.contains("server.max_body"), "{error}");
        assert!(LimitsConfig::default().validate(ByteSize::mib(64)).is_ok());
    }

    #[test]
    fn zero_limits_are_refused() {
        let zero_in_flight = LimitsConfig {
            max_in_flight: 0,
            ..LimitsConfig::default()
        };
        assert!(zero_in_flight.validate(ByteSize::mib(1)).is_err());
        let zero_timeout = LimitsConfig {
            body_read_timeout: Duration::ZERO,
            ..LimitsConfig::default()
        };
        assert!(zero_timeout.validate(ByteSize::mib(1)).is_err());
    }
}
