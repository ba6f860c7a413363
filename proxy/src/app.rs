//! Wiring: the one function that starts a Sluice node, subsystem by subsystem.
//! Reading [`run`] top to bottom is the table of contents of the process.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::ca::{Ca, LeafResolver};
use crate::config::Config;
use crate::ledger::{Ledger, LedgerSink};
use crate::original_dst::{Chain, LoopGuard, OriginalDst, SockoptDst, StaticDst};
use crate::proxy::listen::Bound;
use crate::proxy::{ConnTable, InterceptApp, Interceptor, ProviderTable, Shared};
use crate::readiness::Readiness;
use crate::redirect::Redirect;
use crate::sink::{self, Recorder};
use crate::{metrics, tls};

/// Start a node and serve until SIGINT/SIGTERM, then flush records.
///
/// # Errors
/// Anything that prevents start-up (CA missing, a port taken, state dir unwritable),
/// with what to do about it.
pub fn run(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    log_warnings(&config);
    let config_path_label = config_path.as_ref().map_or_else(
        || "(built-in defaults)".to_string(),
        |p| p.display().to_string(),
    );
    // Metrics exist (at zero) before the first scrape.
    metrics::init();

    // Organisation CA and the leaf resolver; pre-mint configured exact hosts.
    let ca = Arc::new(
        Ca::load(&config.ca_cert_path(), &config.ca_key_path())
            .context("loading the organisation CA")?,
    );
    let resolver = Arc::new(LeafResolver::new(
        ca,
        Duration::from_secs(u64::from(config.ca.leaf_validity_hours) * 3600),
        config.ca.leaf_cache_size,
    ));
    for p in config
        .providers
        .iter()
        .filter(|p| p.tls && !p.host.starts_with('*'))
    {
        resolver
            .leaf_for(&p.host)
            .with_context(|| format!("minting a leaf certificate for {}", p.host))?;
    }

    // Upstream trust: system roots plus configured extras, as one bundle for Pingora.
    let bundle = config.state_dir.join("upstream-roots.pem");
    let roots = tls::write_trust_bundle(config.upstream.ca_file.as_deref(), &bundle)?;
    tracing::info!(roots, bundle = %bundle.display(), "upstream trust bundle written");

    // The audit ledger: interactions are appended on the request path; connection and
    // admin records reach it through the writer thread and its bounded channel.
    let ledger_config = config.ledger.clone();
    let ledger = Arc::new(Ledger::open(&ledger_config).with_context(|| {
        format!(
            "opening the audit ledger in {} (set ledger.dir to a writable directory)",
            ledger_config.dir.display()
        )
    })?);
    metrics::RECORD_QUEUE_CAPACITY
        .set(i64::try_from(config.records.channel_capacity).unwrap_or(i64::MAX));
    let (recorder, writer) = sink::spawn_writer(
        Box::new(LedgerSink::new(ledger.clone())),
        config.records.channel_capacity,
    )
    .context("starting the record writer")?;

    // Bind the metrics port now, so a taken port fails start-up instead of a log line.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            let l = StdListener::bind(addr)
                .with_context(|| format!("binding metrics_listen {addr} (is the port in use?)"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };

    // The Pingora server: our listeners, our threads, our trust bundle.
    let mut conf = ServerConf {
        threads: config.threads,
        ca_file: Some(bundle.display().to_string()),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(30),
        pid_file: config.state_dir.join("sluice.pid").display().to_string(),
        upgrade_sock: config.state_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 256;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // The eBPF redirect, when enabled: attached last-minute before serving, so connections
    // it sends here find a listener within the heartbeat timeout.
    let provider_hosts = || -> Vec<String> {
        config
            .providers
            .iter()
            .filter(|p| p.tls && !p.host.starts_with('*'))
            .map(|p| p.host.clone())
            .collect()
    };
    let redirect = if config.redirect.enabled {
        Some(Redirect::start(
            &config.redirect,
            &config.listen,
            provider_hosts(),
        )?)
    } else {
        None
    };

    // Original destinations: the probe's maps first, then the static table.
    let mut sources: Vec<Box<dyn OriginalDst>> = Vec::new();
    if config.original_dst.so_original_dst {
        sources.push(Box::new(SockoptDst));
    }
    if let Some(r) = &redirect {
        sources.push(Box::new(r.source()));
    }
    // In appliance mode a captured connection's local address is the provider's.
    let mut static_dst = config.original_dst.clone();
    static_dst.local_addr |= config.appliance.enabled;
    sources.push(Box::new(StaticDst::from_config(&static_dst)));

    // Pod names from the kubelet's files; labels and service accounts from the API watch.
    let pods = Arc::new(crate::identity::pods::PodDirectory::new(
        config.kubernetes.clone(),
    ));
    crate::identity::pods::api::start(pods.clone());

    // Shared data-plane state: provider table, original destinations, loop guard.
    let shared = Arc::new(Shared {
        providers: ProviderTable::from_config(&config),
        original_dst: Box::new(Chain(sources)),
        pods: pods.clone(),
        networks: crate::identity::networks::Networks::new(&config.networks),
        otel: crate::otel::Exporter::start(
            &config.otel,
            config.ledger.content_mode == crate::ledger::ContentMode::Full,
        ),
        loop_guard: LoopGuard::new(own_listeners(&config)),
        recorder: recorder.clone(),
        ledger: ledger.clone(),
        on_ledger_failure: config.on_ledger_failure,
        ledger_failed_at: std::sync::atomic::AtomicU64::new(0),
        conns: Arc::new(ConnTable::default()),
        max_inspect_bytes: config.max_inspect_bytes,
        connect_timeout: Duration::from_millis(config.upstream.connect_timeout_ms),
        read_timeout: Duration::from_millis(config.upstream.read_timeout_ms),
        body_idle_timeout: Duration::from_millis(config.downstream.body_idle_timeout_ms),
        body_deadline: Duration::from_millis(config.downstream.body_deadline_ms),
        head_limits: crate::proxy::HeadLimits::of(&config.downstream),
        upstream_h2: config.upstream.http2,
        mark: (config.redirect.enabled || config.original_dst.so_original_dst)
            .then_some(config.redirect.mark),
        policy: arc_swap::ArcSwap::from_pointee(
            crate::policy::Engine::new(&config.policy, Arc::new(counters(&config)?))
                .context("preparing the policy")?,
        ),
    });

    // The data plane: sniff → relay | refuse | terminate TLS → HTTP interceptor.
    let mut proxy =
        pingora::proxy::http_proxy(&server.configuration, Interceptor::new(shared.clone()));
    // CONNECT reaches the interceptor, which refuses it with a record (Pingora would
    // answer 405 itself, unrecorded).
    let mut options = pingora::apps::HttpServerOptions::default();
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    let http = Arc::new(proxy);
    let app = InterceptApp::new(
        shared.clone(),
        tls::acceptor(resolver.clone()),
        http.clone(),
    );
    // Sluice's own accept loops (`proxy::listen`), bound here, once everything they serve
    // (the redirect's maps included) is ready: tests and operators take an open port for
    // "serving". A taken address stops start-up with a clear message.
    let mut data = background_service(
        "sluice data plane",
        Bound::plain(&config.listen)?.serve(Arc::new(app)),
    );
    data.threads = Some(config.threads);
    server.add_service(data);

    // The appliance: a transparent listener for routed traffic, bound before the kernel
    // side sends it anything, then the nftables capture and policy routes.
    let appliance = if config.appliance.enabled {
        let app = Arc::new(
            InterceptApp::new(shared.clone(), tls::acceptor(resolver), http).transparent(),
        );
        let listener = Bound::transparent(&config.appliance.listeners())?.serve(app);
        let mut service = background_service("sluice appliance capture", listener);
        service.threads = Some(config.threads);
        server.add_service(service);
        Some(crate::appliance::Appliance::start(
            &config.appliance,
            &config.redirect,
            provider_hosts(),
        )?)
    } else {
        None
    };

    // Admin records from CLI commands run while this process holds the ledger.
    server.add_service(background_service(
        "ledger inbox",
        InboxService {
            dir: crate::inbox::dir(&ledger_config.dir),
            recorder: recorder.clone(),
            stuck: Default::default(),
        },
    ));

    // Rate-limit windows saved every few seconds and at shutdown (budgets are written
    // through as they are settled).
    server.add_service(background_service(
        "counters",
        CountersService(shared.clone()),
    ));

    // Live policy reload on SIGHUP or when the config file changes.
    if let Some(path) = config_path {
        server.add_service(background_service(
            "config reload",
            ReloadService {
                path,
                shared: shared.clone(),
                current: std::sync::Mutex::new(config.clone()),
            },
        ));
    }

    // Metrics, liveness and readiness endpoint.
    if let Some(l) = metrics_listener {
        let readiness = Arc::new(Readiness {
            shared: shared.clone(),
            ledger_dir: ledger_config.dir.clone(),
            redirect: redirect.as_ref().map(|_| true),
            appliance: appliance.as_ref().map(crate::appliance::Appliance::health),
            upstream_roots: roots,
        });
        server.add_service(background_service(
            "metrics",
            MetricsService(l.try_clone()?, Arc::new(move || readiness.report())),
        ));
    }

    // The configuration this process starts with is an admin record too.
    {
        use crate::record::{Admin, AdminAction, AdminOutcome, Record, Target};
        let policies: Vec<String> = config
            .policy
            .policies
            .iter()
            .map(|p| format!("{}@v{}", p.id, p.version))
            .collect();
        let admin = Admin::new(
            AdminAction::Reload,
            AdminOutcome::Success,
            crate::audit::local_initiator(),
            Target {
                kind: "config".into(),
                id: config_path_label.clone(),
            },
            serde_json::json!({
                "event": "start",
                "listen": config.listen,
                "policies": policies,
                "redirect": config.redirect.enabled,
                "appliance": config.appliance.enabled,
                "on_ledger_failure": format!("{:?}", config.on_ledger_failure),
            }),
        );
        recorder.submit_blocking(Record::Admin(Box::new(admin)));
    }

    // Records shipped to the fleet's central ledger, off the request path.
    let shipper = config.ledger.central.clone().map(|central| {
        crate::ledger::central::Shipper::start(
            ledger_config.dir.clone(),
            config.fleet.node(),
            central,
        )
    });

    // Security alerts, evaluated over the ledger off the request path.
    let alerts = if config.alerts.enabled {
        match config.alerts.rules() {
            Ok(rules) => Some(crate::alerts::Alerts::start(ledger.clone(), rules)),
            Err(_) => None, // refused when the config was validated
        }
    } else {
        None
    };
    // The ledger delivered to SIEMs and webhooks, each sink from its own cursor.
    let deliveries = (!config.sinks.is_empty()).then(|| {
        crate::delivery::Deliveries::start(ledger.clone(), config.fleet.node(), &config.sinks)
    });

    // systemd (the appliance image's unit): ready once the services start, watchdog fed.
    server.add_service(background_service("systemd", crate::systemd::Notifier));

    tracing::info!(
        listen = ?config.listen,
        metrics = ?config.metrics_listen,
        ledger = %ledger_config.dir.display(),
        "sluice is running"
    );
    server.run(RunArgs::default());

    // Shutdown: detach the redirect (clients go direct again), then make sure everything
    // accepted is written before the process exits.
    if let Some(r) = redirect {
        r.shutdown();
    }
    if let Some(a) = appliance {
        a.shutdown();
    }
    // The fleet's last settlements reach Redis; the rate-limit windows as of now (the
    // background saver may not get its last turn).
    shared.policy.load().drain_counters(Duration::from_secs(5));
    shared.policy.load().save_counters();
    flush(&recorder);
    // Spans of the last requests, and the metrics, reach the collector before the exit.
    if let Some(otel) = &shared.otel {
        otel.flush(Duration::from_secs(5));
    }
    // The sinks take what the ledger holds now (one attempt each), then stop; the rest
    // follows from their cursors after a restart.
    if let Some(a) = alerts {
        a.stop();
    }
    if let Some(d) = deliveries {
        d.stop();
    }
    drop(recorder);
    drop(writer);
    // Other handles may outlive the services that held them (the server keeps its
    // services): close through this one, so the final checkpoint is written and handed to
    // the witnesses before the process exits.
    drop(shared);
    ledger.stop().context("closing the ledger")?;
    // The last records reach the central ledger too (when it answers now).
    if let Some(s) = shipper {
        s.stop();
    }
    Ok(())
}

/// Every address this process accepts connections on: never a destination.
fn own_listeners(config: &Config) -> Vec<std::net::SocketAddr> {
    let mut out = config.listen.clone();
    if config.appliance.enabled {
        out.extend(config.appliance.listeners());
    }
    out
}

/// Budget and rate-limit counters: this node's (persisted in the state directory), shared
/// through Redis when `fleet.redis` is set.
fn counters(config: &Config) -> anyhow::Result<crate::policy::Counters> {
    use crate::policy::{Counters, RedisCounters, SqliteCounters};
    let local = Arc::new(SqliteCounters::open(
        &config.state_dir.join("budgets.sqlite"),
    )?);
    let Some(redis) = &config.fleet.redis else {
        return Ok(Counters::local(local));
    };
    let node = config.fleet.node();
    let store = Arc::new(
        RedisCounters::new(redis, &node).context("fleet.redis: the Redis URL is not usable")?,
    );
    store.start();
    tracing::info!(
        node,
        nodes = config.fleet.nodes,
        "fleet: budgets and rate limits shared through Redis"
    );
    Ok(Counters::with_fleet(local, store, config.fleet.nodes))
}

/// Appends admin records that CLI commands left in the ledger's inbox (they cannot open
/// the ledger while this process holds its lock).
struct InboxService {
    dir: std::path::PathBuf,
    recorder: Recorder,
    /// Rejected files that could not be moved aside: recorded once, not every tick.
    stuck: std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>,
}

#[async_trait]
impl BackgroundService for InboxService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for entry in crate::inbox::read(&self.dir) {
                        let (admin, path, accepted) = match entry {
                            crate::inbox::Entry::Accepted(path, admin) => (admin, path, true),
                            crate::inbox::Entry::Rejected(path, why) => {
                                if self.stuck.lock().is_ok_and(|s| s.contains(&path)) {
                                    continue;
                                }
                                tracing::warn!(file = %path.display(), reason = %why, "ledger inbox: file rejected");
                                let kept = crate::inbox::quarantine(&path).ok();
                                if kept.is_none() {
                                    if let Ok(mut s) = self.stuck.lock() {
                                        s.insert(path.clone());
                                    }
                                }
                                (crate::inbox::rejection(&path, kept.as_deref(), &why), path, false)
                            }
                        };
                        self.recorder
                            .submit(crate::record::Record::Admin(Box::new(admin)))
                            .await;
                        // Written to the ledger before the file goes.
                        self.recorder.flush().await;
                        if accepted {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Saves the rate-limit windows every 5 s (and once more after the server stops, in
/// `run`).
struct CountersService(Arc<Shared>);

#[async_trait]
impl BackgroundService for CountersService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let engine = self.0.policy.load_full();
            let _ = tokio::task::spawn_blocking(move || engine.save_counters()).await;
        }
    }
}

fn flush(recorder: &Recorder) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            if tokio::time::timeout(Duration::from_secs(30), recorder.flush())
                .await
                .is_err()
            {
                tracing::error!("records were still being written after 30 s at shutdown");
            }
        }),
        Err(e) => tracing::error!(error = %e, "cannot flush records at shutdown"),
    }
}

