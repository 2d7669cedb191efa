//! What the sandbox fails with: one [`Error`] for every operation (loading, limits, starting a
//! run, a live run's stdin, cells and files, transcripts and replay). Each variant's message is
//! written for the person who asked.

/// A result whose error is the sandbox's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why something the sandbox was asked to do was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sandbox could not be loaded: a runtime's guest could not be obtained, compiled or
    /// linked, no runtime was given, or the host refused what every sandbox needs (the root of
    /// its scratch directories, its background lane).
    #[error(transparent)]
    Load(anyhow::Error),
    /// No runtime of this sandbox answers to the requested name.
    #[error("no runtime named {name:?}; this sandbox has {known}")]
    UnknownRuntime {
        /// The name asked for.
        name: String,
        /// The runtimes there are, comma-separated.
        known: String,
    },

    /// A limit of zero.
    #[error("{name} must be greater than zero")]
    ZeroLimit {
        /// The limit's name.
        name: &'static str,
    },
    /// A memory limit above what the engine allows.
    #[error("memory limit {asked} bytes is above the maximum of {max} bytes")]
    MemoryTooLarge {
        /// Bytes asked for.
        asked: u64,
        /// The most the engine allows.
        max: u64,
    },
    /// A duration that does not parse, or is longer than any limit may be.
    #[error("invalid duration {value:?}: {reason}")]
    InvalidDuration {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A size that does not parse.
    #[error("invalid size {value:?}: {reason}")]
    InvalidSize {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Every instance slot is taken.
    #[error("all {0} sandbox slots are in use; try again shortly")]
    AtCapacity(u32),
    /// The host's memory budget left cannot cover the run's memory limit.
    #[error("the host's memory budget has {left} left, less than this run's {limit} memory limit; try again shortly or ask for less memory")]
    MemoryBudget {
        /// What is left of the budget, for people.
        left: String,
        /// The run's memory limit, for people.
        limit: String,
    },
    /// A mount could not be opened.
    #[error("cannot mount {path}: {reason}")]
    Mount {
        /// The host directory.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// An environment variable the guest could not be given: an empty name, or a name or value
    /// holding `=` (names only) or NUL.
    #[error("invalid environment variable {0:?}: a name must be non-empty and hold no '=' or NUL, a value no NUL")]
    BadEnv(String),
    /// Something failed inside the sandbox while starting a run (a bug or the host's resources).
    #[error("the sandbox failed to start the run: {0}")]
    Internal(String),

    /// A file name that would leave the run's directory.
    #[error("invalid file name {0:?}: use a relative path without '..'")]
    BadPath(String),
    /// A `return_files` glob that does not parse.
    #[error("invalid pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request's files exceed the scratch limit.
    #[error("files total {total} bytes, above the scratch limit of {limit}")]
    FilesTooLarge {
        /// Their size, bytes.
        total: u64,
        /// The limit, for people.
        limit: String,
    },
    /// The request's files and their directories are too many.
    #[error(
        "files and their directories number {count}, above the scratch limit of {max} entries"
    )]
    TooManyFiles {
        /// How many there are.
        count: usize,
        /// The most a scratch directory may hold.
        max: usize,
    },
    /// The run's scratch directory could not be made or filled with the request's files.
    #[error("cannot create the scratch directory: {0}")]
    ScratchDir(std::io::Error),
    /// No such file in a live run's directory (or not a regular file).
    #[error("no file {0:?}")]
    FileNotFound(String),
    /// A file larger than the caller reads at once.
    #[error("{path:?} is {size} bytes, above the limit of {limit}")]
    FileTooLarge {
        /// The file.
        path: String,
        /// Its size, bytes.
        size: u64,
        /// The limit, for people.
        limit: String,
    },
    /// Writing a file would take the run's directory past its scratch limit.
    #[error("writing {path:?} would take the files past the scratch limit of {limit}")]
    ScratchFull {
        /// The file.
        path: String,
        /// The limit, for people.
        limit: String,
    },
    /// A path the host cannot take: a name too long, a directory where a file is meant, or a
    /// symbolic link (a guest's) that would lead out of the directory.
    #[error("cannot use {path:?}: {reason}")]
    PathRefused {
        /// The path.
        path: String,
        /// Why, for people.
        reason: &'static str,
    },
    /// The host failed reading or writing a live run's files.
    #[error("file operation failed: {0}")]
    Io(std::io::Error),

    /// The run's stdin is full: the script has not read the input already sent.
    #[error("stdin is full: the script has not read the input already sent")]
    StdinFull,
    /// Host functions that cannot be given to a run (`crate::Tools`).
    #[error("host functions: {0}")]
    Tools(String),
    /// A cell was handed to a run not started as a session ([`crate::RunRequest::cells`]).
    #[error("the run is not a session")]
    NotASession,
    /// A cell is running or waiting in the session: one at a time.
    #[error("a cell is already running in this session")]
    CellBusy,
    /// The run (a session's included) has ended: it takes no more input or cells.
    #[error("the run has ended")]
    Ended,

    /// Bytes given as a snapshot are not one.
    #[error("not a weir snapshot")]
    NotASnapshot,
    /// A snapshot written by a weir whose snapshot format this one does not read.
    #[error("snapshot format {version} is not supported (this weir reads format {supported})")]
    SnapshotVersion {
        /// The snapshot's format.
        version: u32,
        /// The format this weir reads.
        supported: u32,
    },
    /// A damaged snapshot: cut short, altered, or inconsistent.
    #[error("the snapshot is corrupted: {0}")]
    SnapshotCorrupted(String),
    /// A snapshot larger than this weir reads.
    #[error("the snapshot is larger than {max} bytes once decompressed")]
    SnapshotTooLarge {
        /// The most this weir reads, bytes.
        max: u64,
    },
    /// A snapshot taken in another runtime, or another build of it.
    #[error(
        "the snapshot was taken in runtime {runtime:?} build {build}; it restores only in that \
         build (this sandbox runs {current})"
    )]
    SnapshotBuild {
        /// The snapshot's runtime.
        runtime: String,
        /// The snapshot's build.
        build: String,
        /// What this sandbox has under that name.
        current: String,
    },
    /// A snapshot whose guest state does not have this runtime's guest's shape.
    #[error("the snapshot does not fit this runtime's guest: {0}")]
    SnapshotShape(String),
    /// The session holds something a snapshot cannot keep, or the snapshot cannot start this
    /// run (a deterministic one, a memory limit below the snapshot's memory).
    #[error("{0}")]
    Unsaved(String),
    /// This runtime's sessions cannot be snapshotted.
    #[error("runtime {0:?} cannot snapshot its sessions")]
    SnapshotUnsupported(String),
    /// The guest failed while its session was saved or restored.
    #[error("the guest failed while its session was saved or restored: {0}")]
    SnapshotGuest(String),

    /// A transcript file cannot be read.
    #[error("cannot read {path}: {reason}")]
    ReadTranscript {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The document is not a transcript (or a part of it is malformed).
    #[error("not a weir transcript: {0}")]
    NotATranscript(String),
    /// A transcript format version this weir does not read.
    #[error("transcript version {version} is not supported (this weir reads version {supported}); re-record it")]
    TranscriptVersion {
        /// The transcript's version.
        version: u32,
        /// The version this weir reads.
        supported: u32,
    },
    /// The transcript was recorded with another guest build: its output cannot be compared.
    #[error(
        "recorded with a different guest build ({recorded}; this weir runs {current}): \
         its output cannot be compared; re-record it with `weir replay --update`"
    )]
    OtherGuest {
        /// The build that recorded it.
        recorded: String,
        /// The build this weir runs.
        current: String,
    },
    /// Only deterministic runs can be recorded.
    #[error("only deterministic runs can be recorded")]
    NotDeterministic,
    /// A run with mounted host directories cannot be recorded: its files are not in the
    /// transcript.
    #[error("a run with mounted host directories cannot be recorded (its files are not in the transcript)")]
    HasMounts,
    /// A run restored from a snapshot cannot be recorded: its start is not in the transcript.
    #[error(
        "a run restored from a snapshot cannot be recorded (the snapshot is not in the transcript)"
    )]
    RestoredRun,
    /// The run ended without reporting a result.
    #[error("the run ended without a result")]
    NoResult,
}
