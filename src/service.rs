//! The composition root of `spillway serve`: opens the database, loads keys and rules, builds
//! intake, the revocation engine and the HTTP edge, starts every worker (intake committer,
//! revocation dispatcher, poller, audit checkpoints, metric sampling) and stops them all on
//! shutdown. Nothing else starts a long-running task of the service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::http::{self, AppState, Metrics, ingress};
use crate::platform::config::Settings;
use crate::platform::keyring::Keys;
use crate::platform::outbound::Policy;
use crate::platform::store::Store;
use crate::revocation::Engine;
use crate::scanner::RuleSet;
use crate::sources::directory;
use crate::sources::gitlab_types::GitlabTypes;
use crate::sources::partner_keys::PartnerKeys;
use ingress::stopped;

/// A running server.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens the database, loads keys and rules, binds both addresses and starts serving.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    let store = Store::connect(settings.database_url.expose()).await?;
    let keys = Arc::new(Keys::load(&settings.key_file, !settings.is_production())?);
    // Invalid candidates too: a failed checksum is itself a decision (false positive).
    let rules = Arc::new(RuleSet::default_rules(crate::scanner::ScanOptions {
        include_invalid: true,
    })?);
    let metrics = Arc::new(Metrics::default());
    let intake = Arc::new(crate::intake::Intake::start(
        store.clone(),
        keys.clone(),
        rules.clone(),
        metrics.clone(),
    ));
    let gitlab_types = GitlabTypes::load(&rules)?;
    let request_timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
    let header_timeout = Duration::from_secs(settings.header_read_timeout_secs.max(1));
    let ingress_settings = &settings.ingress;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("spillway/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let github_keys = PartnerKeys::new(&settings.github_keys_url, client.clone());
    let optional = |url: &str| (!url.is_empty()).then(|| PartnerKeys::new(url, client.clone()));
    let policy = Policy {
        allow_http: settings.outbound_allow_http,
        allow_private: settings.outbound_allow_private,
    };
    let engine = Arc::new(Engine::new(
        store.clone(),
        keys.clone(),
        policy,
        settings,
        metrics.clone(),
    )?);
    let (store_for_directory, keys_for_directory) = (store.clone(), keys.clone());
    let state = Arc::new(AppState {
        store,
        keys,
        rules,
        intake: intake.clone(),
        github_keys,
        gitlab_keys: optional(&settings.gitlab_keys_url),
        depsdev_keys: optional(&settings.depsdev_keys_url),
        metrics,
        public_url: settings.public_url.clone(),
        audit_checkpoints: settings.audit_checkpoint_file.clone(),
        console: http::console::ConsoleState::new(
            settings.console_secure_cookies,
            settings
                .admin_addr
                .parse::<std::net::SocketAddr>()
                .map_or(settings.admin_addr.starts_with("localhost:"), |a| {
                    a.ip().is_loopback()
                }),
        ),
        policy,
        engine: engine.clone(),
        gitlab_types,
        directory: directory::Directory::new(store_for_directory, keys_for_directory),
        budget: ingress::MemoryBudget::new(ingress_settings.body_memory_bytes),
        body_rules: ingress::BodyRules {
            grace: Duration::from_secs(ingress_settings.body_grace_secs),
            min_rate: ingress_settings.body_min_rate.max(1),
            deadline: Duration::from_secs(ingress_settings.body_timeout_secs.max(1)),
        },
        max_body: ingress_settings.max_body_bytes,
        request_timeout,
    });

    let (public, admin) = http::routers(state.clone());
    let public_listener = TcpListener::bind(&settings.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
    let admin_listener = TcpListener::bind(&settings.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.admin_addr))?;
    let (public_addr, admin_addr) = (public_listener.local_addr()?, admin_listener.local_addr()?);
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let mut tasks = http::serve(
        (public_listener, public),
        (admin_listener, admin),
        ingress_settings,
        header_timeout,
        state.metrics.clone(),
        watch.clone(),
    );
    tasks.push(tokio::spawn(checkpoints(
        state.clone(),
        settings.audit_checkpoint_file.clone(),
        Duration::from_millis(settings.audit_checkpoint_interval_ms.max(10)),
        watch.clone(),
    )));
    tasks.push(tokio::spawn(sample_metrics(state.clone(), watch.clone())));
    if settings.poller.enabled {
        state.metrics.poller_enabled();
        let poller = Arc::new(crate::sources::poller::Poller::new(
            state.store.clone(),
            engine.clone(),
            intake.clone(),
            &settings.poller,
            state.metrics.clone(),
        )?);
        let stop = watch.clone();
        tasks.push(tokio::spawn(async move {
            poller.run(stop).await;
            Ok(())
        }));
    }
    tasks.push(tokio::spawn({
        let stop = watch.clone();
        async move {
            engine.run(stop).await;
            Ok(())
        }
    }));
    tracing::info!(%public_addr, %admin_addr, "spillway serving");
    Ok(Running {
        public_addr,
        admin_addr,
        state,
        shutdown,
        tasks,
    })
}

/// Signs an audit checkpoint every `interval`, and once more at shutdown.
async fn checkpoints(
    state: Arc<AppState>,
    path: std::path::PathBuf,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let key = state.keys.audit_signing_key();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stopped(&mut stop) => true,
        };
        match crate::platform::audit::write_checkpoint(&state.store, &path, &key).await {
            Ok(_) => state.metrics.checkpointed(),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot write audit checkpoint"),
        }
        if stopping {
            return Ok(());
        }
    }
}

/// How often queue depths and breaker states are sampled into gauges.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

async fn sample_metrics(
    state: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        if let Err(e) = state.metrics.sample(&state.engine).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot sample queue metrics");
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            _ = stopped(&mut stop) => return Ok(()),
        }
    }
}

/// Runs until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Before the addresses are announced, so a stop right after it is still a clean shutdown.
    let signals = crate::devtools::StopSignals::install()?;
    let running = start(&settings).await?;
    println!(
        "spillway: public listener on http://{}, admin on http://{}",
        running.public_addr, running.admin_addr
    );
    signals.wait().await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}
