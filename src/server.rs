//! `weir serve`: the HTTP/WebSocket server. A semaphore caps sessions, shutdown is broadcast,
//! one task per session (tracked, so shutdown waits for every one of them).

use crate::auth;
use crate::config::ServerConfig;
use crate::history::History;
use crate::metrics::Metrics;
use crate::sandbox::{RunRequest, Sandbox};
use crate::session::{self, SessionCtx};
use crate::EngineSettings;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
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
    sessions: Arc<Semaphore>,
    /// Signed-in users and the switch that closes their current session (one entry per open
    /// authenticated session, so bounded by `max_sessions`).
    users: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
    next_session: AtomicU64,
    tracker: TaskTracker,
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
        self.task.join().await;
        self.state.history.flush().await;
    }
}

/// Loads the sandbox, binds, and serves until [`RunningServer::shutdown`].
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let settings = EngineSettings {
        max_instances: config.max_instances,
        ..EngineSettings::default()
    };
    let sandbox = Sandbox::load_async(settings).await?;
    let history = History::open(&config.history)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        sessions: Arc::new(Semaphore::new(config.max_sessions)),
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
    tracing::info!(addr = %server.addr, "weir listening");
    eprintln!(
        "weir: listening on http://{} (WebSocket at /ws)",
        server.addr
    );
    shutdown_signal().await;
    eprintln!("weir: shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::routes())
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.sandbox.live_instances()),
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

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WsQuery {
    pub token: Option<String>,
}

fn refuse(state: &AppState, reason: &str, status: StatusCode, message: String) -> Response {
    state.metrics.rejected(reason);
    tracing::info!(reason, %message, "connection refused");
    (status, message).into_response()
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if *state.shutdown.borrow() {
        return refuse(
            &state,
            "shutting_down",
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        );
    }
    if let Err(origin) = check_origin(&headers, &state.config.allowed_origins) {
        return refuse(
            &state,
            "origin",
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed"),
        );
    }
    let (user, protocol) = match authenticate(&state.config, &query, &headers) {
        Ok(found) => found,
        Err(e) => {
            return refuse(
                &state,
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                e.to_string(),
            )
        }
    };
    let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
        let mut response = refuse(
            &state,
            "capacity",
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "all {} sessions are in use; retry shortly",
                state.config.max_sessions
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let session_no = state.next_session.fetch_add(1, Relaxed);
    let replaced = register_user(&state, user.as_deref(), session_no);
    let ws = ws.max_message_size(state.config.max_message_bytes);
    let ws = match protocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    let tracker = state.tracker.clone();
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            state.metrics.sessions_open.fetch_add(1, Relaxed);
            let ctx = SessionCtx {
                app: state.clone(),
                session_no,
                user: user.clone(),
                replaced,
            };
            session::run(socket, ctx).await;
            unregister_user(&state, user.as_deref(), session_no);
            state.metrics.sessions_open.fetch_sub(1, Relaxed);
            drop(permit);
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

/// Browsers send `Origin`; it must be this server's host, localhost, or an allowed origin.
/// Clients that send no `Origin` (not browsers) are let through.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").to_string();
    let host_of = |o: &str| {
        o.split("://")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string()
    };
    let origin_host = host_of(&origin);
    let bare = |h: &str| {
        h.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(h.to_string(), |(name, _)| name.to_string())
    };
    let own_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let local = matches!(
        bare(&origin_host).as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    );
    if origin_host == own_host || local || allowed.iter().any(|a| a == &origin) {
        Ok(())
    } else {
        Err(origin)
    }
}

/// With a secret configured, finds and checks the token; returns the user and, when the token
/// came in `Sec-WebSocket-Protocol`, the protocol value to echo back.
pub(crate) fn authenticate(
    config: &ServerConfig,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<(Option<String>, Option<String>), auth::TokenError> {
    let Some(secret) = &config.secret else {
        return Ok((None, None));
    };
    if let Some(token) = &query.token {
        return auth::verify(secret.as_bytes(), token).map(|u| (Some(u), None));
    }
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut last = auth::TokenError::Missing;
    for candidate in offered.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match auth::verify(secret.as_bytes(), candidate) {
            Ok(user) => return Ok((Some(user), Some(candidate.to_string()))),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn origin_must_be_same_host_local_or_allowed() {
        assert!(check_origin(&HeaderMap::new(), &[]).is_ok());
        assert!(check_origin(&headers("http://ide.example:8080", "ide.example:8080"), &[]).is_ok());
        assert!(check_origin(&headers("http://localhost:3000", "ide.example:8080"), &[]).is_ok());
        assert!(check_origin(&headers("https://evil.example", "ide.example:8080"), &[]).is_err());
        let allowed = vec!["https://app.example".to_string()];
        assert!(check_origin(
            &headers("https://app.example", "ide.example:8080"),
            &allowed
        )
        .is_ok());
    }
}
