//! `weir serve`: the HTTP/WebSocket server. A semaphore caps sessions, shutdown is broadcast,
//! one task per session (tracked, so shutdown waits for every one of them).

use crate::admission::{self, Admitted};
use crate::config::ServerConfig;
use crate::history::History;
use crate::metrics::Metrics;
use crate::sandbox::{RunRequest, Sandbox};
use crate::session::{self, SessionCtx};
use crate::EngineSettings;
use axum::extract::ws::WebSocket;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

/// What every request handler and session shares.
pub struct AppState {
    pub config: ServerConfig,
    pub sandbox: Sandbox,
    pub metrics: Metrics,
    pub history: History,
    /// `true` once shutdown has begun; sessions subscribe.
    pub shutdown: watch::Sender<bool>,
    /// Session slots: one per WebSocket session or one-shot HTTP run (`max_sessions`).
    pub(crate) slots: Arc<Semaphore>,
    /// Signed-in users and the switch that closes their current session (one entry per open
    /// authenticated session, so bounded by `max_sessions`).
    users: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
    pub(crate) next_session: AtomicU64,
    pub(crate) tracker: TaskTracker,
}

impl AppState {
    /// Counts (as `stopped`) and stores a run that ended without an `exit` because its client
    /// went away.
    pub(crate) async fn abandoned(&self, record: crate::history::RunRecord) {
        let duration = Duration::from_millis(record.duration_ms);
        self.metrics
            .run_finished("stopped", duration, record.output_bytes);
        self.history.store(record, None).await;
    }
}

/// A server running in the background (tests and `weir serve` use this).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: crate::run::AbortOnDrop,
}

impl RunningServer {
    /// Begins graceful shutdown and waits until every session has ended.
    pub async fn shutdown(self) {
        let _ = self.state.shutdown.send(true);
        let _ = self.task.join().await;
        self.state.history.flush().await;
    }
}

/// Read and write buffer size of each WebSocket.
const WS_BUFFER_BYTES: usize = 8 << 10;

/// Loads the sandbox, binds, and serves until [`RunningServer::shutdown`].
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let settings = EngineSettings {
        max_instances: config.max_instances,
        warm_instances: config.warm_instances,
        warm_fillers: config.warm_fillers,
        compile_cache_bytes: config.compile_cache_bytes,
        ..EngineSettings::default()
    };
    let sandbox = Sandbox::load_async(settings).await?;
    let history = History::open(&config.history)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(config.max_sessions)),
        config,
        sandbox,
        metrics: Metrics::default(),
        history,
        shutdown: watch::channel(false).0,
        users: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        tracker: TaskTracker::new(),
    });
    let app = router(state.clone());
    let mut stop = state.shutdown.subscribe();
    let tracker = state.tracker.clone();
    let grace = state.config.shutdown_grace();
    let task = tokio::spawn(async move {
        // Small frames (a prompt, one output line) must not wait for Nagle's algorithm.
        let listener =
            axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!("cannot set TCP_NODELAY: {e}");
                }
            });
        let serve =
            axum::serve(listener, app.into_make_service()).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        if let Err(e) = serve.await {
            tracing::error!("server error: {e}");
        }
        tracker.close();
        // Sessions stop their runs after the grace period; give them a little more to say goodbye.
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), tracker.wait()).await;
    });
    Ok(RunningServer {
        addr,
        state,
        task: crate::run::AbortOnDrop(task),
    })
}

/// `weir serve`: runs until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let server = start(config).await?;
    // Registered before the address is announced: a SIGTERM sent as soon as a supervisor sees
    // the server listening must begin a graceful shutdown, not kill the process.
    let signals = ShutdownSignals::register()?;
    tracing::info!(addr = %server.addr, "weir listening");
    eprintln!(
        "weir: listening on http://{} (WebSocket at /ws)",
        server.addr
    );
    signals.recv().await;
    eprintln!("weir: shutting down");
    server.shutdown().await;
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
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::routes())
        .merge(crate::piston::routes())
        .merge(crate::ide::routes())
        .layer(body_limit)
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(
            state.sandbox.live_instances(),
            state.sandbox.instance_starts(),
            state.sandbox.compile_cache_stats(),
        ),
    )
}

/// Ready only if a canary script prints the expected text within 2 s.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut req = RunRequest::script("print('weir-ready')");
    req.close_stdin = true;
    let canary = async {
        let handle = state.sandbox.start(req).await.ok()?;
        Some(handle.collect().await.stdout_text())
    };
    match tokio::time::timeout(Duration::from_secs(2), canary).await {
        Ok(Some(out)) if out == "weir-ready\n" => (StatusCode::OK, "ready").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the canary run failed",
        )
            .into_response(),
    }
}

/// The query string every entry point accepts: an optional token.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    pub token: Option<String>,
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let admitted = match admission::admit(&state, &query, &headers) {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(admission::Body::Text),
    };
    let Admitted {
        user,
        protocol,
        permit,
    } = admitted;
    let session_no = state.next_session.fetch_add(1, Relaxed);
    let replaced = register_user(&state, user.as_deref(), session_no);
    let app = state.clone();
    upgrade(&state, ws, protocol, move |socket| async move {
        let ctx = SessionCtx {
            app: app.clone(),
            session_no,
            user: user.clone(),
            replaced,
        };
        session::run(socket, ctx).await;
        unregister_user(&app, user.as_deref(), session_no);
        drop(permit);
    })
}

/// Upgrades an admitted connection: messages capped at `max_message_bytes`, the token's
/// subprotocol echoed, and `session` run as a task that shutdown waits for and that
/// `weir_sessions_open` counts.
pub(crate) fn upgrade<F, Fut>(
    state: &Arc<AppState>,
    ws: WebSocketUpgrade,
    protocol: Option<String>,
    session: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // axum's 128 KiB read and write buffers are sized for bulk transfer; a session mostly
    // carries small JSON messages, and its memory is counted per idle session.
    let ws = ws
        .max_message_size(state.config.max_message_bytes)
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES);
    let ws = match protocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    let state = state.clone();
    let tracker = state.tracker.clone();
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            state.metrics.sessions_open.fetch_add(1, Relaxed);
            session(socket).await;
            state.metrics.sessions_open.fetch_sub(1, Relaxed);
        })
    })
}

/// Records `user`'s new session, closing their previous one.
fn register_user(state: &AppState, user: Option<&str>, session_no: u64) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    if let Some(user) = user {
        let mut users = state.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, previous)) = users.insert(user.to_string(), (session_no, tx)) {
            let _ = previous.send(true);
        }
    }
    rx
}

fn unregister_user(state: &AppState, user: Option<&str>, session_no: u64) {
    if let Some(user) = user {
        let mut users = state.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.get(user).is_some_and(|(n, _)| *n == session_no) {
            users.remove(user);
        }
    }
}
