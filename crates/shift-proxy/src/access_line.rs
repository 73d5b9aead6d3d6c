//! The access log's line, formatted off the request path.
//!
//! A request leaves an [`AccessRecord`] (its fields as values, no text); the log writer's
//! thread ([`crate::log_writer`]) formats it into the same line tracing-subscriber's text or
//! JSON formatter writes for the event `observe.rs` logs when no log writer takes records
//! (tests, a terminal). Measured (callgrind, 3,000 heartbeats at 32 connections): formatting
//! the line through tracing-subscriber on the request's thread was a quarter of the proxy's
//! instructions per request (about 18,000 of 73,000).

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use shift_chroma::route::PathParams;

use crate::auth::IdentityName;

/// What one request's access line says.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the answer's head was ready (the line's timestamp).
    pub at: SystemTime,
    pub method: Method,
    /// The operation's name (`collection_query`).
    pub operation: &'static str,
    /// Tenant, database and collection of the path.
    pub params: PathParams,
    pub status: u16,
    /// The store that answered, or `proxy`.
    pub backend: &'static str,
    /// From the request's head to the answer's head.
    pub duration: Duration,
    /// How long the store took to send its head.
    pub upstream: Option<Duration>,
    /// Why the proxy answered itself (`""` when it did not).
    pub error: &'static str,
    /// The client identity (a name, never a token).
    pub identity: Option<IdentityName>,
}

/// The shape of the log's lines (`[log] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessFormat {
    /// tracing-subscriber's default text line, without colours.
    #[default]
    Text,
    /// One JSON object per line, the fields flattened, as tracing-subscriber's JSON formatter
    /// writes them.
    Json,
}

impl AccessRecord {
    /// Appends the line (with its newline) to `out`.
    pub fn write_line(&self, format: AccessFormat, out: &mut Vec<u8>) {
        let params = &self.params;
        let text_fields: [(&str, &str); 4] = [
            ("operation", self.operation),
            ("tenant", params.tenant.as_deref().unwrap_or("")),
            ("database", params.database.as_deref().unwrap_or("")),
            ("collection", params.collection.as_deref().unwrap_or("")),
        ];
        let duration_ms = self.duration.as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let identity = self.identity.as_deref().unwrap_or("");
        let target = crate::observe::ACCESS_LOG_TARGET.as_bytes();
        let mut number = itoa::Buffer::new();
        let mut float = ryu::Buffer::new();
        match format {
            AccessFormat::Text => {
                rfc3339_micros(self.at, out);
                out.extend_from_slice(b"  INFO ");
                out.extend_from_slice(target);
                out.extend_from_slice(b": request method=");
                out.extend_from_slice(self.method.as_str().as_bytes());
                for (name, value) in text_fields {
                    text_field(out, name, value);
                }
                out.extend_from_slice(b" status=");
                out.extend_from_slice(number.format(self.status).as_bytes());
                text_field(out, "backend", self.backend);
                out.extend_from_slice(b" duration_ms=");
                out.extend_from_slice(text_f64(&mut float, duration_ms).as_bytes());
                out.extend_from_slice(b" upstream_ms=");
                out.extend_from_slice(text_f64(&mut float, upstream_ms).as_bytes());
                text_field(out, "error", self.error);
                text_field(out, "identity", identity);
                out.push(b'\n');
            }
            AccessFormat::Json => {
                out.extend_from_slice(b"{\"timestamp\":\"");
                rfc3339_micros(self.at, out);
                out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
                json_str(out, self.method.as_str());
                for (name, value) in text_fields {
                    json_key(out, name);
                    json_str(out, value);
                }
                json_key(out, "status");
                out.extend_from_slice(number.format(self.status).as_bytes());
                json_key(out, "backend");
                json_str(out, self.backend);
                for (name, value) in [("duration_ms", duration_ms), ("upstream_ms", upstream_ms)] {
                    json_key(out, name);
                    match value.is_finite() {
                        true => out.extend_from_slice(float.format_finite(value).as_bytes()),
                        false => out.extend_from_slice(b"null"),
                    }
                }
                json_key(out, "error");
                json_str(out, self.error);
                json_key(out, "identity");
                json_str(out, identity);
                out.extend_from_slice(b",\"target\":\"");
                out.extend_from_slice(target);
                out.extend_from_slice(b"\"}\n");
            }
        }
    }
}

