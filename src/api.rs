//! weir's own HTTP API under `/v1` (docs/protocol.md): the run history.
//!
//! Callers identify themselves as on the WebSocket: with a secret configured, a token (`weir
//! token`) as `Authorization: Bearer TOKEN` or `?token=`; without one, everyone is "anonymous".
//! A run is only shown to the user who started it; to anyone else it does not exist.

use crate::auth;
use crate::history::HistoryError;
use crate::server::{AppState, WsQuery};
use crate::session::ANONYMOUS;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/runs/{id}", get(run_metadata))
        .route("/v1/runs/{id}/transcript", get(run_transcript))
}

/// A JSON error body: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Who is asking: the token's user, or "anonymous" when the server has no secret.
pub(crate) fn caller(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<String, (StatusCode, String)> {
    let Some(secret) = &state.config.secret else {
        return Ok(ANONYMOUS.into());
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = bearer.or(query.token.as_deref());
    match token.map(|t| auth::verify(secret.as_bytes(), t)) {
        Some(Ok(user)) => Ok(user),
        Some(Err(e)) => Err((StatusCode::UNAUTHORIZED, e.to_string())),
        None => Err((
            StatusCode::UNAUTHORIZED,
            auth::TokenError::Missing.to_string(),
        )),
    }
}

fn not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no run {id:?}"))
}

fn unavailable(e: HistoryError) -> Response {
    tracing::error!(error = %e, "run history read failed");
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Reads from the history; a miss flushes the write queue and reads once more, so a run whose
/// `exit` the client has just seen is found even if it is still queued.
async fn read_flushed<T, F, Fut>(state: &AppState, read: F) -> Result<Option<T>, HistoryError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, HistoryError>>,
{
    match read().await {
        Ok(None) => {
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
    match read_flushed(&state, || state.history.get(&id)).await {
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
    match read_flushed(&state, || state.history.transcript(&id)).await {
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
