//! What a request fails with: one [`Error`] for every route, rendering its HTTP answer (status,
//! `Retry-After` on 503, body) in the [`Dialect`] of the front end that answers.

use crate::history::HistoryError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weir_sandbox::FileError;
use weir_sandbox::ScratchError;
use weir_sandbox::StartError;

/// Why a caller was refused at admission: the HTTP status, the metric's reason label
/// (`weir_connections_rejected_total`) and a message.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Admission refused the caller.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// The request itself is malformed: its body, a parameter, a query string.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over `max_message_bytes`.
    #[error("the request body is larger than the {limit} limit")]
    TooLarge { limit: String },
    /// The body did not arrive within `request_timeout_secs`.
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    /// No such thing for this caller (another user's is as absent as a missing one).
    #[error("{0}")]
    NotFound(String),
    /// The thing exists but cannot do this now (a cell already running, none running).
    #[error("{0}")]
    Conflict(String),
    /// A queue is full (a session's stdin).
    #[error("{0}")]
    Full(String),
    /// The run could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A session's file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The run history cannot be read.
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl Error {
    /// The HTTP status the error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Refused(r) => r.status,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Full(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Start(e) => start_status(e),
            Error::File(e) => file_status(e),
            Error::History(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer, its body spelled as `D` spells errors.
    pub fn render<D: Dialect>(self) -> Response {
        let status = self.status();
        if let Error::History(e) = &self {
            tracing::error!(error = %e, "run history read failed");
        }
        let mut response = D::render(status, self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// weir's own API answers errors as `{"error": message}`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.render::<WeirJson>()
    }
}

/// The HTTP status for a run that could not start.
fn start_status(e: &StartError) -> StatusCode {
    match e {
        StartError::AtCapacity(_) | StartError::MemoryBudget { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        StartError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StartError::Scratch(
            ScratchError::TooLarge { .. } | ScratchError::TooManyEntries { .. },
        ) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The HTTP status for a session file that could not be read or written.
fn file_status(e: &FileError) -> StatusCode {
    match e {
        FileError::BadPath(_) | FileError::BadPattern { .. } | FileError::Refused { .. } => {
            StatusCode::BAD_REQUEST
        }
        FileError::NotFound(_) | FileError::Ended => StatusCode::NOT_FOUND,
        FileError::TooLarge { .. } | FileError::ScratchFull { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// How a front end spells an error's body.
pub trait Dialect: Send + Sync + 'static {
    /// The answer with `status` and `message`.
    fn render(status: StatusCode, message: String) -> Response;
}

/// Plain text (the WebSocket upgrade, `/mcp`).
pub enum Text {}

/// `{"error": message}` (weir's `/v1` API).
pub enum WeirJson {}

/// `{"message": message}` (Piston's API).
pub enum PistonJson {}

impl Dialect for Text {
    fn render(status: StatusCode, message: String) -> Response {
        (status, message).into_response()
    }
}

impl Dialect for WeirJson {
    fn render(status: StatusCode, message: String) -> Response {
        (status, axum::Json(json!({ "error": message }))).into_response()
    }
}

impl Dialect for PistonJson {
    fn render(status: StatusCode, message: String) -> Response {
        (status, axum::Json(json!({ "message": message }))).into_response()
    }
}
