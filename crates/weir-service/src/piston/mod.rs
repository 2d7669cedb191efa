//! Piston's API (v2), so tools written for Piston (Discord bots, editors, graders) can switch to
//! weir by changing a URL: `GET /api/v2/runtimes`, `POST /api/v2/execute`, and the interactive
//! `GET /api/v2/connect` ([`connect`]). See docs/piston.md for what differs. [`job`] translates
//! between the two APIs.

pub mod connect;
pub mod job;

use crate::admission::{self, Body};
use crate::auth::ANONYMOUS;
use crate::oneshot;
use crate::state::{AppState, WsQuery};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use job::{job, listing, message, stage, RUN_ID_HEADER};
use serde_json::{json, Value};
use std::sync::Arc;

/// Piston's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v2/runtimes", get(runtimes))
        .route("/api/v2/execute", post(execute))
        .route("/api/v2/connect", get(connect::upgrade))
}

/// Every runtime of the sandbox, the default first, each with weir's `status` (`ready`,
/// `preparing`, `failed: …`) beside Piston's fields.
async fn runtimes(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(
        state
            .sandbox
            .runtimes()
            .map(|r| {
                let mut entry = listing(r);
                entry["status"] = crate::api::status(&state.sandbox, &r.name).into();
                entry
            })
            .collect(),
    )
}

async fn execute(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(refusal) = admission::precheck(&state, &query, &headers) {
        return refusal.into_response(Body::Message);
    }
    let body = match oneshot::request_json(&state, &headers, body).await {
        Ok(b) => b,
        Err((status, m)) => return message(status, m),
    };
    let admitted = match admission::admit(&state, &query, &headers).await {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(Body::Message),
    };
    let (mut req, runtime) = match job(&body, &state.config, state.sandbox.runtimes()) {
        Ok(job) => job,
        Err(m) => return message(StatusCode::BAD_REQUEST, m),
    };
    req.compile_scope = weir_sandbox::compile_cache::scope_for(admitted.user.as_deref(), None);
    let user = admitted.user.as_deref().unwrap_or(ANONYMOUS);
    let finished = match oneshot::execute(&state, user, req, false).await {
        Ok(f) => f,
        Err(e) => return message(oneshot::start_status(&e), e.to_string()),
    };
    drop(admitted);
    let run = stage(&finished.collected, &finished.result, None);
    let mut response = Json(json!({
        "language": runtime.language,
        "version": runtime.version,
        "run": run,
    }))
    .into_response();
    if let Ok(id) = HeaderValue::from_str(&finished.id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(RUN_ID_HEADER), id);
    }
    response
}
