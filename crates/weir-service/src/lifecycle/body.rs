//! Request bodies: every route reads its body through [`FromBody`], within `max_message_bytes`
//! (413, refused at once when `Content-Length` announces more) and `request_timeout_secs`
//! (408), before admission takes a slot for it: a caller that never sends its body holds
//! nothing.

use crate::error::Error;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

/// What a route takes from its body.
pub trait FromBody: Sized + Send + 'static {
    /// Reads and parses `body`.
    fn read(
        app: &AppState,
        headers: &HeaderMap,
        body: Body,
    ) -> impl Future<Output = Result<Self, Error>> + Send;
}

/// A route that takes no body (a WebSocket upgrade): nothing is read.
pub struct NoBody;

impl FromBody for NoBody {
    async fn read(_: &AppState, _: &HeaderMap, _: Body) -> Result<Self, Error> {
        Ok(NoBody)
    }
}

/// The body's bytes, as they came.
pub struct Raw(pub Bytes);

impl FromBody for Raw {
    async fn read(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Self, Error> {
        let config = &app.config;
        bytes(
            headers,
            body,
            config.max_message_bytes,
            config.request_timeout(),
        )
        .await
        .map(Raw)
    }
}

/// Any JSON, whatever the `Content-Type` (Piston clients send `text/plain` as often as
/// `application/json`).
impl FromBody for Value {
    async fn read(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Self, Error> {
        let Raw(body) = Raw::read(app, headers, body).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("the request body is not valid JSON: {e}")))
    }
}

/// A body that is JSON for a `T`; one that is not is a 400 naming what was invalid
/// ([`Params::WHAT`]) and why.
pub trait Params: DeserializeOwned + Send + 'static {
    /// What the body is, as the error for a malformed one names it ("invalid run: …").
    const WHAT: &'static str;
}

/// A body parsed as `T` ([`Params`]).
pub struct Json<T>(pub T);

impl<T: Params> FromBody for Json<T> {
    async fn read(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Self, Error> {
        let value = Value::read(app, headers, body).await?;
        serde_json::from_value(value)
            .map(Json)
            .map_err(|e| Error::BadRequest(format!("invalid {}: {e}", T::WHAT)))
    }
}

/// A route's body read on its own (a request about something the caller holds, which takes no
/// slot): errors as weir's API spells them.
macro_rules! extract {
    ($($ty:ident$(<$p:ident: $b:path>)?),*) => {$(
        impl<$($p: $b)?> axum::extract::FromRequest<std::sync::Arc<AppState>> for $ty$(<$p>)? {
            type Rejection = Error;

            async fn from_request(
                request: axum::extract::Request,
                app: &std::sync::Arc<AppState>,
            ) -> Result<Self, Error> {
                let (parts, body) = request.into_parts();
                Self::read(app, &parts.headers, body).await
            }
        }
    )*};
}

extract!(Raw, Json<T: Params>);

impl<T: Params> Params for Option<T> {
    const WHAT: &'static str = T::WHAT;
}

/// An HTTP body's bytes. A body announced larger than `limit` is refused at once (413, without
/// waiting for it), one that grows past it too, and one that has not all arrived within
/// `timeout` gets 408.
pub async fn bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Error> {
    refuse_announced_over(headers, limit)?;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Error::BodyTimeout {
            secs: timeout.as_secs(),
        }),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large(limit)),
        Ok(Err(e)) => Err(Error::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(body)) => Ok(body),
    }
}

/// 413 for a body larger than `limit`.
fn too_large(limit: usize) -> Error {
    Error::BodyTooLarge {
        limit: weir_sandbox::human_bytes(limit as u64),
    }
}

/// Refuses at once (413, without reading it) a body whose `Content-Length` is over `limit`.
fn refuse_announced_over(headers: &HeaderMap, limit: usize) -> Result<(), Error> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
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
