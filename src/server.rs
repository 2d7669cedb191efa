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
    readiness: Readiness,
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
        // Stored even if nothing has subscribed yet (the serving task may not have started).
        self.state.shutdown.send_replace(true);
        let _ = self.task.join().await;
        self.state.history.flush().await;
    }
}

/// Read and write buffer size of each WebSocket.
const WS_BUFFER_BYTES: usize = 8 << 10;

/// After the grace period, how long sessions and connections get to say goodbye.
const DRAIN_EXTRA: Duration = Duration::from_secs(5);

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
        readiness: Readiness::default(),
    });
    let app = router(state.clone());
    let task = tokio::spawn(serve_connections(listener, app, state.clone()));
    Ok(RunningServer {
        addr,
        state,
        task: crate::run::AbortOnDrop(task),
    })
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
            () = crate::session::sleep_until_opt(drain_until) => break,
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
    {
        use std::os::fd::AsRawFd;
        let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: a plain setsockopt on a socket this function borrows, with a pointer to a
        // local of the option's size.
        let result = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set TCP_USER_TIMEOUT");
        }
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

/// Ready only if the server is not shutting down and a canary script printed the expected text
/// within 2 s (at most [`READY_FOR`] ago).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let unavailable = |why: &'static str| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if *state.shutdown.borrow() {
        return unavailable("not ready: shutting down");
    }
    if state.readiness.check(&state.sandbox).await {
        (StatusCode::OK, "ready").into_response()
    } else {
        unavailable("not ready: the canary run failed")
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
