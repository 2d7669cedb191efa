//! What the service fails with: one [`Error`] for every route and store (admission and request
//! bodies, the sandbox's own failures, sessions, tokens, the login registry and cluster mode, the
//! run history, packages). How a request's failure answers over HTTP is
//! `crate::lifecycle::error`'s.

use axum::http::StatusCode;

/// Why a caller was refused at admission: the HTTP status, the metric's reason label
/// (`weir_connections_rejected_total`) and a message.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

/// Why a request, or a store under it, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Admission refused the caller.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// The request itself is malformed: its body, a parameter, a query string.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over `max_message_bytes`.
    #[error("the request body is larger than the {limit} limit")]
    BodyTooLarge { limit: String },
    /// The body did not arrive within `request_timeout_secs`.
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    /// No such thing for this caller (another user's is as absent as a missing one).
    #[error("{0}")]
    NotFound(String),
    /// The thing exists but cannot do this now.
    #[error("{0}")]
    Conflict(String),
    /// A queue is full (a session's stdin).
    #[error("{0}")]
    Full(String),
    /// The sandbox refused or failed: a run that could not start, a live run's file.
    #[error(transparent)]
    Sandbox(#[from] weir_sandbox::Error),

    /// A snapshot larger than `snapshots.max_bytes`.
    #[error("the snapshot is {size} bytes, above the limit of {limit} (snapshots.max_bytes)")]
    SnapshotTooLarge { size: u64, limit: String },
    /// The snapshot store holds all it may (for the user, or in all).
    #[error("{0}")]
    SnapshotsFull(String),
    /// A cell is already running in the session: one at a time.
    #[error("a cell is already running in this session; wait for it or interrupt it")]
    CellBusy,
    /// The session has ended: its run is over.
    #[error("the session has ended")]
    SessionEnded,
    /// Input for a session's cell, but no cell is running.
    #[error("no cell is running in this session")]
    NoCell,
    /// A session's files were asked for after its run ended.
    #[error("the run has ended; its files are gone")]
    FilesGone,

    /// A server with a secret was sent no token.
    #[error("a token is required (?token=…, an Authorization: Bearer header, or the Sec-WebSocket-Protocol header)")]
    TokenMissing,
    /// A token that is not one, or names a user no token may carry.
    #[error("the token is malformed")]
    TokenMalformed,
    /// A token not signed with the server's secret.
    #[error("the token's signature is invalid")]
    TokenBadSignature,
    /// A token past its expiry.
    #[error("the token has expired")]
    TokenExpired,
    /// A user name a token cannot carry: it goes into logs, history rows and cache scopes.
    #[error("the user name must be 1-64 characters of letters, digits and . _ @ + -")]
    InvalidUserName,
    /// The user name of runs made without a token (`crate::auth::ANONYMOUS`), which no token may
    /// carry.
    #[error("the user name \"anonymous\" is reserved for runs made without a token")]
    ReservedUserName,

    /// The user holds `cap` sessions and runs (`max_sessions_per_user`), on this node or across
    /// the cluster.
    #[error("user {user:?} already holds {cap} sessions and runs, the most one user may (max_sessions_per_user); close one or retry when one ends")]
    UserAtCapacity { user: String, cap: usize },
    /// This cluster node has lost its database: it admits no work until it is back.
    #[error("this node cannot reach the cluster database ({0}); it admits no work until it can")]
    ClusterUnavailable(String),
    /// The user's `/ws` login on another node did not close in time for this one.
    #[error("the user's session on another node has not closed within 3 s; retry")]
    LoginBusy,
    /// A durable session is live on another node, which has not let it go.
    #[error(
        "session {id:?} is live on node {node}: its requests go there (retry; a client that \
             keeps reaching this node gets it once that node lets it go)"
    )]
    SessionElsewhere { id: String, node: String },
    /// Another node took this node's durable session over (this node was cut off from the
    /// database meanwhile): this node's copy ends, unsaved.
    #[error("session {0:?} was taken over by another node; retry to reach it there")]
    SessionMoved(String),
    /// A durable session's save of changes did not follow the store's last save (an earlier
    /// save's outcome was lost): its next save is whole.
    #[error("the session's saves were out of step with the store; its next save is whole")]
    SavesOutOfStep,
    /// The database of stored snapshots failed (cluster mode).
    #[error("stored snapshots: {0}")]
    SnapshotDatabase(String),
    /// The database of durable sessions failed.
    #[error("durable sessions: {0}")]
    DurableDatabase(String),
    /// `[cluster] database_url` is not a PostgreSQL connection string.
    #[error("[cluster] database_url is not a PostgreSQL connection string: {0}")]
    ClusterUrl(String),
    /// The cluster database cannot be reached at start.
    #[error("cannot reach the cluster database: {0}")]
    ClusterConnect(String),

    /// The run history's SQLite file cannot be opened.
    #[error("run history database {path}: {reason}")]
    HistoryOpen { path: String, reason: String },
    /// The run history's SQLite database failed.
    #[error("run history: {0}")]
    HistorySql(#[from] rusqlite::Error),
    /// The run history's PostgreSQL database failed (cluster mode).
    #[error("run history database: {0}")]
    HistoryDatabase(String),
    /// The run history is closed.
    #[error("run history is closed")]
    HistoryClosed,

    /// A package named without a version.
    #[error("{0:?}: name a wheel file or pin a version, NAME==VERSION")]
    Unpinned(String),
    /// A package that exists only as a native wheel: guests run pure-Python packages only.
    #[error(
        "{spec}: only a native wheel exists ({wheel}); weir's guests run pure-Python packages only"
    )]
    NativeWheel { spec: String, wheel: String },
    /// A package could not be downloaded or unpacked (pip's or Python's reason).
    #[error("{spec}: {reason}")]
    PackageFailed { spec: String, reason: String },
    /// A file name that is not a wheel's.
    #[error("{0:?} is not a wheel file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)")]
    NotAWheel(String),
    /// A wheel refused on inspection: not a zip archive, too many members or bytes, a native
    /// extension module, or a member that would shadow the standard library or overwrite the
    /// site's manifest.
    #[error("{wheel}: refused: {reason}")]
    WheelRefused { wheel: String, reason: String },
    /// A package site's modules could not be compiled in the runtime's guest.
    #[error("compiling the site's modules failed: {0}")]
    PackageCompile(String),
    /// The host failed (a package site's files).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
