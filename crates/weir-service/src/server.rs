//! `weir serve`: the HTTP/WebSocket server, on top of everything else — the front ends' routes
//! side by side in one router, the connections (a semaphore caps them, one task each), and the
//! shutdown (broadcast once; the server waits for every connection and run it tracks).

use crate::config::ServerConfig;
use crate::durable::DurableStore;
use crate::history::History;
use crate::pg_snapshots::PgSnapshots;
use crate::registry::Registry;
use crate::snapshots::Snapshots;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use weir_sandbox::AbortOnDrop;
use weir_sandbox::Sandbox;

/// A server running in the background (tests and `weir serve` use this).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: AbortOnDrop,
    /// Removes idle stateful sessions (`crate::lifecycle::session::reap`).
    _reaper: AbortOnDrop,
    /// Loads the runtimes not loaded at start (`ServerConfig::prepare_runtimes`).
    _preparer: Option<AbortOnDrop>,
}

impl RunningServer {
    /// Drains: `/readyz` answers 503 at once, while requests are still served for the
    /// configured drain delay (`[cluster] drain_delay_secs`: long enough for the load balancer to
    /// notice), then [`RunningServer::shutdown`].
    pub async fn drain(self) {
        self.state.begin_drain();
        let delay = self.state.config.drain_delay();
        if !delay.is_zero() {
            tracing::info!(
                secs = delay.as_secs(),
                "draining: reporting not-ready before shutdown"
            );
            tokio::time::sleep(delay).await;
        }
        self.shutdown().await;
    }

    /// Begins graceful shutdown and waits until every session has ended.
    pub async fn shutdown(self) {
        // Stored even if nothing has subscribed yet (the serving task may not have started).
        self.state.shutdown.send_replace(true);
        let _ = self.task.join().await;
        crate::lifecycle::session::end_all(&self.state).await;
        self.state.mcp_shutdown.cancel();
        self.state.history.flush().await;
    }
}

/// After the grace period, how long sessions and connections get to say goodbye.
const DRAIN_EXTRA: Duration = Duration::from_secs(5);

/// Loads the sandbox, binds, and serves until [`RunningServer::shutdown`].
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let sandbox = Sandbox::load_async(config.engine_settings()).await?;
    start_with(config, sandbox).await
}

/// Installs the configured packages the site lacks (`packages`), before serving anything.
async fn install_packages(config: &ServerConfig, sandbox: &Sandbox) -> anyhow::Result<()> {
    if config.packages.is_empty() {
        return Ok(());
    }
    let root = config
        .packages_dir
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("`packages` is set but `packages_dir` is not"))?;
    let added = crate::packages::ensure(sandbox, root, &config.packages)
        .await
        .map_err(|e| anyhow::anyhow!("cannot install the configured packages: {e}"))?;
    for p in added {
        tracing::info!(name = %p.name, version = %p.version, sha256 = %p.sha256, "package installed");
    }
    Ok(())
}

/// Serves `sandbox` (its runtimes, its settings) instead of loading one from `config`'s engine
/// settings: for embedders that host runtimes of their own.
pub async fn start_with(config: ServerConfig, sandbox: Sandbox) -> anyhow::Result<RunningServer> {
    config
        .network()
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    install_packages(&config, &sandbox).await?;
    let (history, registry, clustered) = open_stores(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config, sandbox, history).with_registry(registry);
    let state = Arc::new(match clustered {
        Some(Clustered { durable, snapshots }) => {
            let config = state.config.snapshots.clone();
            state
                .with_durable(Some(durable))
                .with_snapshots(Snapshots::postgres(snapshots, config))
        }
        None => state.with_local_durable(),
    });
    let app = router(state.clone());
    let task = tokio::spawn(serve_connections(listener, app, state.clone()));
    let reaper = tokio::spawn(crate::lifecycle::session::reap(state.clone()));
    let preparer = state
        .config
        .prepare_runtimes
        .then(|| AbortOnDrop(tokio::spawn(prepare_runtimes(state.sandbox.clone()))));
    Ok(RunningServer {
        addr,
        state,
        task: AbortOnDrop(task),
        _reaper: AbortOnDrop(reaper),
        _preparer: preparer,
    })
}

/// The run history, the session registry and (in cluster mode) durable sessions: SQLite and in
/// memory (durable sessions then go to a file beside the snapshots,
/// `AppState::with_local_durable`), or with a `[cluster] database_url` all in PostgreSQL (schema
/// created or migrated here).
async fn open_stores(
    config: &ServerConfig,
) -> anyhow::Result<(History, Registry, Option<Clustered>)> {
    let node = crate::cluster::Node::new(&config.node_id());
    let Some(pg) = crate::cluster::pg_config(config.cluster.database_url.as_deref(), &node)? else {
        let history = History::open(&config.history)?.with_node(&node.id);
        return Ok((history, Registry::local(), None));
    };
    let registry = Registry::clustered(&node, pg.clone(), config.max_sessions).await?;
    let history = History::connect(&config.history, pg.clone(), &node).await?;
    let durable = DurableStore::connect(pg.clone(), &node).await?;
    let snapshots = PgSnapshots::connect(pg).await?;
    tracing::info!(node = %node.id, "cluster mode: history, sessions and snapshots in PostgreSQL");
    Ok((history, registry, Some(Clustered { durable, snapshots })))
}

/// What a cluster node keeps in PostgreSQL besides its history and registry.
struct Clustered {
    durable: DurableStore,
    snapshots: PgSnapshots,
}

