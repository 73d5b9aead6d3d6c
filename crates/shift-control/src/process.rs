//! The whole proxy process, assembled from the config: backends, data plane, health monitor,
//! admin listener. The binary and the tests start it the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use shift_config::{Config, Secrets};
use shift_proxy::auth::ClientAuth;
use shift_proxy::backend::BackendBuildError;
use shift_proxy::{Backends, Drained, ProxyMetrics, ProxyService, ProxySettings, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::health::HealthMonitor;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Backend(#[from] BackendBuildError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A proxy with its listeners bound, ready to run.
#[derive(Debug)]
pub struct ChromaShift {
    config: Config,
    data_listener: TcpListener,
    admin_listener: TcpListener,
    backends: Arc<Backends>,
    registry: Registry,
    metrics: ProxyMetrics,
    settings: ProxySettings,
}

impl ChromaShift {
    /// Builds the backends and binds both listeners (port 0 picks a free port).
    pub async fn bind(config: Config, secrets: Secrets) -> Result<ChromaShift, StartError> {
        let backends = Arc::new(Backends::from_config(&config.backends, &secrets)?);
        let registry = Registry::new();
        let metrics = ProxyMetrics::register(&registry)?;
        let settings = ProxySettings {
            primary: config.routing.primary,
            max_body: config.server.max_body.as_u64(),
            client_auth: config
                .server
                .client_auth
                .enabled
                .then(|| ClientAuth::new(secrets.client_tokens.clone())),
            forward_client_auth: config.server.client_auth.forward_client_auth,
        };
        let data_listener = bind("data listener", config.server.listen).await?;
        let admin_listener = bind("admin listener", config.server.admin_listen).await?;
        Ok(ChromaShift {
            config,
            data_listener,
            admin_listener,
            backends,
            registry,
            metrics,
            settings,
        })
    }

    /// Where applications connect.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.server.admin_listen)
    }

    /// Serves until `shutdown` completes, then drains the data plane within the grace period
    /// and stops the admin listener last, so `/metrics` is readable while draining.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Drained {
        let monitor = HealthMonitor::new(
            self.backends.clone(),
            self.config.health.clone(),
            self.metrics.clone(),
        );
        // One probe before serving, so /readyz and the gauges are right from the start.
        monitor.probe_all().await;
        let board = monitor.board();
        let monitor_task = monitor.spawn();

        let (admin_stop, mut admin_stopped) = watch::channel(false);
        let admin_app = admin::app(AdminState {
            registry: self.registry.clone(),
            health: board,
            primary: self.settings.primary,
        });
        let admin_task = tokio::spawn(async move {
            let stop = async move {
                let _ = admin_stopped.wait_for(|stopped| *stopped).await;
            };
            if let Err(error) = axum::serve(self.admin_listener, admin_app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%error, "admin listener failed");
            }
        });

        let options = ServeOptions {
            header_read_timeout: self.config.server.header_read_timeout,
            http2: self.config.server.http2,
            shutdown_grace: self.config.server.shutdown_grace,
        };
        let service = ProxyService::new(self.backends.clone(), self.settings, self.metrics.clone());
        let data_plane = shift_proxy::data_plane(service, self.metrics);
        tracing::info!(
            listen = %self.data_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            primary = %self.config.routing.primary,
            "chroma-shift is serving"
        );
        let drained = shift_proxy::serve(self.data_listener, data_plane, options, shutdown).await;
        match drained {
            Drained::Clean => tracing::info!("drained; every in-flight request finished"),
            Drained::GraceExpired => {
                tracing::warn!("grace period ran out; closed connections with requests in flight")
            }
        }
        monitor_task.abort();
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        drained
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}
