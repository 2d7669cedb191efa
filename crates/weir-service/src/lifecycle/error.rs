//! How a request's failure answers: [`Error`]'s HTTP status, `Retry-After` on 503, and its
//! body in the [`Dialect`] of the front end that answers.

use crate::error::Error;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

impl Error {
    /// The HTTP status the error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Refused(r) => r.status,
            Error::BadRequest(_) | Error::InvalidUserName | Error::ReservedUserName => {
                StatusCode::BAD_REQUEST
            }
            Error::BodyTooLarge { .. } | Error::SnapshotTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::SnapshotsFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound(_) | Error::SessionEnded | Error::FilesGone => StatusCode::NOT_FOUND,
            Error::Conflict(_) | Error::CellBusy | Error::NoCell => StatusCode::CONFLICT,
            Error::Full(_) | Error::UserAtCapacity { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Sandbox(e) => sandbox_status(e),
            Error::TokenMissing
            | Error::TokenMalformed
            | Error::TokenBadSignature
            | Error::TokenExpired => StatusCode::UNAUTHORIZED,
            Error::ClusterUnavailable(_)
            | Error::SessionElsewhere { .. }
            | Error::SessionMoved(_)
            | Error::SavesOutOfStep
            | Error::SnapshotDatabase(_)
            | Error::DurableDatabase(_)
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

/// The HTTP status for what the sandbox refused or failed: a run that could not start, a live
/// run's file.
fn sandbox_status(e: &weir_sandbox::Error) -> StatusCode {
    use weir_sandbox::Error as E;
    match e {
        E::AtCapacity(_) | E::MemoryBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
        E::Internal(_) | E::Io(_) | E::Load(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::FilesTooLarge { .. }
        | E::TooManyFiles { .. }
        | E::FileTooLarge { .. }
        | E::ScratchFull { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        E::FileNotFound(_) | E::Ended => StatusCode::NOT_FOUND,
        E::CellBusy | E::NotASession | E::Unsaved(_) => StatusCode::CONFLICT,
        E::SnapshotTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        E::SnapshotUnsupported(_) => StatusCode::NOT_IMPLEMENTED,
        E::SnapshotGuest(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::StdinFull => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
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
    use weir_sandbox::Error as Sandbox;

    fn status(e: Sandbox) -> StatusCode {
        Error::from(e).status()
    }

    #[test]
    fn a_run_that_could_not_start_answers_by_whose_fault_it_is() {
        let busy = [
            Sandbox::AtCapacity(4),
            Sandbox::MemoryBudget {
                left: "1 MiB".into(),
                limit: "256 MiB".into(),
            },
        ];
        for e in busy {
            assert_eq!(status(e), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(
            status(Sandbox::Internal("a bug".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let too_much = [
            Sandbox::TooManyFiles { count: 3, max: 2 },
            Sandbox::FilesTooLarge {
                total: 3,
                limit: "2 B".into(),
            },
        ];
        for e in too_much {
            assert_eq!(status(e), StatusCode::PAYLOAD_TOO_LARGE);
        }
        let the_callers = [
            Sandbox::ZeroLimit { name: "wall_ms" },
            Sandbox::BadPath("../x".into()),
            Sandbox::ScratchDir(std::io::Error::other("a file where a directory goes")),
            Sandbox::UnknownRuntime {
                name: "cobol".into(),
                known: "python".into(),
            },
            Sandbox::BadEnv("A=B".into()),
        ];
        for e in the_callers {
            assert_eq!(status(e), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_session_file_answers_by_what_went_wrong() {
        assert_eq!(
            status(Sandbox::FileNotFound("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(Error::FilesGone.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            status(Sandbox::ScratchFull {
                path: "x".into(),
                limit: "1 B".into()
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(Sandbox::PathRefused {
                path: "x".into(),
                reason: "it is a directory"
            }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Sandbox::Io(std::io::Error::other("disk"))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn an_unreadable_history_is_retried_later() {
        let response = Error::HistoryClosed.render::<WeirJson>();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    }
}
