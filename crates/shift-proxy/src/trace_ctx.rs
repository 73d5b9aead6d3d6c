//! Trace spans of the request path and W3C trace context (`traceparent`) for the stores.
//!
//! All of it is inert until the binary turns export on ([`enable`], from `[tracing]`): until
//! then every function here returns [`Span::none()`] or does nothing after one relaxed load,
//! so a proxy without tracing pays no allocation per request for it.
//!
//! The spans of a write: `request` (the client's request; a child of the client's own
//! `traceparent` when it sent one), `backend` (each call to a store: the primary call, the
//! sync mode's secondary call, the replay's), `journal commit`, and `replay apply` (applying a
//! journal batch to the secondary, later and on another task). The replay finds its parent in
//! the journal entry: [`stamp`] writes the request's trace context before the entry's payload
//! (`~traceparent\n`, read back by [`unstamped`] and [`stamp_of`]), so the replay's span
//! joins the request's trace, and a restart does not lose the link. A batch that merged
//! several entries is the child of the first and links the others.

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span made here: the binary's exporter takes this target only, and the
/// log output never shows these spans.
pub const TARGET: &str = "chroma_shift::trace";

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// What starts a journal payload that carries its request's trace context; an identity starts
/// with `@`, an op's JSON with `{`.
const STAMP_MARK: u8 = b'~';

/// Whether trace export is on; set once at start.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the spans and the `traceparent` header on, for the life of the process. Called by
/// the binary once its exporter is installed.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are made.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span of a client's request, a child of the `traceparent` it sent, if any.
pub fn request_span(method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        chroma.operation = tracing::field::Empty,
    );
    if let Some(parent) = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span
}

/// Records the answer on a request's span.
pub fn record_answer(span: &Span, operation: &str, status: http::StatusCode) {
    if span.is_none() {
        return;
    }
    span.record("chroma.operation", operation);
    span.record("http.response.status_code", status.as_u16());
}

/// The span of one call to a store made within a traced request or the replay; none for the
/// proxy's own calls outside them (heartbeats, probes), which would each start a trace.
pub fn backend_span(backend: &str, method: &http::Method, path: &str) -> Span {
    if !enabled() || Span::current().is_none() {
        return Span::none();
    }
    let path = path.split('?').next().unwrap_or(path);
    tracing::info_span!(
        target: TARGET,
        "backend",
        otel.kind = "client",
        chroma.backend = backend,
        http.request.method = %method,
        url.path = path,
    )
}

/// The span of a write's journal commit.
pub fn journal_span() -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, "journal commit")
}

/// The span of the replay applying a batch of journal entries to `target`: the child of the
/// first stamped entry's request, linked to the others'.
pub fn replay_span<'a>(
    target: &str,
    entries: usize,
    payloads: impl Iterator<Item = &'a [u8]>,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "replay apply",
        chroma.backend = target,
        chroma.entries = entries,
    );
    let mut parented = false;
    for context in payloads.filter_map(stamp_of) {
        if parented {
            span.add_link(context);
        } else {
            let _ =
                span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
            parented = true;
        }
    }
    span
}

/// Puts `span`'s trace context in `headers` as `traceparent` (replacing the client's, which
/// `span` descends from).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() {
        return;
    }
    if let Some(value) = traceparent_of(span).and_then(|t| HeaderValue::try_from(t).ok()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// `payload` with the current span's trace context before it, for the replay to find.
pub fn stamp(payload: Vec<u8>) -> Vec<u8> {
    if !enabled() {
        return payload;
    }
    let Some(traceparent) = traceparent_of(&Span::current()) else {
        return payload;
    };
    let mut stamped = Vec::with_capacity(traceparent.len() + 2 + payload.len());
    stamped.push(STAMP_MARK);
    stamped.extend_from_slice(traceparent.as_bytes());
    stamped.push(b'\n');
    stamped.extend_from_slice(&payload);
    stamped
}

/// A journal payload without its trace context.
pub fn unstamped(payload: &[u8]) -> &[u8] {
    split_stamp(payload).1
}

/// The trace context a journal payload carries.
pub fn stamp_of(payload: &[u8]) -> Option<SpanContext> {
    split_stamp(payload).0.and_then(parse_traceparent)
}

fn split_stamp(payload: &[u8]) -> (Option<&str>, &[u8]) {
    let Some(rest) = payload.strip_prefix(&[STAMP_MARK]) else {
        return (None, payload);
    };
    match rest.iter().position(|b| *b == b'\n') {
        Some(end) => (std::str::from_utf8(&rest[..end]).ok(), &rest[end + 1..]),
        None => (None, payload),
    }
}

/// `00-{trace id}-{span id}-{flags}` of `span`, when it belongs to a trace.
fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags()
        )
    })
}

/// Reads a version-00 `traceparent`; `None` for anything else (the request is then traced
/// as a new trace, as the W3C recommendation says of an invalid header).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_traceparent_and_refuses_invalid_ones() {
        let context =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            format!("{:032x}", context.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(format!("{:016x}", context.span_id()), "b7ad6b7169203331");
        assert!(context.is_sampled());
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-zz",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_stamp_is_read_back_and_stripped() {
        let op = b"@team-a\n{\"records\":{}}".to_vec();
        let mut stamped = b"~00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n".to_vec();
        stamped.extend_from_slice(&op);
        assert_eq!(unstamped(&stamped), &op[..]);
        let context = stamp_of(&stamped).unwrap();
        assert_eq!(format!("{:016x}", context.span_id()), "b7ad6b7169203331");
        // Payloads without a stamp, as every journal before tracing holds, are untouched.
        assert_eq!(unstamped(&op), &op[..]);
        assert!(stamp_of(&op).is_none());
        assert_eq!(unstamped(b"{}"), b"{}");
        assert_eq!(unstamped(b"~no newline"), b"~no newline");
    }

    #[test]
    fn inert_while_export_is_off() {
        // No test in this crate turns export on (the binary does).
        assert!(!enabled());
        assert!(request_span(&http::Method::GET, "/", &HeaderMap::new()).is_none());
        assert!(journal_span().is_none());
        let payload = b"{\"records\":{}}".to_vec();
        assert_eq!(stamp(payload.clone()), payload);
        let mut headers = HeaderMap::new();
        inject(&Span::none(), &mut headers);
        assert!(headers.is_empty());
    }
}
