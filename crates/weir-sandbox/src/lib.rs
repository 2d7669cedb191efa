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
//! Layers, bottom up (each module depends only on those before it):
//! - values: [`limits`], [`outcome`], [`event`] (what a run reports), [`task`], [`interrupt`]
//!   (raising `KeyboardInterrupt` in running code);
//! - scheduling: [`priority`] (foreground and background runs), [`background`] (the lane
//!   background runs continue on);
//! - a run's parts: [`pipes`] (bounded stdio), [`determinism`] (seeded randomness, virtual
//!   clocks), [`compile_cache`], [`request`] (what a run is asked to do), [`scratch`] (its
//!   directory), [`files`] (files in and out of it while it lives), [`launch`] (how the program reaches the guest), [`store`] (a store's data);
//! - guests: [`runtime`] (the plug-in point: a guest kind; [`runtime::python`] is CPython);
//! - wasmtime: [`engine`] (all engine policy), [`warm`] (instances ready ahead of demand),
//!   `variant` (one runtime on one engine);
//! - runs: [`run`] (the driver, its events and control), [`sandbox`] (admission of a run, its
//!   store and isolation);
//! - records: [`transcript`] and [`replay`].

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod background;
pub mod compile_cache;
pub mod determinism;
pub mod engine;
pub mod event;
pub mod files;
pub mod interrupt;
pub mod launch;
pub mod limits;
pub mod outcome;
pub mod pipes;
pub mod priority;
pub mod replay;
pub mod request;
pub mod run;
pub mod runtime;
pub mod sandbox;
pub mod scratch;
pub mod store;
pub mod task;
pub mod transcript;
mod variant;
pub mod warm;

/// The wasmtime weir is built on (pinned): a [`Runtime`] implementation links against these types.
pub use wasmtime;

pub use engine::EngineSettings;
pub use event::{
    CellEnd, CellException, Collected, Event, ReadLog, RunId, RunResult, RunState, StreamKind,
};
pub use launch::Cell;
pub use limits::Limits;
pub use outcome::Outcome;
pub use request::{Mount, Program, RunRequest};
pub use run::{CellError, RunControl, RunHandle};
pub use runtime::{Policy, Runtime, RuntimeInfo};
pub use sandbox::{InstanceStarts, RuntimeStatus, Sandbox, StartError};
