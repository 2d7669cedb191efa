//! weir-service: weir's network service on top of `weir-sandbox` — the browser IDE, JSON-RPC
//! sessions over `/ws`, one-shot `POST /v1/runs`, Piston's API, run history, metrics and
//! readiness.
//!
//! Layers, bottom up (each depends only on those below it):
//! - stores and values: [`error`] (the one [`Error`] every route and store fails with),
//!   [`cluster`] (a node's identity and its PostgreSQL settings), [`auth`] (tokens), [`history`]
//!   (run history in SQLite, or PostgreSQL in cluster mode), [`registry`] (slots and `/ws`
//!   logins, across nodes in cluster mode), [`metrics`], [`packages`] (the operator's
//!   pure-Python packages, `weir packages`), [`protocol`] (weir's wire types), [`callbacks`]
//!   (signed HTTP callbacks that answer a one-shot run's declared functions);
//! - a run's record: [`tracked`] (a started run and the one place its life is written down),
//!   [`sessions`] (stateful sessions: tracked runs in cell mode, and their registry);
//! - configuration and shared state: [`config`], [`state`] (what every handler shares);
//! - the run lifecycle: [`lifecycle`] (admission, request bodies, the tracked run, shutdown,
//!   one-shot runs, stateful sessions, the WebSocket pump, errors' HTTP answers);
//! - the front ends, side by side, none importing another: [`ws`] (`/ws`), [`api`] (`/v1/runs`
//!   and the run history), [`notebook`] (`/v1/sessions`), [`piston`] (Piston's API), [`mcp`]
//!   (the MCP server), [`ide`] (the browser IDE's page);
//! - [`server`]: the router over every front end, connections, shutdown.

#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod callbacks;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod error;
pub mod history;
pub mod ide;
pub mod judge0;
pub mod lifecycle;
pub mod mcp;
pub mod metrics;
pub mod notebook;
pub mod packages;
pub mod pg_snapshots;
pub mod piston;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod sessions;
pub mod snapshots;
pub mod state;
pub mod tracked;
pub mod ws;

pub use config::ServerConfig;
pub use error::Error;
pub use server::{serve, start, start_with, RunningServer};
