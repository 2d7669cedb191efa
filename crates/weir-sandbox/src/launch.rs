//! How a run's program is handed to its guest ([`Launch`]) and what the guest reports back
//! ([`HostState`]): the data a runtime's host interface reads and fills.

use crate::compile_cache::CacheSlot;
use crate::event::CellEnd;
use crate::pipes::{GuestStdin, OutputQueue};
use crate::snapshot::Snapshot;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{ComponentType, Lower};

/// How the guest should launch the user's program (the WIT `launch` record).
#[derive(Debug, Clone, ComponentType, Lower)]
#[component(record)]
pub struct Launch {
    /// The script's file name in the working directory (empty for `-c` code).
    pub script: String,
    /// Source run as `python -c CODE`, instead of a script.
    pub code: Option<String>,
    /// The script's bytes as written to its file; `None` makes the guest read the file.
    pub source: Option<Vec<u8>>,
    /// The program as an earlier run compiled it (`crate::compile_cache`).
    pub compiled: Option<Vec<u8>>,
    #[component(name = "cache-compiled")]
    /// The guest should hand its compiled program back (`GuestState::offer_compiled`).
    pub cache_compiled: bool,
    /// Start an interactive console after the program.
    pub repl: bool,
    /// Run a session's cells after the program (never with `repl`).
    pub cells: bool,
    /// `sys.argv`, the environment and the working directory (as the WASI context has them).
    pub args: Vec<String>,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: String,
    /// Directories searched for imports after the working directory.
    pub path: Vec<String>,
}

impl Launch {
    /// A launch that reads nothing from a cache and offers nothing to one.
    pub fn plain(script: String, code: Option<String>, repl: bool) -> Self {
        Launch {
            script,
            code,
            source: None,
            compiled: None,
            cache_compiled: false,
            repl,
            cells: false,
            args: Vec::new(),
            env: Vec::new(),
            cwd: String::new(),
            path: Vec::new(),
        }
    }
}

/// An exception the user's program did not catch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncaught {
    /// The exception's type, e.g. `ValueError`.
    pub type_name: String,
    /// Its message.
    pub message: String,
}

/// The host side of the interface, one per run.
#[derive(Debug)]
pub struct HostState {
    /// What the guest is to run.
    pub launch: Launch,
    /// The exception the program did not catch, if any.
    pub uncaught: Option<Uncaught>,
    /// Where the guest's compiled program goes, if this run may fill the cache (once).
    pub cache_slot: CacheSlot,
    /// The guest has said its REPL started.
    pub repl_started: bool,
    /// A session's cells, as they come (cell mode only).
    pub cells: Option<CellInbox>,
    /// Where images the program shows go (behind its output); `None` before a run owns the
    /// state.
    pub output: Option<DisplayOutput>,
    /// Where the session's current cell is (cell mode only).
    pub cell: CellPhase,
    /// The host functions the run may call, if any (`crate::tools`).
    pub(crate) tools: Option<std::sync::Arc<crate::tools::ToolBox>>,
    /// The most bytes the run's working directory may hold (`Limits::scratch_bytes`): what a
    /// host call writing a file for the guest keeps it within.
    pub scratch_bytes: u64,
}

/// Where a session's current cell is, as the host sees it. A cell ends only when the host's call
/// into the guest that runs it returns (`store::end_cell`): `cell-done` records how it ended (the
/// last report counts: the runner's, made after the cell's code), so code inside a cell that
/// calls the interface itself can neither end its cell early nor leave it running unwatched.
#[derive(Debug, Default)]
pub enum CellPhase {
    /// No cell has been handed out, or the last one has ended.
    #[default]
    Idle,
    /// A cell was handed to the guest, and the host's call that runs it has not returned.
    Running {
        /// The cell's source.
        code: String,
        /// How it ended, once reported.
        end: Option<CellEnd>,
    },
}

/// One cell of a session: code run in the session's namespace, and its stdin.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// The cell's source.
    pub code: String,
    /// What the cell reads from stdin first.
    pub stdin: Bytes,
    /// After `stdin`, the cell's reads wait for more (`RunControl::write_stdin`) until
    /// `RunControl::end_input` or the cell's end, instead of reading end of file at once.
    pub interactive: bool,
}

/// The run's output queue, where images go.
#[derive(Clone)]
pub struct DisplayOutput(pub Arc<OutputQueue>);

