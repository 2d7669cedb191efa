//! weir-service: weir's network service on top of `weir-sandbox` — the browser IDE, JSON-RPC
//! sessions over `/ws`, one-shot `POST /v1/runs`, Piston's API, run history, metrics and
//! readiness.
//!
//! Layers, bottom up (each module depends only on those before it): [`cluster`] (a node's
//! identity and its PostgreSQL settings), [`config`], [`auth`], [`history`] (run history in
//! SQLite, or PostgreSQL in cluster mode), [`registry`] (one session per user, across nodes in
//! cluster mode), [`metrics`], [`protocol`] (JSON-RPC messages),
//! [`kernel`] (stateful sessions: a run in cell mode), [`state`] (what every handler shares), [`admission`] (who may start what), [`socket`]
//! (WebSocket plumbing), [`oneshot`] (a run start to finish for an HTTP request), [`session`] (one
//! `/ws` session), [`api`] (`/v1/runs`), [`notebook`] (`/v1/sessions`), [`piston`] (Piston's API), [`ide`] (the browser IDE),
//! [`mcp`] (the MCP server), [`server`] (routes, connections, shutdown), and [`packages`] (the
//! operator's pure-Python packages, `weir packages`).

#![deny(unsafe_code)]

pub mod admission;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod history;
pub mod ide;
pub mod kernel;
pub mod mcp;
pub mod metrics;
pub mod notebook;
pub mod oneshot;
pub mod packages;
pub mod piston;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;
pub mod socket;
pub mod state;

pub use config::ServerConfig;
pub use server::{serve, start, start_with, RunningServer};