/// Loads every runtime not loaded yet, one after the other; a failure is logged (and shown in
/// `GET /v1/runtimes`), and the runtime's first run tries again.
async fn prepare_runtimes(sandbox: Sandbox) {
    let names: Vec<String> = sandbox.runtimes().map(|r| r.name.clone()).collect();
    for name in names {
        if let Err(e) = sandbox.prepare(&name).await {
            tracing::warn!(runtime = %name, error = %e, "cannot prepare the runtime");
        } else {
            tracing::info!(runtime = %name, "runtime ready");
        }
    }
}

/// Accepts and serves connections (at most `max_connections` at once; more wait in the
/// listen backlog) until shutdown has drained them. On shutdown the server keeps answering:
/// new requests get 503 with `Retry-After` (and close their connection), requests under way
/// finish, idle keep-alive connections close, and sessions stop their runs after the grace
/// period. Whatever is left `DRAIN_EXTRA` after that is dropped with this future.
async fn serve_connections(listener: tokio::net::TcpListener, app: Router, state: Arc<AppState>) {
    let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = state.shutdown.subscribe();
    let sessions = state.tracker.clone();
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let draining = drain_until.is_some();
        if draining && sessions.is_empty() && connections.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s), if !draining => {
                sessions.close();
                let grace = state.config.shutdown_grace();
                drain_until = Some(tokio::time::Instant::now() + grace + DRAIN_EXTRA);
            }
            () = weir_sandbox::sleep_until_opt(drain_until) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = sessions.wait(), if draining && !sessions.is_empty() => {}
            accepted = accept(&listener, &limit) => {
                if let Some((tcp, permit)) = accepted {
                    let stop = state.shutdown.subscribe();
                    let timeout = state.config.request_timeout();
                    set_user_timeout(&tcp, user_timeout(&state.config));
                    let conn = serve_connection(tcp, app.clone(), stop, timeout);
                    connections.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
            }
        }
    }
    state.sandbox.close_scratch();
}

/// How long a connection's sent data may go unacknowledged: three heartbeat periods, and at
/// least 30 s, since a slow but healthy reader can hold its receive window shut for seconds
/// under load.
fn user_timeout(config: &ServerConfig) -> Duration {
    (config.heartbeat() * 3).max(Duration::from_secs(30))
}

/// Makes the kernel drop the connection when data it sent stays unacknowledged (or cannot be
/// sent for a zero window) for `timeout`: a peer that vanished, or stopped reading, while the
/// server waits to write to it. A slow reader still making progress is not affected.
fn set_user_timeout(tcp: &tokio::net::TcpStream, timeout: Duration) {
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, timeout);
}

/// The next connection and its slot under the connection cap; `None` after an accept error
/// (out of file descriptors, say), after a pause so the error does not spin.
async fn accept(
    listener: &tokio::net::TcpListener,
    limit: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = limit.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, _)) => Some((tcp, permit)),
        Err(e) => {
            tracing::warn!("cannot accept a connection: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Serves one connection's HTTP/1 requests (and hands WebSocket upgrades to their sessions).
/// Headers must arrive within the configured request timeout. Once shutdown begins the
/// connection finishes the request under way and closes; one accepted during shutdown gets its
/// answer (503) and closes.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    // Small frames (a prompt, one output line) must not wait for Nagle's algorithm.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!("cannot set TCP_NODELAY: {e}");
    }
    let draining = *stop.borrow_and_update();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(!draining);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = http
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    if draining {
        // One request (answered 503 by admission, or a probe), then the connection closes.
        let _ = conn.await;
        return;
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// `weir serve`: runs until SIGINT or SIGTERM, then shuts down gracefully. `listening` is told
/// the address once the server listens and shutdown signals are caught (a SIGTERM sent as soon
/// as a supervisor sees the address begins a graceful shutdown, not a kill).
pub async fn serve(config: ServerConfig, listening: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let server = start(config).await?;
    let signals = ShutdownSignals::register()?;
    tracing::info!(addr = %server.addr, node = %server.state.node, "weir listening");
    listening(server.addr);
    signals.recv().await;
    tracing::info!("shutting down");
    server.drain().await;
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere), caught from the moment they are registered.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let err = |e| anyhow::anyhow!("cannot catch shutdown signals: {e}");
            Ok(ShutdownSignals {
                term: signal(SignalKind::terminate()).map_err(err)?,
                int: signal(SignalKind::interrupt()).map_err(err)?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.config.max_message_bytes);
    Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::routes())
        .merge(crate::notebook::routes())
        .merge(crate::piston::routes())
        .merge(crate::judge0::routes())
        .merge(crate::ide::routes())
        .merge(crate::mcp::routes(&state))
        .layer(body_limit)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            node_header,
        ))
        .with_state(state)
}

/// Every response says which node answered (`X-Weir-Node`).
async fn node_header(State(state): State<Arc<AppState>>, mut response: Response) -> Response {
    if let Ok(node) = header::HeaderValue::from_str(&state.node) {
        response.headers_mut().insert("x-weir-node", node);
    }
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&crate::metrics::Gauges {
            sessions: state.sessions.len(),
            hibernated: state.sessions.hibernated("").0,
            live_instances: state.sandbox.live_instances(),
            starts: state.sandbox.instance_starts(),
            cache: state.sandbox.compile_cache_stats(),
        }),
    )
}

/// Ready only if the server is not shutting down and a canary run passed (`AppState::ready`).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}
