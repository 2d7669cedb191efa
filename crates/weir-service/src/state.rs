//! What every request handler and session shares ([`AppState`]), and the query string every
//! entry point accepts.

use crate::config::ServerConfig;
use crate::durable::DurableStore;
use crate::history::History;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sessions::Sessions;
use crate::snapshots::Snapshots;
use crate::tracked::Books;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use weir_sandbox::{RunRequest, Sandbox};

/// What every request handler and session shares.
pub struct AppState {
    pub config: ServerConfig,
    pub sandbox: Sandbox,
    pub metrics: Arc<Metrics>,
    pub history: Arc<History>,
    /// `true` once shutdown has begun; connections and runs subscribe
    /// (`crate::lifecycle::shutdown`).
    pub shutdown: watch::Sender<bool>,
    /// The server's slots (`max_sessions`): one per WebSocket connection, one-shot run, MCP
    /// call or stateful session.
    pub(crate) slots: Arc<Semaphore>,
    /// One `/ws` login per signed-in user, and every user's slots (in cluster mode, across
    /// nodes).
    pub registry: Registry,
    /// This node's id (`ServerConfig::node_id`), sent as `X-Weir-Node` on every response.
    pub node: String,
    /// Set on SIGTERM, before the drain: `/readyz` answers 503 so the load balancer stops
    /// sending work, while requests are still served.
    draining: std::sync::atomic::AtomicBool,
    pub(crate) next_connection: AtomicU64,
    /// Connections, and the writes of runs dropped unrecorded: shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    readiness: Readiness,
    /// Ends the MCP transport's sessions once the server has drained (`crate::mcp`).
    pub(crate) mcp_shutdown: tokio_util::sync::CancellationToken,
    /// Stateful sessions (`/v1/sessions`, MCP's session tools), each holding a slot.
    pub sessions: Arc<Sessions>,
    /// Stored session snapshots (`/v1/snapshots`).
    pub snapshots: Arc<Snapshots>,
    /// Where one-shot runs' calls go (`crate::callbacks`).
    pub callbacks: Arc<crate::callbacks::Callbacks>,
    /// Runs' network egress (`[network]`, `[secrets]`); `None` when no host is allowed.
    pub network: Option<Arc<weir_egress::Network>>,
    /// Judge0 submissions, by token (`crate::judge0`).
    pub judge0: Arc<crate::judge0::store::Submissions>,
    /// Durable sessions' saves (`crate::durable`); `None` when their store could not be opened.
    pub durable: Option<Arc<DurableStore>>,
    /// Held while a durable session is taken over from a node that died.
    pub(crate) adopting: tokio::sync::Mutex<()>,
}

/// `/readyz`'s canary: one at a time, its result kept for [`READY_FOR`] so a probe every second
/// (or a flood of them) costs at most one run a second.
#[derive(Default)]
struct Readiness {
    /// When the last canary finished, and whether it passed.
    last: Mutex<Option<(std::time::Instant, bool)>>,
    /// Held while a canary runs; other probes wait for its result.
    running: tokio::sync::Mutex<()>,
}

/// How long a canary's result answers `/readyz`.
const READY_FOR: Duration = Duration::from_secs(1);

impl Readiness {
    fn fresh(&self) -> Option<bool> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|(at, _)| at.elapsed() < READY_FOR)
            .map(|(_, ok)| ok)
    }

    async fn check(&self, sandbox: &Sandbox) -> bool {
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let _one = self.running.lock().await;
        if let Some(ok) = self.fresh() {
            return ok; // the canary this probe waited for
        }
        let ok = canary(sandbox).await;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), ok));
        ok
    }
}

/// Whether a canary script prints the expected text within 2 s.
async fn canary(sandbox: &Sandbox) -> bool {
    let mut req = RunRequest::script("print('weir-ready')");
    req.close_stdin = true;
    let run = async {
        let handle = sandbox.start(req).await.ok()?;
        Some(handle.collect().await.stdout_text())
    };
    let out = tokio::time::timeout(Duration::from_secs(2), run).await;
    matches!(out, Ok(Some(text)) if text == "weir-ready\n")
}

impl AppState {
    /// Applies the defaults of the runtime `req` runs in (named, or claiming its program) when
    /// its client named no memory limit: [`AppState::memory_default`].
    pub fn runtime_defaults(&self, req: &mut RunRequest, memory_given: bool) {
        if memory_given {
            return;
        }
        if let Ok(runtime) = self.sandbox.select(req) {
            req.limits.memory_bytes = self.memory_default(runtime);
        }
    }

