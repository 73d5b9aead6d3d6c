//! OpenTelemetry trace export (`[tracing]`): the OTLP/HTTP exporter, the tracer provider, and
//! the `tracing` layer that turns the proxy's spans (`shift_proxy::trace_ctx`) into
//! OpenTelemetry spans. Nothing here runs when `[tracing] enabled` is false.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use shift_config::{OtlpProtocol, TracingConfig};
use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// How long the end of the process waits for the last spans to leave.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Keeps the exporter running; dropping it sends the spans still queued (within
/// [`FLUSH_LIMIT`]) and stops it.
pub struct OtelGuard(Option<SdkTracerProvider>);

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(error) = provider.shutdown_with_timeout(FLUSH_LIMIT) {
                eprintln!("chroma-shift: the last trace spans were not exported: {error}");
            }
        }
    }
}

/// A `tracing` layer over the subscriber `S`, as the log setup stacks them.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The layer exporting the proxy's spans, and the guard to keep until the end; no layer when
/// `[tracing]` is off. Must run inside the Tokio runtime (the exporter's HTTP client uses it).
pub fn layer<S>(config: &TracingConfig) -> anyhow::Result<(Option<BoxedLayer<S>>, OtelGuard)>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !config.enabled {
        return Ok((None, OtelGuard(None)));
    }
    let headers: HashMap<String, String> = config
        .export_headers()?
        .into_iter()
        .map(|(name, value)| (name, value.expose().to_owned()))
        .collect();
    let client = OnRuntime {
        client: opentelemetry_http::hyper::HyperClient::with_default_connector(
            config.timeout,
            None,
        ),
        runtime: tokio::runtime::Handle::current(),
        failing: Arc::new(AtomicBool::new(false)),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(config.endpoint.clone())
        .with_protocol(match config.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .with_timeout(config.timeout)
        .with_headers(headers)
        .build()
        .context("cannot set up the OTLP trace exporter ([tracing])")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("chroma-shift");
    // Only the proxy's own spans: a library's spans and every log event stay out of traces.
    let only_ours =
        Targets::new().with_target(shift_proxy::trace_ctx::TARGET, tracing::Level::INFO);
    // No source locations, thread names or busy/idle times on the spans: their attributes
    // say what happened, not where in the proxy's code.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(only_ours)
        .boxed();
    shift_proxy::trace_ctx::enable();
    Ok((Some(layer), OtelGuard(Some(provider))))
}

/// The exporter's HTTP client, run on the proxy's runtime: the SDK's batch processor exports
/// from a thread of its own, outside any runtime, while hyper needs one.
#[derive(Debug)]
struct OnRuntime {
    client: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
    /// Whether the last export failed: the log says when exports start failing and when they
    /// work again, not once per batch.
    failing: Arc<AtomicBool>,
}

impl HttpClient for OnRuntime {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let (client, failing) = (self.client.clone(), self.failing.clone());
        let sent = self.runtime.spawn(async move {
            let answer = client.send_bytes(request).await;
            let failure = match &answer {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("the collector answered {}", response.status())),
                Err(error) => Some(error.to_string()),
            };
            match failure {
                Some(error) if !failing.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(%error, "trace export ([tracing] endpoint) failing; spans are dropped until it works");
                }
                None if failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!("trace export works again");
                }
                _ => {}
            }
            answer
        });
        Box::pin(async move { sent.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}