struct MetricsService(StdListener, metrics::ReadyCheck);

#[async_trait]
impl BackgroundService for MetricsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match self
            .0
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener unusable");
                return;
            }
        };
        tokio::select! {
            _ = metrics::serve(listener, self.1.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Re-reads the config on SIGHUP or when its file changes. The policy section takes
/// effect at once; a file that does not validate keeps the running policy, and says why.
/// Every attempt is an admin record (`reload`, success or failure, with what changed).
struct ReloadService {
    path: std::path::PathBuf,
    shared: Arc<crate::proxy::Shared>,
    current: std::sync::Mutex<Config>,
}

impl ReloadService {
    fn mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    async fn reload(&self, trigger: &str) {
        use crate::record::{Admin, AdminAction, AdminOutcome, Initiator, Record, Target};
        let initiator = Initiator {
            id: format!("uid:{}", nix::unistd::getuid()),
            role: format!("local ({trigger})"),
            ip: None,
        };
        let target = Target {
            kind: "config".into(),
            id: self.path.display().to_string(),
        };
        let outcome = match Config::load(&self.path) {
            Err(e) => Err(e.to_string()),
            Ok(next) => {
                log_warnings(&next);
                let engine = self.shared.policy.load_full();
                match engine.reload(&next.policy) {
                    Err(e) => Err(e.to_string()),
                    Ok(new_engine) => {
                        let mut diff = engine.diff(&new_engine);
                        let restart = restart_needed(
                            &self.current.lock().unwrap_or_else(|e| e.into_inner()),
                            &next,
                        );
                        diff["needs_restart"] = serde_json::json!(restart);
                        self.shared.policy.store(Arc::new(new_engine));
                        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = next;
                        Ok(diff)
                    }
                }
            }
        };
        let (result, admin) = match outcome {
            Ok(diff) => {
                tracing::info!(trigger, changes = %diff, "policy reloaded");
                (
                    "success",
                    Admin::new(
                        AdminAction::Reload,
                        AdminOutcome::Success,
                        initiator,
                        target,
                        diff,
                    ),
                )
            }
            Err(why) => {
                tracing::error!(trigger, error = %why, "config reload rejected; the running policy stays in force");
                (
                    "failure",
                    Admin::new(
                        AdminAction::Reload,
                        AdminOutcome::Failure,
                        initiator,
                        target,
                        serde_json::json!({ "error": why }),
                    ),
                )
            }
        };
        metrics::CONFIG_RELOADS.with_label_values(&[result]).inc();
        self.shared
            .recorder
            .submit(Record::Admin(Box::new(admin)))
            .await;
    }
}

/// Top-level sections that differ and only take effect after a restart.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    if !same(&old.listen, &new.listen) {
        out.push("listen");
    }
    if !same(&old.providers, &new.providers) {
        out.push("providers");
    }
    if !same(&old.original_dst, &new.original_dst) {
        out.push("original_dst");
    }
    if !same(&old.upstream, &new.upstream) {
        out.push("upstream");
    }
    if !same(&old.redirect, &new.redirect) {
        out.push("redirect");
    }
    if !same(&old.appliance, &new.appliance) {
        out.push("appliance");
    }
    if !same(&old.networks, &new.networks) {
        out.push("networks");
    }
    out
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload on file change only");
                return;
            }
        };
        let mut seen = self.mtime();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload("SIGHUP").await,
                _ = tick.tick() => {
                    let now = self.mtime();
                    if now != seen {
                        seen = now;
                        self.reload("file change").await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// What `sluice policy lint` would warn about, in the log.
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(location = %w.location, key = %w.key, "policy lint: {}", w.message);
    }
}
