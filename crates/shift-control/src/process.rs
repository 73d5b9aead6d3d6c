//! The whole proxy process, assembled from the config: backends, data plane, health monitor,
//! admin listener. The binary and the tests start it the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use shift_config::BackendName;
use shift_config::{Config, Secrets};
use shift_proxy::auth::ClientAuth;
use shift_proxy::backend::BackendBuildError;
use shift_proxy::collection_series::{SeriesLimits, TrackedCollector};
use shift_proxy::coord::Coordination;
use shift_proxy::data_threads::{bind_reuseport, DataPlaneThreads};
use shift_proxy::intents::recover_intents;
use shift_proxy::metrics::ConnectionMetrics;
use shift_proxy::metrics::JournalCollector;
use shift_proxy::metrics::ReplayMetrics;
use shift_proxy::namespace::NamespaceMap;
use shift_proxy::replay::{ReplayBoard, ReplaySettings, ReplayWorker};
use shift_proxy::server::{serve_data_plane, DataListeners, ListenerTls, VerifiedClientCert};
use shift_proxy::shadow::{ShadowReads, ShadowSettings};
use shift_proxy::tls::{ServerTls, TlsError};
use shift_proxy::topology::{ReadPolicy, Topology};
use shift_proxy::{
    Backends, DataPlaneState, Drained, PlaneParts, ProxyMetrics, ProxyService, ProxySettings,
    ServeOptions, WriteSettings,
};
use shift_state::{StateStore, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use shift_migrate::backfill::Backfiller;

use crate::admin::{self, AdminState};
use crate::admin_auth::AdminAuth;
use crate::alerts::Alerter;
use crate::audit::AuditLog;
use crate::health::HealthMonitor;
use crate::switch::{SwitchDefaults, TopologySwitch};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyStartError {
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
    #[error("durable state in [state] dir: {0}")]
    State(#[from] StoreError),
    #[error("the admin API needs a token in {0}; set it, or turn the API off with [admin] enabled = false")]
    NoAdminToken(String),
    #[error("[cluster]: cannot join the cluster: {0}")]
    Cluster(#[from] shift_cluster::ClusterError),
    #[error("[{section}] certificate or key")]
    Tls {
        section: &'static str,
        source: TlsError,
    },
}

/// A proxy with its listeners bound, ready to run.
#[derive(Debug)]
pub struct ChromaShift {
    config: Config,
    data_listener: TcpListener,
    /// The data plane's other listeners on the data port, one per thread after the first.
    data_listeners: Vec<std::net::TcpListener>,
    /// The data plane's threads (`[server] data_plane_threads`); `None` with 0.
    data_threads: Option<DataPlaneThreads>,
    admin_listener: TcpListener,
    backends: Arc<Backends>,
    registry: Registry,
    metrics: ProxyMetrics,
    settings: ProxySettings,
    /// The data plane's shared state.
    plane: Arc<DataPlaneState>,
    /// The admin tokens and their holders' names; `None` when the admin API is off.
    admin_auth: Option<AdminAuth>,
    /// Where admin actions (and the automatic rollback) are recorded.
    audit: Arc<AuditLog>,
    /// Runs backfills inside the proxy, sharing its order locks.
    backfill: Arc<Backfiller>,
    /// Until when the replay applies nothing: the unknown-outcome grace after a start that
    /// recovered writes in flight at the last stop (see [`ReplaySettings::hold_until`]).
    replay_hold: Option<tokio::time::Instant>,
    /// TLS of the data listener (`[server.tls]`), loaded before binding.
    data_tls: Option<ListenerTls>,
    /// TLS of the admin listener (`[admin.tls]`), loaded before binding.
    admin_tls: Option<ListenerTls>,
    /// Open and refused connections of both listeners.
    connection_metrics: ConnectionMetrics,
    /// This replica's membership, with `[cluster]`; left (its lease revoked) after the drain.
    cluster: Option<shift_cluster::Cluster>,
    /// With `[cluster]`: sends writes of collections other replicas own to them.
    forwarder: Option<Arc<shift_cluster::forward::Forwarder>>,
}

impl ChromaShift {
    /// Builds the backends and binds both listeners (port 0 picks a free port).
    pub async fn bind(config: Config, secrets: Secrets) -> Result<ChromaShift, ProxyStartError> {
        // Certificates are read first, so a bad file stops the start with its name.
        let data_tls = listener_tls(
            "server.tls",
            config.server.tls.as_ref(),
            config.server.http2,
        )?;
        let admin_tls = listener_tls("admin.tls", config.admin.tls.as_ref(), config.server.http2)?;
        let backends = Arc::new(Backends::from_config(&config.backends, &secrets)?);
        let registry = Registry::new();
        let metrics = ProxyMetrics::register(&registry)?;
        metrics
            .collection_series
            .set_limits(SeriesLimits::from_config(&config.metrics));
        let store = StateStore::open_with(
            &config.state.dir,
            shift_state::StoreOptions::from_config(&config.state),
        )
        .await?;
        let journal_metrics = JournalCollector::new(store.clone())?
            .max_collection_series(config.metrics.max_collection_series);
        let journal_slot = journal_metrics.journal_slot();
        registry.register(Box::new(journal_metrics))?;
        // A topology changed through the admin API outlives restarts; the config only seeds the
        // first one.
        let initial = match crate::switch::restore(&store)? {
            Some(restored) => {
                if restored.primary != config.routing.primary {
                    tracing::warn!(
                        primary = %restored.primary,
                        configured = %config.routing.primary,
                        epoch = restored.epoch,
                        "the persisted topology (from a cutover or rollback) wins over [routing] primary"
                    );
                }
                restored
            }
            None => Topology {
                epoch: 1,
                primary: config.routing.primary,
                mode: config.mirror.mode,
                reads: ReadPolicy {
                    canary_percent: config.reads.canary_percent,
                    shadow_percent: config.reads.shadow_percent,
                },
                paused: false,
                mirror_stopped: false,
            },
        };
        // With [cluster], the cluster's topology in etcd wins (this one seeds it when absent).
        let (coordination, cluster) = match &config.cluster {
            Some(section) => {
                // Validated with the config: set, or derived from server.listen.
                let address = section
                    .internal_url(config.server.listen)
                    .unwrap_or_else(|| format!("http://{}", config.server.listen));
                let (cluster, coordination) =
                    shift_cluster::Cluster::join(section, &store, initial, address).await?;
                // The journal's depth and dead letters come from the cluster's journal.
                let _ = journal_slot.set(coordination.journal.clone());
                (coordination, Some(cluster))
            }
            None => (Coordination::embedded(&store, initial), None),
        };
        let initial = (*coordination.topology.current()).clone();
        // Writes in flight at the last stop are settled before any traffic is served. Their
        // outcome on the primary is unknown: one may still commit there (a request the killed
        // process had sent), so their reconciliations wait out the same grace as a live write
        // whose answer was lost before they read the primary.
        // Through the finalize's wrapper, like every settlement: nothing for a retired store.
        let settling = shift_proxy::retired::RetiringJournal::new(
            coordination.journal.clone(),
            coordination.topology.clone(),
        );
        let recovered = recover_intents(&settling, initial.secondary()).await?;
        let replay_hold = (recovered > 0)
            .then(|| tokio::time::Instant::now() + config.mirror.unknown_outcome_grace);
        let audit = Arc::new(AuditLog::new(store.clone(), config.admin.audit_keep));
        let plane = DataPlaneState::new(PlaneParts {
            coordination,
            state: store,
            backends: backends.clone(),
            namespaces: NamespaceMap::new(&config.namespaces),
            metrics: metrics.clone(),
            shadow: Arc::new(ShadowReads::new(
                ShadowSettings::from_config(&config.reads),
                metrics.clone(),
            )),
            writes: WriteSettings {
                on_secondary_failure: config.mirror.on_secondary_failure,
                allow_reset: config.mirror.allow_reset,
                unknown_outcome_grace: config.mirror.unknown_outcome_grace,
                apply_batch_records: config.mirror.replay_batch_records,
            },
        })
        .await?;
        registry.register(Box::new(TrackedCollector::new(&plane)?))?;
        registry.register(Box::new(crate::topology_metrics::TopologyCollector::new(
            plane.live_topology().clone(),
        )?))?;
        let forwarder = match &cluster {
            Some(cluster) => Some(cluster.forwarder(plane.clone(), &registry)?),
            None => None,
        };
        let backfill = Backfiller::new(plane.clone(), &registry)?;
        let admin_auth = if config.admin.enabled {
            AdminAuth::from_secrets(&config.admin, &secrets, &registry)?
        } else {
            None
        };
        if config.admin.enabled && admin_auth.is_none() {
            return Err(ProxyStartError::NoAdminToken(
                config.admin.token_env.clone(),
            ));
        }
        let settings = ProxySettings {
            limits: shift_proxy::admission::Limits::from_config(&config.server),
            client_auth: config.server.client_auth.enabled.then(|| {
                ClientAuth::new(secrets.client_tokens.clone()).with_identities(&secrets.identities)
            }),
            forward_client_auth: config.server.client_auth.forward_client_auth,
        };
        let connection_metrics = ConnectionMetrics::register(&registry, &["data", "admin"])?;
        let (data_listener, data_listeners, data_threads) =
            bind_data_plane(config.server.listen, config.server.data_plane_threads)?;
        let admin_listener = bind("admin listener", config.server.admin_listen).await?;
        Ok(ChromaShift {
            config,
            data_listener,
            data_listeners,
            data_threads,
            admin_listener,
            backends,
            registry,
            metrics,
            settings,
            plane,
            admin_auth,
            audit,
            backfill,
            replay_hold,
            data_tls,
            admin_tls,
            connection_metrics,
            cluster,
            forwarder,
        })
    }

    /// Where applications connect.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// With `[cluster]`, how a cutover or rollback commits a new primary on every replica
    /// (see [`crate::primary_commit`]); `None` embedded.
    pub fn primary_commit(&self) -> Option<Arc<dyn crate::primary_commit::PrimaryCommit>> {
        self.cluster.as_ref().map(|cluster| {
            Arc::new(cluster.cutover().clone()) as Arc<dyn crate::primary_commit::PrimaryCommit>
        })
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
        let alerts_sent = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "chroma_shift_alerts_total",
                "Alerts by outcome (sent, failed, logged).",
            ),
            &["outcome"],
        )
        .ok();
        if let Some(counter) = &alerts_sent {
            let _ = self.registry.register(Box::new(counter.clone()));
        }
        let alerts = Alerter::new(self.config.alerts.webhook_url.as_ref(), alerts_sent);
        let switch = TopologySwitch::new(
            self.plane.clone(),
            board.clone(),
            alerts.clone(),
            SwitchDefaults {
                max_lag: self.config.cutover.max_lag,
                timeout: self.config.cutover.timeout,
                catch_up_lag: self.config.cutover.catch_up_lag,
                catch_up_timeout: self.config.cutover.catch_up_timeout,
            },
        );
        // A sync window only where this process sees every write and a target's error is
        // queued, not answered.
        let switch = Arc::new(
            if self.config.cutover.sync_window
                && self.config.cluster.is_none()
                && self.config.mirror.on_secondary_failure
                    == shift_config::SecondaryFailure::Journal
            {
                switch.with_sync_window(self.plane.window().clone())
            } else {
                switch
            },
        );
        // With [cluster], a change of primary commits on every replica (two-phase, in etcd).
        if let Some(commit) = self.primary_commit() {
            switch.commit_through(commit);
        }
        switch.restore_pause().await;
        // Background tasks restart after a panic (see `supervise`); one stop signal ends them.
        let (tasks_stop, tasks_stopped) = watch::channel(false);
        let restarts = crate::supervise::restarts_counter().ok();
        if let Some(counter) = &restarts {
            let _ = self.registry.register(Box::new(counter.clone()));
        }
        let restarts = restarts.unwrap_or_else(|| {
            crate::supervise::restarts_counter().expect("a valid metric definition")
        });
        let task_grace = self.config.server.shutdown_grace;
        let monitor_task = {
            let (switch, alerts, audit) = (switch.clone(), alerts.clone(), self.audit.clone());
            // The monitor holds nothing to finish: it is aborted at once on stop.
            crate::supervise::supervise(
                "health",
                alerts.clone(),
                restarts.clone(),
                tasks_stopped.clone(),
                Duration::ZERO,
                move |_| {
                    monitor
                        .clone()
                        .spawn(switch.clone(), alerts.clone(), audit.clone())
                },
            )
        };
        let replay_board = Arc::new(ReplayBoard::default());
        let store_alerts_task =
            crate::store_alerts::spawn(self.plane.state().clone(), alerts.clone());

        let (admin_stop, mut admin_stopped) = watch::channel(false);
        let mut sections = vec![admin::shadow_section(&self.plane)];
        sections.push(Arc::new(crate::migrate_api::BackfillSection(
            self.backfill.clone(),
        )));
        sections.push(admin::replay_section(replay_board.clone()));
        let finalizer = crate::finalize::Finalizer::new(
            self.plane.clone(),
            switch.clone(),
            self.audit.clone(),
            self.config.finalize.clone(),
        );
        sections.push(Arc::new(crate::finalize_api::FinalizeSection(
            finalizer.clone(),
        )));
        // Ends a pending finalize's window on time (it only waits; aborted on stop).
        let finalize_task = tokio::spawn(finalizer.clone().run(tasks_stopped.clone()));
        let admin_app = admin::app(AdminState {
            registry: self.registry.clone(),
            health: board,
            plane: self.plane.clone(),
            switch,
            auth: self.admin_auth.clone(),
            audit: self.audit.clone(),
            backfill: Some(self.backfill.clone()),
            sections: Arc::new(sections),
            finalize: Some(finalizer),
        });
        let client_ca = self
            .config
            .admin
            .tls
            .as_ref()
            .and_then(|tls| tls.client_ca.as_ref());
        let admin_app = match client_ca {
            Some(_) => admin_app.layer(axum::middleware::from_fn(require_client_cert)),
            None => admin_app,
        };
        // The admin listener has the data listener's accept loop (connection cap, timeouts),
        // its own slots, and its own TLS.
        let admin_options = ServeOptions::from_config(
            "admin",
            &self.config.server,
            self.admin_tls,
            self.connection_metrics.clone(),
        );
        let admin_task = tokio::spawn(async move {
            let stop = async move {
                let _ = admin_stopped.wait_for(|stopped| *stopped).await;
            };
            // Failed admin logins are limited per peer: the accept loop puts each
            // request's peer address in its extensions.
            shift_proxy::serve(self.admin_listener, admin_app, admin_options, stop).await
        });

        let options = ServeOptions::from_config(
            "data",
            &self.config.server,
            self.data_tls,
            self.connection_metrics,
        );
        // One replay worker per store: the journal of whichever is secondary has the work.
        let replay_settings = ReplaySettings {
            retry_initial: self.config.mirror.retry_initial,
            retry_max: self.config.mirror.retry_max,
            rate_limit: self.config.mirror.replay_rate_limit,
            max_bytes: usize::try_from(self.config.mirror.replay_memory.as_u64())
                .unwrap_or(usize::MAX),
            hold_until: self.replay_hold,
        };
        let replay_metrics = ReplayMetrics::register(&self.registry)
            .or_else(|_| ReplayMetrics::unregistered())
            .expect("valid metric definitions");
        // With [cluster] nats_url, the JetStream journal of the collections this replica owns.
        let replay_journal: Arc<dyn shift_proxy::coord::ReplayJournal> = self
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.replay_journal())
            .unwrap_or_else(|| Arc::new(self.plane.state().clone()));
        let replay_tasks: Vec<_> = [BackendName::Old, BackendName::New]
            .into_iter()
            .map(|target| {
                let sink = alerts.clone();
                let worker = ReplayWorker {
                    target,
                    store: replay_journal.clone(),
                    applier: self.plane.applier().clone(),
                    metrics: self.metrics.clone(),
                    replay_metrics: replay_metrics.clone(),
                    settings: replay_settings.clone(),
                    board: replay_board.clone(),
                    alert: Arc::new(move |text: String| sink.send(&text)),
                    topology: self.plane.live_topology().clone(),
                };
                let task = match target {
                    BackendName::Old => "replay-old",
                    BackendName::New => "replay-new",
                };
                crate::supervise::supervise(
                    task,
                    alerts.clone(),
                    restarts.clone(),
                    tasks_stopped.clone(),
                    task_grace,
                    move |stop| worker.clone().spawn(stop),
                )
            })
            .collect();
        let sweeper = tokio::spawn(shift_proxy::intents::settle_orphaned_intents(
            self.plane.clone(),
            tasks_stopped.clone(),
        ));
        let service = ProxyService::new(self.plane.clone(), self.settings, self.metrics.clone());
        let data_plane = shift_proxy::data_plane(service, self.metrics);
        tracing::info!(
            listen = %self.data_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            primary = %self.plane.topology().primary,
            mode = ?self.plane.topology().mode,
            "chroma-shift is serving"
        );
        // With [cluster], writes of collections other replicas own are forwarded to them.
        // And past its lease deadline plus [cluster] read_grace, a replica answers nothing.
        let lease_guard = match (&self.cluster, &self.config.cluster) {
            (Some(cluster), Some(section)) => shift_cluster::lease_guard::LeaseGuard::new(
                cluster.lease().clone(),
                section.read_grace,
                &self.registry,
            )
            .map_err(|error| tracing::error!(%error, "cannot register the lease guard's counter"))
            .ok(),
            _ => None,
        };
        let listeners = DataListeners {
            threads: self.data_threads.as_ref(),
            listener: self.data_listener,
            others: self.data_listeners,
        };
        let drained = match &self.forwarder {
            Some(forwarder) => {
                let data_plane = forwarder.layer(data_plane);
                match &lease_guard {
                    Some(guard) => {
                        let guarded = guard.layer(data_plane);
                        serve_data_plane(listeners, guarded, options, shutdown).await
                    }
                    None => serve_data_plane(listeners, data_plane, options, shutdown).await,
                }
            }
            None => serve_data_plane(listeners, data_plane, options, shutdown).await,
        };
        match drained {
            Drained::Clean => tracing::info!("drained; every in-flight request finished"),
            Drained::GraceExpired => {
                tracing::warn!("grace period ran out; closed connections with requests in flight")
            }
        }
        store_alerts_task.abort();
        finalize_task.abort();
        // Writes being settled run to the end (their tasks own them, not the connections):
        // wait for them, within a bound, so their journal entries are committed before exit.
        // Whatever is still unsettled then is an intent, reconciled at the next start.
        let settle_wait =
            self.config.server.shutdown_grace + self.config.mirror.unknown_outcome_grace;
        if tokio::time::timeout(settle_wait, self.plane.close_gate())
            .await
            .is_err()
        {
            tracing::warn!(
                settling = self.plane.settling(),
                "writes still settling at exit; their intents are reconciled at the next start"
            );
        }
        // Queued writes stay in the journal; the next start replays them. Each supervisor ends
        // within the grace (it aborts a task that does not stop by itself).
        let _ = tasks_stop.send(true);
        let _ = tokio::time::timeout(task_grace, sweeper).await;
        for task in replay_tasks.into_iter().chain([monitor_task]) {
            let _ = task.await;
        }
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        if let Some(cluster) = self.cluster {
            cluster.leave().await;
        }
        // The data plane's runtimes last: the writes they ran have settled above.
        drop(self.data_threads);
        drained
    }
}