    /// The memory limit of a run of `runtime` whose client names none: configured for it
    /// (`[runtimes.NAME] memory_mb`), else its own policy's, else `limits.memory_bytes`; at
    /// most `max_limits.memory_bytes`.
    pub fn memory_default(&self, runtime: &weir_sandbox::RuntimeInfo) -> u64 {
        let config = &self.config;
        let policy = self.sandbox.policy(Some(&runtime.name)).unwrap_or_default();
        config
            .runtime_memory(runtime)
            .or(policy.memory_bytes)
            .unwrap_or(config.limits.memory_bytes)
            .min(config.max_limits.memory_bytes)
    }

    /// The state of a server that has not served anything yet.
    pub fn new(config: ServerConfig, sandbox: Sandbox, history: History) -> Self {
        let config_node = config.node_id();
        let (config_snapshot_dir, config_snapshots) =
            (config.snapshot_dir(), config.snapshots.clone());
        AppState {
            slots: Arc::new(Semaphore::new(config.max_sessions)),
            callbacks: Arc::new(crate::callbacks::Callbacks::new(&config.callbacks)),
            judge0: Arc::new(crate::judge0::store::Submissions::new(
                config.judge0.clone(),
            )),
            network: config.network().unwrap_or_else(|e| {
                tracing::error!(error = %e, "runs have no network: its settings are unusable");
                None
            }),
            config,
            sandbox,
            metrics: Arc::new(Metrics::default()),
            history: Arc::new(history),
            shutdown: watch::channel(false).0,
            registry: Registry::local(),
            node: config_node,
            draining: std::sync::atomic::AtomicBool::new(false),
            next_connection: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            readiness: Readiness::default(),
            mcp_shutdown: tokio_util::sync::CancellationToken::new(),
            sessions: Arc::new(Sessions::default()),
            snapshots: Arc::new(Snapshots::dir(config_snapshot_dir, config_snapshots)),
            durable: None,
            adopting: tokio::sync::Mutex::new(()),
        }
    }

    /// This state with durable sessions saved in `store` (a cluster node's).
    pub fn with_durable(mut self, store: Option<DurableStore>) -> Self {
        self.durable = store.map(Arc::new);
        self
    }

    /// This state with its stored snapshots in `snapshots` (a cluster node's).
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Arc::new(snapshots);
        self
    }

    /// This state with a single node's durable sessions: `durable.sqlite3` in the snapshot
    /// directory. A store that cannot be opened is logged, and durable sessions are refused.
    pub fn with_local_durable(self) -> Self {
        let path = self.config.snapshot_dir().join("durable.sqlite3");
        let store = DurableStore::open(&path)
            .map_err(|e| {
                let path = path.display();
                tracing::error!(%path, error = %e, "durable sessions unavailable");
            })
            .ok();
        self.with_durable(store)
    }

    /// This state with `registry` (a cluster node's) in place of the local one.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Reports not-ready from now on (the first step of a drain).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the server is ready for work: not draining or shutting down, its cluster
    /// database (if any) reachable, and a canary script printed the expected text within 2 s
    /// (at most [`READY_FOR`] ago).
    pub(crate) async fn ready(&self) -> Result<(), String> {
        if *self.shutdown.borrow() {
            return Err("not ready: shutting down".into());
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err("not ready: draining before shutdown".into());
        }
        if let Err(reason) = self.registry.health() {
            return Err(format!(
                "not ready: the cluster database is unreachable ({reason})"
            ));
        }
        match self.readiness.check(&self.sandbox).await {
            true => Ok(()),
            false => Err("not ready: the canary run failed".into()),
        }
    }

    /// Where runs start and are recorded ([`crate::tracked::TrackedRun`]).
    pub fn books(&self) -> Books {
        Books {
            sandbox: self.sandbox.clone(),
            metrics: self.metrics.clone(),
            history: self.history.clone(),
            tasks: self.tracker.clone(),
            network: self.network.clone(),
        }
    }

    /// Runtime `name`'s status for the runtime listings: `ready`, `preparing` (not loaded yet:
    /// its first run, or the server's start, loads it), or `failed: REASON`.
    pub fn runtime_status(&self, name: &str) -> String {
        match self.sandbox.runtime_status(name) {
            Ok(weir_sandbox::RuntimeStatus::Ready) => "ready".into(),
            Ok(weir_sandbox::RuntimeStatus::NotLoaded) => "preparing".into(),
            Ok(weir_sandbox::RuntimeStatus::Failed(reason)) => format!("failed: {reason}"),
            Err(e) => format!("failed: {e}"),
        }
    }
}

/// The query string every entry point accepts: an optional token.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    pub token: Option<String>,
}
