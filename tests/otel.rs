//! Traces: with `[tracing]` on, the `chroma-shift` binary exports a trace per client request
//! over OTLP/HTTP, and passes W3C trace context on to the stores. A collector stand-in (an
//! OTLP/HTTP server in the test, decoding the protobuf with opentelemetry-proto's types)
//! records what the proxy sends; recording shims in front of two real Chroma servers record
//! the `traceparent` each store receives. One write's trace shows it reaching both stores:
//! the request, the primary call, the journal commit, the replay's apply and its call to the
//! secondary, under one trace id.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{json, Value};
use shift_testkit::faulty::Received;
use shift_testkit::scrape::wait_drained;
use shift_testkit::{http, Chroma, FaultyBackend, Proxy};

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";
/// Generous bounds that only catch a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// The client's own trace context: the proxy's request span must continue it.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct SpanSeen {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    service: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP collector stand-in that keeps every span it receives.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn spawn() -> anyhow::Result<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let kept = kept.clone();
                        async move { Ok::<_, std::convert::Infallible>(receive(request, &kept).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Collector { addr, spans, task })
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<SpanSeen> {
        self.spans.lock().expect("the collector's spans").clone()
    }

    /// The spans of `trace_id`, once `complete` says they are all there.
    async fn trace(
        &self,
        trace_id: &str,
        complete: impl Fn(&[SpanSeen]) -> bool,
    ) -> anyhow::Result<Vec<SpanSeen>> {
        eventually(|| {
            let spans: Vec<SpanSeen> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            complete(&spans).then_some(spans)
        })
        .await
        .map_err(|e| anyhow::anyhow!("trace {trace_id}: {e}; received {:#?}", self.spans()))
    }
}

