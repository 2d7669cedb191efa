//! What a run is asked to do: the program, its files, arguments, environment, stdin, mounts,
//! limits and mode.

use crate::compile_cache::CompileScope;
use crate::determinism::Seed;
use crate::event::ReadLog;
use crate::limits::Limits;
use std::path::PathBuf;

/// What the user's program is.
#[derive(Debug, Clone)]
pub enum Program {
    /// A script file, written to the scratch dir under `filename` and run as `__main__`.
    Script {
        /// Its file name (relative).
        filename: String,
        /// Its bytes.
        source: Vec<u8>,
    },
    /// Source run as `python -c CODE`.
    Code(String),
}

/// A host directory the caller explicitly exposes to the guest, at the same absolute path.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// The guest may only read it.
    pub read_only: bool,
}

/// Everything a run needs. Build with [`RunRequest::script`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// What to run.
    pub program: Program,
    /// Extra files placed in the scratch dir (relative paths).
    pub files: Vec<(String, Vec<u8>)>,
    /// `sys.argv[1:]`.
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// The limits the caller asks for (see [`RunRequest::effective_limits`]).
    pub limits: Limits,
    /// Start an interactive console after the script (`python -i`).
    pub repl: bool,
    /// A session: after the program, run the cells sent with [`crate::RunControl::send_cell`]
    /// in its namespace, one at a time, until the handle is dropped. Takes precedence over
    /// `repl`. The wall-time limit applies to each cell, the idle limit between cells.
    pub cells: bool,
    /// Globs (`*`, `?`, `[..]`, `**`) naming files of the scratch directory whose contents come
    /// back in [`crate::RunResult::files`] when the program ends by itself, up to the run's
    /// output limit in all and [`crate::files::MAX_RETURNED_FILES`] files.
    pub return_files: Vec<String>,
    /// Bytes available on stdin from the start.
    pub stdin: Option<Vec<u8>>,
    /// Close stdin after `stdin` (the guest then sees EOF instead of waiting).
    pub close_stdin: bool,
    /// Host directories exposed to the guest.
    pub mounts: Vec<Mount>,
    /// Where the operator's package sites are (`weir packages`): `<dir>/<runtime name>`, if it
    /// exists, is mounted read-only at [`crate::sandbox::SITE_DIR`] and searched for imports
    /// after the working directory.
    pub packages: Option<PathBuf>,
    /// Keep what the guest read from stdin and the host-function calls it made with their
    /// answers, in order, in the result (for transcripts).
    pub record_input: bool,
    /// Give the guest exactly these reads first (replaying a transcript); when they run out
    /// (and `eof` is false) the guest waits for input as if the caller had sent nothing more.
    pub replay_input: Option<ReadLog>,
    /// Deterministic mode (seeded randomness, virtual clocks, fuel): see [`crate::determinism`].
    pub deterministic: Option<Seed>,
    /// Runs share compiled programs (`crate::compile_cache`) only within one scope: the server
    /// uses the user (or the connection, for anonymous ones; anonymous one-shot requests use no
    /// cache). Default: the empty scope.
    pub compile_scope: CompileScope,
    /// Ceilings on the limits the run gets, applied last (after deterministic mode's defaults):
    /// the server sets its configured maximum. `None`: no ceiling.
    pub max_limits: Option<Limits>,
    /// The runtime to run in, by name or alias ([`crate::Sandbox::runtimes`]); `None`: the
    /// sandbox's default.
    pub runtime: Option<String>,
    /// Start as this snapshot's session ([`crate::RunControl::snapshot`]), where it was: the
    /// run is a session in the snapshot's runtime, with its files, environment and arguments
    /// (`program`, `files`, `env` and `args` are not used; `runtime`, when set, must name the
    /// snapshot's). Refused for another runtime or runtime build, a deterministic run, or a
    /// memory limit below the snapshot's memory.
    pub restore: Option<std::sync::Arc<crate::snapshot::Snapshot>>,
    /// Host functions the program may call (`from weir import tools`), and its network access
    /// ([`crate::Tools::with_network`]); none by default. A recorded run keeps every call and
    /// its answer for its transcript.
    pub tools: Option<crate::tools::Tools>,
}

impl RunRequest {
    /// A script named `main.py` with default limits.
    pub fn script(source: impl Into<Vec<u8>>) -> Self {
        RunRequest {
            program: Program::Script {
                filename: "main.py".into(),
                source: source.into(),
            },
            files: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            repl: false,
            cells: false,
            return_files: Vec::new(),
            stdin: None,
            close_stdin: false,
            mounts: Vec::new(),
            packages: None,
            record_input: false,
            replay_input: None,
            deterministic: None,
            compile_scope: CompileScope::default(),
            max_limits: None,
            runtime: None,
            restore: None,
            tools: None,
        }
    }

    /// The limits the run actually gets (deterministic runs are always metered by fuel).
    pub fn effective_limits(&self) -> Limits {
        let limits = match self.deterministic {
            Some(seed) => seed.limits(self.limits),
            None => self.limits,
        };
        match &self.max_limits {
            Some(max) => limits.capped_by(max),
            None => limits,
        }
    }
}

/// Splits an environment entry `KEY=VALUE` at its first `=`.
pub fn split_env(entry: &str) -> Option<(String, String)> {
    entry
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
}