/// ` name="value"`, the value quoted and escaped as `Debug` does (as tracing writes a `str`).
fn text_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    let plain = value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{value:?}");
    }
}

/// A float as `Debug` writes it (`0.0`, `15.854188000000002`), for durations in milliseconds.
fn text_f64(buffer: &mut ryu::Buffer, value: f64) -> &str {
    buffer.format(value)
}

/// `,"name":`
fn json_key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `value` as a JSON string.
fn json_str(out: &mut Vec<u8>, value: &str) {
    // Serializing a str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `at` as tracing-subscriber writes it: `2026-12-01T10:07:17.317252Z` (UTC, microseconds).
fn rfc3339_micros(at: SystemTime, out: &mut Vec<u8>) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    digits(out, u64::try_from(year).unwrap_or(0), 4);
    out.push(b'-');
    digits(out, u64::from(month), 2);
    out.push(b'-');
    digits(out, u64::from(day), 2);
    out.push(b'T');
    digits(out, of_day / 3600, 2);
    out.push(b':');
    digits(out, of_day / 60 % 60, 2);
    out.push(b':');
    digits(out, of_day % 60, 2);
    out.push(b'.');
    digits(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// `value`'s last `width` decimal digits, zero-padded.
fn digits(out: &mut Vec<u8>, value: u64, width: u32) {
    let mut divisor = 10u64.pow(width - 1);
    while divisor > 0 {
        // A digit: always below 10.
        out.push(b'0' + (value / divisor % 10) as u8);
        divisor /= 10;
    }
}

/// The proleptic Gregorian date (year, month, day) `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shift_chroma::classify;

    fn record() -> AccessRecord {
        let route = classify(
            &Method::POST,
            "/api/v2/tenants/default_tenant/databases/default_database/collections/ecdce282-5dc3-4e26-9a18-d87e1f25b4b4/query",
        );
        AccessRecord {
            // 2026-12-01T10:07:17.317252Z
            at: UNIX_EPOCH + Duration::new(1_796_119_637, 317_252_999),
            method: Method::POST,
            operation: route.operation.name(),
            params: route.params,
            status: 200,
            backend: "old",
            duration: Duration::from_nanos(111_066_372),
            upstream: Some(Duration::from_nanos(110_937_261)),
            error: "",
            identity: Some("team \"a\"".into()),
        }
    }

    /// The line tracing-subscriber's formatter writes for the same event, as `observe.rs`
    /// logs it when no log writer takes records.
    fn tracing_line(record: &AccessRecord, json: bool) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let log = || crate::observe::log_access_event(record);
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_text_line_is_tracing_subscribers() {
        let record = record();
        let mut ours = Vec::new();
        record.write_line(AccessFormat::Text, &mut ours);
        let ours = String::from_utf8(ours).unwrap();
        assert!(
            ours.starts_with("2026-12-01T10:07:17.317252Z  INFO chroma_shift::access: request method=POST operation=\"collection_query\" tenant=\"default_tenant\""),
            "{ours}"
        );
        // Same fields and values; the timestamp is tracing's own clock, so compare the rest.
        let theirs = tracing_line(&record, false);
        let rest = |line: &str| line.split_once("  INFO ").map(|(_, rest)| rest.to_owned());
        assert_eq!(rest(&ours), rest(&theirs), "ours:\n{ours}theirs:\n{theirs}");
    }

    #[test]
    fn the_json_line_has_tracing_subscribers_fields() {
        let record = record();
        let mut ours = Vec::new();
        record.write_line(AccessFormat::Json, &mut ours);
        assert_eq!(ours.last(), Some(&b'\n'));
        let mut ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        let mut theirs: serde_json::Value =
            serde_json::from_str(&tracing_line(&record, true)).unwrap();
        assert_eq!(ours["timestamp"], "2026-12-01T10:07:17.317252Z");
        ours.as_object_mut().unwrap().remove("timestamp");
        theirs.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn dates_convert_across_leap_years_and_centuries() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        let mut text = Vec::new();
        rfc3339_micros(UNIX_EPOCH + Duration::new(951_868_799, 5_000), &mut text);
        assert_eq!(text, b"2000-02-29T23:59:59.000005Z");
    }
}
