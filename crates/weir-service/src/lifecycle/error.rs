//! How a request's failure answers: [`Error`]'s HTTP status, `Retry-After` on 503, and its
//! body in the [`Dialect`] of the front end that answers.

use crate::error::Error;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weir_sandbox::{FileError, ScratchError, StartError};

impl Error {
    /// The HTTP status the error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Refused(r) => r.status,
            Error::BadRequest(_) | Error::InvalidUserName | Error::ReservedUserName => {
                StatusCode::BAD_REQUEST
            }
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound(_) | Error::SessionEnded => StatusCode::NOT_FOUND,
            Error::Conflict(_) | Error::CellBusy | Error::NoCell => StatusCode::CONFLICT,
            Error::Full(_) | Error::Stdin(_) | Error::UserAtCapacity { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::Start(e) => start_status(e),
            Error::File(e) => file_status(e),
            Error::TokenMissing
            | Error::TokenMalformed
            | Error::TokenBadSignature
            | Error::TokenExpired => StatusCode::UNAUTHORIZED,
            Error::ClusterUnavailable(_)
            | Error::LoginBusy
            | Error::ClusterConnect(_)
            | Error::HistoryOpen { .. }
            | Error::HistorySql(_)
            | Error::HistoryDatabase(_)
            | Error::HistoryClosed => StatusCode::SERVICE_UNAVAILABLE,
            // The operator's own failures (settings, packages): the server's, should one ever
            // answer a request.
            Error::ClusterUrl(_)
            | Error::Unpinned(_)
            | Error::NativeWheel { .. }
            | Error::PackageFailed { .. }
            | Error::NotAWheel(_)
            | Error::WheelRefused { .. }
            | Error::PackageCompile(_)
            | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer, its body spelled as `D` spells errors.
    pub fn render<D: Dialect>(self) -> Response {
        let status = self.status();
        if self.is_history() {
            tracing::error!(error = %self, "run history read failed");
        }
        let mut response = D::render(status, self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }

    /// Whether the run history failed.
    fn is_history(&self) -> bool {
        matches!(
            self,
            Error::HistoryOpen { .. }
                | Error::HistorySql(_)
                | Error::HistoryDatabase(_)
                | Error::HistoryClosed
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_history_is_retried_later() {
        let response = Error::HistoryClosed.render::<WeirJson>();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    }
}