/// What `check` finds, once it finds something, polling until [`LIMIT`].
async fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let started = tokio::time::Instant::now();
    loop {
        if let Some(found) = check() {
            return Ok(found);
        }
        anyhow::ensure!(started.elapsed() < LIMIT, "not there within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `span` is named `name` and has `key` = `value`.
fn is(span: &SpanSeen, name: &str, key: &str, value: &str) -> bool {
    span.name == name && span.attributes.get(key).map(String::as_str) == Some(value)
}

/// Decodes one export and answers as a collector does.
async fn receive(
    request: http::Request<Incoming>,
    kept: &Mutex<Vec<SpanSeen>>,
) -> http::Response<Full<Bytes>> {
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let path_ok = request.uri().path() == "/v1/traces";
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = match (body, content_type.as_slice()) {
        (Ok(bytes), b"application/x-protobuf") if path_ok => {
            ExportTraceServiceRequest::decode(bytes).ok()
        }
        (Ok(bytes), b"application/json") if path_ok => serde_json::from_slice(&bytes).ok(),
        _ => None,
    };
    let Some(export) = decoded else {
        let mut answer = http::Response::new(Full::new(Bytes::from_static(b"bad export")));
        *answer.status_mut() = http::StatusCode::BAD_REQUEST;
        return answer;
    };
    let mut seen = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| attribute_text(a.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            seen.push(SpanSeen {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name,
                service: service.clone(),
                attributes: span
                    .attributes
                    .iter()
                    .map(|a| {
                        let value = a.value.as_ref().and_then(|v| v.value.as_ref());
                        (a.key.clone(), attribute_text(value))
                    })
                    .collect(),
            });
        }
    }
    kept.lock().expect("the collector's spans").extend(seen);
    let answer = match content_type.as_slice() {
        b"application/json" => b"{}".to_vec(),
        _ => ExportTraceServiceResponse::default().encode_to_vec(),
    };
    let mut answer = http::Response::new(Full::new(Bytes::from(answer)));
    if let Ok(value) = http::HeaderValue::from_bytes(&content_type) {
        answer
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    answer
}

fn attribute_text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` a store received with a request, split: (trace id, parent span id).
fn traceparent(received: &Received) -> Option<(String, String)> {
    let value = received.headers.get("traceparent")?.to_str().ok()?;
    let parts: Vec<&str> = value.split('-').collect();
    (parts.len() == 4 && parts[0] == "00").then(|| (parts[1].to_owned(), parts[2].to_owned()))
}

/// The one span named `name` (with `attribute` = `value` when given) in `spans`.
fn one<'a>(spans: &'a [SpanSeen], name: &str, attribute: Option<(&str, &str)>) -> &'a SpanSeen {
    let found: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| attribute.is_none_or(|(k, v)| is(s, name, k, v)))
        .collect();
    assert!(
        !found.is_empty(),
        "no `{name}` span {attribute:?} in {spans:#?}"
    );
    found[0]
}

async fn post(url: &str, headers: &[(&str, &str)], body: Value) -> anyhow::Result<Value> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, _, answer) = http("POST", url, &all, serde_json::to_vec(&body)?).await?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status} {answer:?}");
    Ok(if answer.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&answer)?
    })
}

#[tokio::test]
async fn a_writes_trace_shows_it_reaching_both_stores() -> anyhow::Result<()> {
    write_traced_through_both_stores("http/protobuf").await
}

/// The same over OTLP/HTTP with JSON bodies (`protocol = "http/json"`).
#[tokio::test]
async fn the_json_protocol_exports_the_same_trace() -> anyhow::Result<()> {
    write_traced_through_both_stores("http/json").await
}

/// Creates a collection and writes to it through a proxy exporting with `protocol`, then
/// checks the traces the collector got and the trace context each store received.
async fn write_traced_through_both_stores(protocol: &str) -> anyhow::Result<()> {
    let collector = Collector::spawn().await?;
    let (old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn())?;
    let (old_url, new_url) = (old.url(), new.url());
    let (old_shim, new_shim) = tokio::try_join!(
        FaultyBackend::proxying(&old_url),
        FaultyBackend::proxying(&new_url)
    )?;
    let tracing_toml = format!(
        "[tracing]\nenabled = true\nendpoint = \"{}\"\nprotocol = \"{protocol}\"\nservice_name = \"shift-under-test\"\ntimeout = \"5s\"\n",
        collector.endpoint()
    );
    // The SDK's batch processor exports every 5 s by default; its own variable shortens that.
    let proxy = shift_testkit::ProxyProcess::start_with_env(
        Proxy::builder()
            .old(old_shim.url())
            .new_store(new_shim.url())
            .toml(&tracing_toml),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await?;

    // A request without trace context starts a trace of its own, which the store continues.
    let created = post(
        &format!("{}{COLLECTIONS}", proxy.url()),
        &[],
        json!({"name": "traced"}),
    )
    .await?;
    let collection = created["id"].as_str().expect("a collection id").to_owned();
    let create = eventually(|| {
        collector
            .spans()
            .into_iter()
            .find(|s| is(s, "request", "chroma.operation", "create_collection"))
    })
    .await?;
    assert_eq!(create.service, "shift-under-test");
    assert_eq!(
        create.parent_span_id, "",
        "a new trace has no parent: {create:?}"
    );
    let created_on_old = old_shim
        .received()
        .into_iter()
        .find(|r| r.method == http::Method::POST && r.path_and_query.ends_with("/collections"))
        .expect("the primary got the creation");
    assert_eq!(
        traceparent(&created_on_old).map(|t| t.0),
        Some(create.trace_id.clone()),
        "the primary's traceparent names the request's trace"
    );

    // A write that comes with the client's trace context.
    let client_traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    post(
        &format!("{}{COLLECTIONS}/{collection}/add", proxy.url()),
        &[("traceparent", client_traceparent.as_str())],
        json!({"ids": ["r1", "r2"], "embeddings": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "documents": ["one", "two"]}),
    )
    .await?;
    wait_drained(&proxy.admin_url(), "new", LIMIT).await?;
    // The replay's apply and its call to the secondary end after the client's answer.
    let spans = collector
        .trace(CLIENT_TRACE, |spans| {
            spans.iter().any(|s| s.name == "replay apply")
                && spans
                    .iter()
                    .any(|s| is(s, "backend", "chroma.backend", "new"))
        })
        .await?;

    let request = one(
        &spans,
        "request",
        Some(("chroma.operation", "collection_add")),
    );
    assert_eq!(
        request.parent_span_id, CLIENT_SPAN,
        "the request continues the client's span"
    );
    assert_eq!(
        request
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("201")
    );
    let primary_call = spans
        .iter()
        .find(|s| {
            is(s, "backend", "chroma.backend", "old")
                && s.attributes
                    .get("url.path")
                    .is_some_and(|p| p.ends_with("/add"))
        })
        .unwrap_or_else(|| panic!("no primary call in {spans:#?}"));
    assert_eq!(
        primary_call.parent_span_id, request.span_id,
        "the primary call is the request's child"
    );
    let commit = one(&spans, "journal commit", None);
    assert_eq!(
        commit.parent_span_id, request.span_id,
        "the journal commit is the request's child"
    );
    let replay = one(&spans, "replay apply", Some(("chroma.backend", "new")));
    assert_eq!(
        replay.parent_span_id, request.span_id,
        "the replay's apply joins the request's trace"
    );
    let secondary_call = spans
        .iter()
        .find(|s| is(s, "backend", "chroma.backend", "new") && s.parent_span_id == replay.span_id)
        .unwrap_or_else(|| {
            panic!("no call to the secondary under the replay's span in {spans:#?}")
        });

    // Each store received the trace context of the call that reached it.
    let write_on = |received: Vec<Received>| {
        received
            .into_iter()
            .filter(|r| r.path_and_query.ends_with("/add") || r.path_and_query.ends_with("/upsert"))
            .filter_map(|r| traceparent(&r))
            .collect::<Vec<_>>()
    };
    let on_old = write_on(old_shim.received());
    assert!(
        on_old.contains(&(CLIENT_TRACE.to_owned(), primary_call.span_id.clone())),
        "the primary's traceparent {on_old:?} is not the primary call's {primary_call:?}"
    );
    let on_new = write_on(new_shim.received());
    assert!(
        on_new.iter().any(|(trace, parent)| trace == CLIENT_TRACE
            && spans.iter().any(|s| &s.span_id == parent && s.name == "backend")),
        "the secondary's traceparent {on_new:?} is not a call of trace {CLIENT_TRACE}: {secondary_call:?}"
    );

    // The proxy's own calls outside requests and the replay (heartbeats every 500 ms here,
    // probes) start no trace of their own.
    let roots: Vec<SpanSeen> = collector
        .spans()
        .into_iter()
        .filter(|s| s.name == "backend" && s.parent_span_id.is_empty())
        .collect();
    assert!(
        roots.is_empty(),
        "store calls outside any trace: {roots:#?}"
    );

    // The spans go to the collector only: the log's lines are as without tracing.
    let log = proxy.log_tail(400);
    assert!(
        log.contains("chroma_shift::access"),
        "no access log line in {log}"
    );
    assert!(
        !log.contains("request{"),
        "a trace span reached the log: {log}"
    );
    Ok(())
}

/// Off by default: no `traceparent` reaches a store and the proxy adds nothing to a request.
#[tokio::test]
async fn off_by_default_no_trace_context_reaches_the_stores() -> anyhow::Result<()> {
    let old = Chroma::spawn().await?;
    let shim = FaultyBackend::proxying(&old.url()).await?;
    let proxy = Proxy::builder().old(shim.url()).spawn().await?;
    post(
        &format!("{}{COLLECTIONS}", proxy.url()),
        &[],
        json!({"name": "untraced"}),
    )
    .await?;
    let received = shim.received();
    assert!(!received.is_empty());
    assert!(
        received
            .iter()
            .all(|r| r.headers.get("traceparent").is_none()),
        "{received:#?}"
    );
    Ok(())
}

/// A collector that is not there costs the requests nothing: they are answered, and the log
/// says the export fails (once, not per batch).
#[tokio::test]
async fn an_unreachable_collector_never_holds_up_requests() -> anyhow::Result<()> {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let old = Chroma::spawn().await?;
    let proxy = shift_testkit::ProxyProcess::start_with_env(
        Proxy::builder().old(old.url()).toml(&format!(
            "[tracing]\nenabled = true\nendpoint = \"http://{closed}/v1/traces\"\n"
        )),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .await?;
    for name in ["first", "second", "third"] {
        post(
            &format!("{}{COLLECTIONS}", proxy.url()),
            &[],
            json!({"name": name}),
        )
        .await?;
    }
    const FAILING: &str = "trace export ([tracing] endpoint) failing";
    eventually(|| proxy.log_tail(400).contains(FAILING).then_some(())).await?;
    post(
        &format!("{}{COLLECTIONS}", proxy.url()),
        &[],
        json!({"name": "fourth"}),
    )
    .await?;
    let log = proxy.log_tail(400);
    assert_eq!(log.matches(FAILING).count(), 1, "{log}");
    Ok(())
}
