//! weir's own HTTP API under `/v1` (docs/protocol.md): one-shot runs (`POST /v1/runs`) and the
//! run history.
//!
//! Callers identify themselves as on the WebSocket: with a secret configured, a token (`weir
//! token`) as `Authorization: Bearer TOKEN` or `?token=`; without one, everyone is "anonymous".
//! A run is only shown to the user who started it; to anyone else it does not exist.

use crate::admission::{self, Body};
use crate::auth::ANONYMOUS;
use crate::history::HistoryError;
use crate::oneshot;
use crate::protocol::{self, RunParams};
use crate::state::{AppState, WsQuery};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use weir_sandbox::transcript::Data;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/runs", post(create_run))
        .route("/v1/runs/{id}", get(run_metadata))
        .route("/v1/runs/{id}/transcript", get(run_transcript))
        .route("/v1/runtimes", get(runtimes))
}

/// The runtimes a run may name (`runtime` in `run` params and `POST /v1/runs`), the default
/// first. Public like `/healthz`: it says what the server hosts, nothing about anyone's runs.
async fn runtimes(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .sandbox
        .runtimes()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "name": r.name,
                "language": r.language,
                "version": r.version,
                "aliases": r.aliases,
                "build": r.build,
                "default": i == 0,
                "status": status(&state.sandbox, &r.name),
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// `ready`, `preparing` (not loaded yet: its first run, or the server's start, loads it), or
/// `failed: REASON`.
pub(crate) fn status(sandbox: &weir_sandbox::Sandbox, name: &str) -> String {
    match sandbox.runtime_status(name) {
        Ok(weir_sandbox::RuntimeStatus::Ready) => "ready".into(),
        Ok(weir_sandbox::RuntimeStatus::NotLoaded) => "preparing".into(),
        Ok(weir_sandbox::RuntimeStatus::Failed(reason)) => format!("failed: {reason}"),
        Err(e) => format!("failed: {e}"),
    }
}

/// A JSON error body: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Who is asking: the token's user, or "anonymous" when the server has no secret (then the
/// `Host` must be one the server answers, as for runs: `crate::admission::served_host`).
pub(crate) fn caller(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<String, (StatusCode, String)> {
    crate::admission::served_host(&state.config, headers)
        .map_err(|message| (StatusCode::MISDIRECTED_REQUEST, message))?;
    match crate::admission::authenticate(&state.config, query, headers) {
        Ok((user, _)) => Ok(user.unwrap_or_else(|| ANONYMOUS.into())),
        Err(e) => Err((StatusCode::UNAUTHORIZED, e.to_string())),
    }
}

fn not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no run {id:?}"))
}

fn unavailable(e: HistoryError) -> Response {
    tracing::error!(error = %e, "run history read failed");
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Reads from the history; a miss, or a record `settled` does not accept (a run still stored
/// `running`), flushes the write queue and reads once more, so a run whose `exit` the client has
/// just seen is found as it ended even if its end is still queued.
async fn read_flushed<T, F, Fut>(
    state: &AppState,
    read: F,
    settled: impl Fn(&T) -> bool,
) -> Result<Option<T>, HistoryError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, HistoryError>>,
{
    match read().await {
        Ok(Some(found)) if settled(&found) => Ok(Some(found)),
        Ok(_) => {
            state.history.flush().await;
            read().await
        }
        other => other,
    }
}

async fn run_metadata(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
) -> Response {
    let user = match caller(&state, &query, &headers) {
        Ok(u) => u,
        Err((status, message)) => return error(status, message),
    };
    match read_flushed(
        &state,
        || state.history.get(&id),
        |r| r.outcome != "running",
    )
    .await
    {
        Ok(Some(run)) if run.user == user => Json(run).into_response(),
        Ok(_) => not_found(&id),
        Err(e) => unavailable(e),
    }
}

async fn run_transcript(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
) -> Response {
    let user = match caller(&state, &query, &headers) {
        Ok(u) => u,
        Err((status, message)) => return error(status, message),
    };
    match read_flushed(&state, || state.history.transcript(&id), |t| t.1.is_some()).await {
        Ok(Some((owner, Some(transcript)))) if owner == user => {
            ([(header::CONTENT_TYPE, "application/json")], transcript).into_response()
        }
        Ok(Some((owner, None))) if owner == user => error(
            StatusCode::NOT_FOUND,
            format!("run {id:?} was not recorded (start it with \"record\": true)"),
        ),
        Ok(_) => not_found(&id),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/runs`: the `/ws` protocol's `run` params (stdin is closed after `stdin`); answers
/// when the run ends with everything it printed and how it ended.
async fn create_run(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(refusal) = admission::precheck(&state, &query, &headers) {
        return refusal.into_response(Body::Error);
    }
    let params: RunParams = match oneshot::request_params(&state, &headers, body, "run").await {
        Ok(p) => p,
        Err((status, message)) => return error(status, message),
    };
    let admitted = match admission::admit(&state, &query, &headers).await {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(Body::Error),
    };
    let record = params.record;
    let config = &state.config;
    let memory_given = params.limits.memory_bytes.is_some();
    let mut req = params.into_request(&config.limits, &config.max_limits);
    state.runtime_defaults(&mut req, memory_given);
    req.compile_scope = weir_sandbox::compile_cache::scope_for(admitted.user.as_deref(), None);
    let user = admitted.user.as_deref().unwrap_or(ANONYMOUS);
    let finished = match oneshot::execute(&state, user, req, record).await {
        Ok(f) => f,
        Err(e) => return error(oneshot::start_status(&e), e.to_string()),
    };
    drop(admitted);
    let result = &finished.result;
    let mut body = protocol::exit_params(
        &finished.id,
        finished.outcome,
        result,
        finished.transcript.as_deref(),
    );
    body["stdout"] = json!(Data::from_bytes(&finished.collected.stdout));
    body["stderr"] = json!(Data::from_bytes(&finished.collected.stderr));
    body["display"] = finished
        .collected
        .displays
        .iter()
        .map(protocol::display_value)
        .collect();
    Json(body).into_response()
}
