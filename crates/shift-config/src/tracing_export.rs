//! `[tracing]`: optional export of OpenTelemetry traces over OTLP/HTTP. Off by default: then
//! the proxy makes no span and sends nothing.

use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError, Secret};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// Export a trace per client request (the request, its primary call, the journal commit,
    /// the replay's apply to the secondary) and pass W3C trace context (`traceparent`) on to
    /// the stores. Off by default; when off, requests pay nothing for it.
    pub enabled: bool,
    /// The collector's OTLP/HTTP traces URL, path included (the OpenTelemetry Collector
    /// listens on `http://HOST:4318/v1/traces`).
    pub endpoint: String,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    pub protocol: OtlpProtocol,
    /// The `service.name` the spans carry.
    pub service_name: String,
    /// The share of client requests traced, from 0 to 1. A request that arrives with a
    /// `traceparent` follows its caller's decision instead.
    pub sample_ratio: f64,
    /// An environment variable holding extra headers for the export, `name=value,name=value`
    /// (a collector's API key, say): read at start, never logged. Unset: no extra headers.
    pub headers_env: Option<String>,
    /// How long one export may take; spans of an export that fails are dropped (they never
    /// hold up requests).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            protocol: OtlpProtocol::default(),
            service_name: "chroma-shift".to_owned(),
            sample_ratio: 1.0,
            headers_env: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How spans are encoded on their way to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP.
    #[serde(rename = "http/json")]
    HttpJson,
}

impl TracingConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "tracing.sample_ratio",
                format!("must be from 0 to 1, not {}", self.sample_ratio),
            ));
        }
        let url = url::Url::parse(&self.endpoint)
            .map_err(|e| invalid("tracing.endpoint", format!("not a URL: {e}")))?;
        if url.scheme() != "http" {
            return Err(invalid(
                "tracing.endpoint",
                "must be an http:// URL (a collector on the pod or the node; TLS to a remote one is the collector's job)",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid("tracing.service_name", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("tracing.timeout", "must be above zero"));
        }
        Ok(())
    }

    /// The export's extra headers, from `headers_env`; none when it is unset. The reason of an
    /// error names the entry by its position, never its value.
    pub fn export_headers(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        let Some(env) = &self.headers_env else {
            return Ok(Vec::new());
        };
        let Ok(raw) = std::env::var(env) else {
            return Err(ConfigError::MissingSecret {
                key: "tracing.headers_env",
                env: env.clone(),
            });
        };
        let mut headers = Vec::new();
        for (i, pair) in raw.split(',').map(str::trim).enumerate() {
            if pair.is_empty() {
                continue;
            }
            let named = pair
                .split_once('=')
                .map(|(name, value)| (name.trim(), value.trim()))
                .filter(|(name, value)| {
                    !name.is_empty()
                        && !value.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            let Some((name, value)) = named else {
                return Err(ConfigError::InvalidSecret {
                    key: "tracing.headers_env",
                    env: env.clone(),
                    reason: format!("entry {} is not header-name=value", i + 1),
                });
            };
            headers.push((name.to_owned(), Secret::new(value.to_owned())));
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TracingConfig, String> {
        let config: TracingConfig = toml_from(text)?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn toml_from(text: &str) -> Result<TracingConfig, String> {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(text))
            .extract()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_the_defaults_are_valid() {
        let config = parse("").unwrap();
        assert!(!config.enabled);
        assert_eq!(config.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.sample_ratio, 1.0);
    }

    #[test]
    fn reads_every_key_and_refuses_bad_values() {
        let config = parse(
            "enabled = true\nendpoint = \"http://127.0.0.1:9/v1/traces\"\nprotocol = \"http/json\"\nservice_name = \"proxy-a\"\nsample_ratio = 0.25\ntimeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(config.protocol, OtlpProtocol::HttpJson);
        assert_eq!(config.sample_ratio, 0.25);
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert!(parse("sample_ratio = 1.5")
            .unwrap_err()
            .contains("sample_ratio"));
        assert!(parse("endpoint = \"https://x/v1/traces\"")
            .unwrap_err()
            .contains("endpoint"));
        assert!(parse("protocol = \"grpc\"").is_err());
        assert!(parse("service_name = \" \"").is_err());
    }

    // figment's Jail closures return its large error type; that is its API.
    #[allow(clippy::result_large_err)]
    #[test]
    fn export_headers_come_from_the_environment_and_never_print() {
        figment::Jail::expect_with(|jail| {
            let config = TracingConfig {
                headers_env: Some("OTLP_HEADERS".to_owned()),
                ..TracingConfig::default()
            };
            assert!(config.export_headers().is_err());
            jail.set_env("OTLP_HEADERS", "x-api-key=s3cret, x-team = blue,");
            let headers = config.export_headers().unwrap();
            assert_eq!(headers.len(), 2);
            assert_eq!(headers[0].0, "x-api-key");
            assert_eq!(headers[0].1.expose(), "s3cret");
            assert!(!format!("{headers:?}").contains("s3cret"));
            jail.set_env("OTLP_HEADERS", "x-api-key");
            let err = config.export_headers().unwrap_err().to_string();
            assert!(err.contains("entry 1"), "{err}");
            Ok(())
        });
        assert!(TracingConfig::default()
            .export_headers()
            .unwrap()
            .is_empty());
    }
}
