//! Runs answered in one HTTP response (`POST /v1/runs`, Piston's `POST /api/v2/execute`): start,
//! collect everything the run printed (bounded by its output limit), count it in the metrics and
//! store it in the run history like any session's run.

use crate::history::RunRecord;
use crate::state::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use weir_sandbox::outcome::Outcome;
use weir_sandbox::transcript::{OutputLog, Transcript};
use weir_sandbox::{Collected, RunResult};
use weir_sandbox::{RunRequest, StartError};

/// A run that has ended.
pub struct Finished {
    pub id: String,
    /// What the run printed (its `result` is moved to [`Finished::result`]).
    pub collected: Collected,
    pub result: RunResult,
    /// Where the recorded transcript can be fetched, for runs that asked for one.
    pub transcript: Option<String>,
    /// The outcome reported and recorded: the result's, or `shutdown` when the server stopped
    /// the run at the end of its shutdown grace period.
    pub outcome: &'static str,
}

/// Starts `req` for `user`, waits for it to end, and records it. Dropping the future (the
/// client hung up) drops the run and frees its store. stdin holds the request's text and is then
/// closed: nobody can type into a one-shot run, so `input()` past the text reads end of file.
pub async fn execute(
    app: &AppState,
    user: &str,
    mut req: RunRequest,
    record: bool,
) -> Result<Finished, StartError> {
    req.close_stdin = true;
    let started = SystemTime::now();
    let mut recording = record.then(|| (req.clone(), OutputLog::default()));
    let mut handle = app.sandbox.start(req).await?;
    app.metrics.runs_started.fetch_add(1, Relaxed);
    let id = handle.id().to_string();
    tracing::info!(run_id = %id, user, "one-shot run started");
    app.history.started(&id, user, handle.runtime()).await;
    let mut collected = Collected::default();
    // On shutdown the run may finish for the grace period, then it is stopped.
    let mut shutdown = app.shutdown.subscribe();
    let mut grace_over: Option<tokio::time::Instant> = None;
    let mut stopped_for_shutdown = false;
    loop {
        let event = tokio::select! {
            event = handle.next_event() => event,
            _ = shutdown.wait_for(|s| *s), if grace_over.is_none() => {
                grace_over = Some(tokio::time::Instant::now() + app.config.shutdown_grace());
                continue;
            }
            () = crate::socket::sleep_until_opt(grace_over), if !stopped_for_shutdown => {
                stopped_for_shutdown = true;
                handle.control().stop();
                continue;
            }
        };
        let Some(event) = event else { break };
        if let Some((_, log)) = &mut recording {
            log.observe(&event);
        }
        collected.push(event);
    }
    let runtime = handle.runtime().to_string();
    let result = collected.result.take().unwrap_or_else(|| vanished(runtime));
    let outcome = if stopped_for_shutdown {
        "shutdown"
    } else {
        result.outcome.kind()
    };
    app.metrics
        .run_finished(outcome, result.duration, result.output_bytes);
    let transcript = recording.and_then(|(req, log)| {
        let runtime = app.sandbox.runtime(Some(&result.runtime)).ok()?;
        Transcript::record(&req, runtime, &log, &result)
            .map_err(|e| tracing::warn!(error = %e, "cannot record the transcript"))
            .ok()
    });
    let record = RunRecord::finished(&id, user, started, outcome, &result, transcript.is_some());
    app.history
        .store(record, transcript.as_ref().map(Transcript::to_json))
        .await;
    Ok(Finished {
        transcript: transcript.map(|_| format!("/v1/runs/{id}/transcript")),
        id,
        collected,
        result,
        outcome,
    })
}

/// The result of a run whose task ended without reporting (a weir bug, reported as crashed).
fn vanished(runtime: String) -> RunResult {
    RunResult {
        outcome: Outcome::Crashed {
            detail: "the run ended without reporting".into(),
        },
        message: "The sandbox lost the run (a weir bug)".into(),
        duration: Duration::ZERO,
        output_truncated: false,
        output_bytes: 0,
        fuel_consumed: None,
        peak_memory: 0,
        input_read: None,
        runtime,
        files: Default::default(),
    }
}

/// The HTTP status for a run that could not start.
pub fn start_status(e: &StartError) -> StatusCode {
    match e {
        StartError::AtCapacity(_) | StartError::MemoryBudget { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        StartError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StartError::Scratch(
            weir_sandbox::scratch::ScratchError::TooLarge { .. }
            | weir_sandbox::scratch::ScratchError::TooManyEntries { .. },
        ) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A request's body as a `T`, within the server's size limit and request timeout; a body that is
/// not a `T` is a 400 naming `what` was invalid and why.
pub async fn request_params<T: serde::de::DeserializeOwned>(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, (StatusCode, String)> {
    let value = request_json(app, headers, body).await?;
    serde_json::from_value(value)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid {what}: {e}")))
}

/// A request's body as a JSON value, within the server's size limit and request timeout
/// ([`json_body`]).
pub async fn request_json(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, (StatusCode, String)> {
    let config = &app.config;
    json_body(
        headers,
        body,
        config.max_message_bytes,
        config.request_timeout(),
    )
    .await
}

/// 413 for a body larger than `limit`.
fn too_large(limit: usize) -> (StatusCode, String) {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the {} limit",
            weir_sandbox::limits::human_bytes(limit as u64)
        ),
    )
}

/// Refuses at once (413, without reading it) a body whose `Content-Length` is over `limit`.
pub fn refuse_announced_over(
    headers: &HeaderMap,
    limit: usize,
) -> Result<(), (StatusCode, String)> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// An HTTP body as a JSON value, whatever its `Content-Type` (Piston clients send `text/plain`
/// as often as `application/json`), read as [`body_bytes`] reads it.
pub async fn json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Value, (StatusCode, String)> {
    let body = body_bytes(headers, body, limit, timeout).await?;
    serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// An HTTP body's bytes. A body announced larger than `limit` is refused at once (413, without
/// waiting for it), one that grows past it too, and one that has not all arrived within
/// `timeout` gets 408: every route reads its body through this, before it takes a slot.
pub async fn body_bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<axum::body::Bytes, (StatusCode, String)> {
    refuse_announced_over(headers, limit)?;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large(limit)),
        Ok(Err(e)) => Err((
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(body)) => Ok(body),
    }
}

/// A request's body bytes within the server's size limit and request timeout ([`body_bytes`]).
pub async fn request_bytes(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, (StatusCode, String)> {
    let config = &app.config;
    body_bytes(
        headers,
        body,
        config.max_message_bytes,
        config.request_timeout(),
    )
    .await
}

/// Whether reading a body failed because it passed its length limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}
