//! weir-sandbox: run untrusted programs in WebAssembly interpreter guests under wasmtime, in
//! process, with no network service attached.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use weir_sandbox::{EngineSettings, RunRequest, Sandbox};
//! let sandbox = Sandbox::load_async(EngineSettings::default()).await?;
//! let run = sandbox.start(RunRequest::script("print('hello')")).await?;
//! let out = run.collect().await;
//! assert_eq!(out.stdout_text(), "hello\n");
//! # Ok(()) }
//! ```
//!
//! The API is the crate root: [`Sandbox`] (load runtimes, start runs), [`RunRequest`] and
//! [`Limits`] (what a run is asked to do), [`RunHandle`] and [`RunControl`] (its events and its
//! control: stdin, stop, pause, interrupt, cells, files), [`Event`] and [`RunResult`] (what it
//! reports), [`Transcript`] and [`replay_file`] (records that replay byte for byte),
//! [`Error`] (what any of them fails with), and [`runtime`], the plug-in point a new guest kind
//! implements ([`Runtime`]).
//!
//! Inside, modules are private and layered bottom up (each depends only on those before it):
//! values (`error`, `limits`, `outcome`, `event`, `task`, `interrupt`), scheduling (`priority`,
//! `background`), a run's parts (`pipes`, `determinism`, `compile_cache`, `request`, `scratch`,
//! `files`, `launch`, `store`), guests (`runtime`), wasmtime (`engine`, `warm`, `variant`), runs
//! (`run`, `sandbox`), records (`transcript`, `replay`); session state (`pagefile`, `snapshot`)
//! below the runtimes that take and restore it.

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod background;
mod compile_cache;
mod determinism;
mod display;
mod engine;
mod error;
mod event;
mod files;
mod interrupt;
mod launch;
mod limits;
mod outcome;
mod pagefile;
mod pipes;
mod priority;
mod replay;
mod request;
mod run;
pub mod runtime;
mod sandbox;
mod scratch;
mod snapshot;
mod store;
mod task;
mod tools;
mod transcript;
mod variant;
mod warm;

/// The wasmtime weir is built on (pinned): a [`Runtime`] implementation links against these types.
pub use wasmtime;

pub use background::LanePriority;
pub use compile_cache::{CacheStats, CompileScope};
pub use determinism::{Seed, FUEL_PER_NS};
pub use display::{is_json, MAX_BUNDLE_BYTES};
pub use engine::EngineSettings;
pub use error::{Error, Result};
pub use event::{
    Bundle, CellEnd, CellException, Collected, Display, Event, ReadLog, RunId, RunResult, RunState,
    StreamKind,
};
pub use files::{FileEntry, Returned, ReturnedFile};
pub use launch::{Cell, Uncaught};
pub use limits::{human_bytes, parse_bytes, parse_duration, Limits, MemoryBudget};
pub use outcome::Outcome;
pub use replay::{compare, replay, replay_file, Verdict};
pub use request::{split_env, Mount, Program, RunRequest};
pub use run::{RunControl, RunHandle};
pub use runtime::{Policy, Runtime, RuntimeInfo};
pub use sandbox::{InstanceStarts, RuntimeStatus, Sandbox, SITE_DIR};
pub use scratch::LiveDir;
pub use snapshot::{Snapshot, MAX_SNAPSHOT_BYTES};
pub use store::GuestState;
pub use task::{sleep_until_opt, AbortOnDrop};
pub use tools::{
    Call, CallRecord, CallsMade, NetworkBounds, Tool, ToolFuture, ToolLimits, ToolResult, Tools,
    MAX_NAME_BYTES, MAX_SCHEMA_BYTES, MAX_TOOLS, NETWORK_FUNCTION,
};
pub use transcript::{
    json_escaped_len, CallDoc, CallsDoc, Data, DisplayDoc, Expected, OutputDoc, OutputLog,
    ProgramDoc, Transcript,
};