impl std::fmt::Debug for DisplayOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DisplayOutput")
    }
}

/// What a session's caller asks of it between cells.
pub enum SessionRequest {
    /// Run this cell.
    Cell(Cell),
    /// Snapshot the session (`crate::snapshot`), answered here.
    Snapshot(Capture, oneshot::Sender<crate::error::Result<Snapshot>>),
}

/// What a snapshot of a session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Its whole state; its saves are not affected.
    Snapshot,
    /// What changed since its last save (everything, at the first), then the last save.
    Changes,
    /// Its whole state, then the last save.
    WholeSave,
    /// Its whole state with its pages in a page file that it and the sessions started from
    /// the snapshot map copy-on-write (`crate::pagefile`); its saves are not affected.
    Fork,
}

/// Where a session's guest takes its cells from, and what a cell's start resets.
pub struct CellInbox {
    /// Cells and snapshot requests from the caller; closed: the session ends.
    pub requests: mpsc::Receiver<SessionRequest>,
    /// The state the session starts from instead of its program's (a restored snapshot);
    /// taken when it starts.
    pub restore: Option<Arc<Snapshot>>,
    /// What its last save held (`crate::snapshot::Saved`).
    pub saved: crate::snapshot::Saved,
    /// What its memories map from fork page files (`crate::pagefile`).
    pub mapped: crate::pagefile::Mapped,
    /// Its last fork's snapshot (without files), with its count of guest calls then.
    pub last_fork: Option<(u64, Snapshot)>,
    /// Calls into its guest so far (cells, and snapshot work that runs guest code): a fork
    /// taken when none has run since the last one shares that one's pages.
    pub calls: u64,
    /// A deterministic run's random sources (its virtual clock is the store's): host state its
    /// snapshots keep.
    pub random: Option<crate::determinism::SeededRandom>,
    /// The runtime's name and build, kept in its snapshots.
    pub runtime: String,
    /// The runtime's build.
    pub build: String,
    /// The environment and arguments the session started with, kept in its snapshots.
    pub env: Vec<(String, String)>,
    /// `sys.argv[1:]`.
    pub args: Vec<String>,
    /// The run's stdin, given each cell's own.
    pub stdin: GuestStdin,
    /// The run's output, whose cap each cell gets afresh and which carries each cell's end.
    pub output: Arc<OutputQueue>,
    /// The fuel each cell gets afresh (`Limits::cpu_fuel` is per cell in a session), on a
    /// metered engine.
    pub fuel: Option<u64>,
    /// What a guest whose calls cannot return values (python-sci's turns return a status)
    /// reports about its session through the host instead.
    pub reports: SessionReports,
    /// The directories the run's WASI context opens for the guest (its mounts, working
    /// directory and site): open descriptors beyond them are the session's own
    /// (`GuestState::open_descriptors`).
    pub preopens: usize,
}

/// What a session's guest reports through the host between the host's calls into it
/// (python-sci's runner, through its door), each read by the host once the call has returned.
#[derive(Debug, Default)]
pub struct SessionReports {
    /// The cell that just ran ended the session (`sys.exit`) with this status: the last
    /// report of the cell counts, as for its end.
    pub exit: Option<i32>,
}

impl std::fmt::Debug for CellInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellInbox").finish_non_exhaustive()
    }
}

impl HostState {
    /// A run's host state before the guest has said anything.
    pub fn new(launch: Launch, cache_slot: CacheSlot) -> Self {
        HostState {
            launch,
            uncaught: None,
            cache_slot,
            repl_started: false,
            cells: None,
            output: None,
            cell: CellPhase::Idle,
            tools: None,
            scratch_bytes: 0,
        }
    }
}

/// What `launch-config` answers. The guest asks once; the bytes move rather than copy (asked
/// again, it gets the rest, and reads and compiles the file itself).
pub(crate) fn take_launch(launch: &mut Launch) -> Launch {
    Launch {
        script: launch.script.clone(),
        code: launch.code.clone(),
        source: launch.source.take(),
        compiled: launch.compiled.take(),
        cache_compiled: launch.cache_compiled,
        repl: launch.repl,
        cells: launch.cells,
        args: std::mem::take(&mut launch.args),
        env: std::mem::take(&mut launch.env),
        cwd: launch.cwd.clone(),
        path: std::mem::take(&mut launch.path),
    }
}
