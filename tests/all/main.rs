//! weir's integration tests, in one binary (as wasmtime keeps its own in `tests/all`): the
//! product links once instead of once per file. Each module is one area, as a user meets it.
//! Tests that measure or load the whole process stay binaries of their own: `tests/soak.rs`,
//! `tests/cluster.rs` and `tests/host_resources.rs`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/node.rs"]
mod node;
#[path = "../common/wheel.rs"]
mod wheel;
#[path = "../common/ws.rs"]
mod ws;

mod cli;
mod display;
mod hardening;
mod history;
mod ide;
mod interrupt;
mod javascript;
mod judge0;
mod jupyter;
mod layers;
mod mcp;
mod network;
mod piston;
mod replay;
mod ruby;
mod runtimes;
mod sandbox;
mod sci;
mod server;
mod sessions;
mod snapshots;
mod tools;
