//! weir: run untrusted Python scripts in a CPython WASI guest under wasmtime.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use weir::{EngineSettings, RunRequest, Sandbox};
//! let sandbox = Sandbox::load_async(EngineSettings::default()).await?;
//! let run = sandbox.start(RunRequest::script("print('hello')")).await?;
//! let out = run.collect().await;
//! assert_eq!(out.stdout_text(), "hello\n");
//! # Ok(()) }
//! ```
//!
//! Modules, one concept each: [`engine`] (wasmtime policy), [`guest`] (the embedded component and
//! its compile cache), [`host`] (weir's guest interface), [`sandbox`] (stores and isolation),
//! [`run`] (a run's driver, events and control), [`priority`] (foreground and background runs),
//! [`background`] (the lower-priority lane background runs continue on), [`pipes`] (bounded
//! stdio), [`limits`],
//! [`outcome`], [`scratch`] (per-run directory), [`cli`] (`weir run`), [`bench`] (`weir bench`);
//! the service: [`server`] (`weir serve`, routes), [`session`] (one WebSocket session),
//! [`protocol`] (JSON-RPC messages), [`auth`] (tokens), [`metrics`], [`config`].

pub mod admission;
pub mod api;
pub mod auth;
pub mod background;
pub mod bench;
pub mod bench_native;
pub mod cli;
pub mod compile_cache;
pub mod config;
pub mod determinism;
pub mod engine;
pub mod guest;
pub mod history;
pub mod host;
pub mod ide;
pub mod limits;
pub mod metrics;
pub mod oneshot;
pub mod outcome;
pub mod pipes;
pub mod piston;
pub mod piston_connect;
pub mod priority;
pub mod protocol;
pub mod replay;
pub mod run;
pub mod sandbox;
pub mod scratch;
pub mod server;
pub mod session;
pub mod transcript;
pub mod warm;

#[cfg(test)]
mod snapshot_tests;

pub use engine::EngineSettings;
pub use limits::Limits;
pub use outcome::Outcome;
pub use run::{Collected, Event, RunControl, RunHandle, RunId, RunResult, RunState, StreamKind};
pub use sandbox::{InstanceStarts, Mount, Program, RunRequest, Sandbox, StartError};