/// With `[admin.tls] client_ca`, every `/admin` call needs a verified client certificate as
/// well as the token. The handshake does not demand one, so the kubelet's probes and
/// Prometheus, which present none, still reach `/healthz`, `/readyz` and `/metrics`.
async fn require_client_cert(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let admin = path == "/admin" || path.starts_with("/admin/");
    if admin && request.extensions().get::<VerifiedClientCert>().is_none() {
        return admin::error(
            http::StatusCode::UNAUTHORIZED,
            crate::api::ErrorKind::AuthError,
            "the admin API needs a client certificate signed by [admin.tls] client_ca",
        );
    }
    next.run(request).await
}

/// Loads a listener's TLS from its `[*.tls]` section; ALPN offers h2 first when HTTP/2 is on.
fn listener_tls(
    section: &'static str,
    config: Option<&shift_config::TlsConfig>,
    http2: bool,
) -> Result<Option<ListenerTls>, ProxyStartError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let alpn: &[&[u8]] = if http2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    let tls = ServerTls::load(&config.into(), alpn)
        .map_err(|source| ProxyStartError::Tls { section, source })?;
    Ok(Some(ListenerTls {
        tls,
        reload_interval: config.reload_interval,
    }))
}

/// The data listener: with data-plane threads (`[server] data_plane_threads`, one per core
/// unless set), one `SO_REUSEPORT` listener per thread on `addr` and the threads' runtimes;
/// with 0, one listener for the shared runtime.
#[allow(clippy::type_complexity)]
fn bind_data_plane(
    addr: SocketAddr,
    threads: Option<usize>,
) -> Result<
    (
        TcpListener,
        Vec<std::net::TcpListener>,
        Option<DataPlaneThreads>,
    ),
    ProxyStartError,
> {
    let what = "data listener";
    let count = DataPlaneThreads::count(threads);
    let bind_error = |source| ProxyStartError::Bind { what, addr, source };
    if count == 0 {
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        return Ok((
            TcpListener::from_std(listener).map_err(bind_error)?,
            Vec::new(),
            None,
        ));
    }
    let mut listeners = bind_reuseport(addr, count).map_err(bind_error)?;
    let first = TcpListener::from_std(listeners.remove(0)).map_err(bind_error)?;
    let threads = DataPlaneThreads::start(count).map_err(bind_error)?;
    Ok((first, listeners, Some(threads)))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyStartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyStartError::Bind { what, addr, source })
}
