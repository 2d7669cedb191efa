//! A run's life, the same for every entry point: [`admission`] lets a caller in (and reads its
//! request's [`body`]), a [`TrackedRun`] (`crate::tracked`, below the shared state) starts the
//! run and alone records it (history, metrics, transcript), and [`shutdown`] tells it when to
//! stop; [`oneshot`] runs one to its end,
//! [`session`] keeps one across cells, and [`pump`] carries one over a WebSocket. [`error`] is
//! how a request's failure (`crate::Error`) answers. The front ends (`/ws`, `/v1/runs`, `/v1/sessions`, Piston, MCP)
//! stand on this module and map their protocols; none imports another.

pub mod admission;
pub mod body;
pub mod error;
pub mod oneshot;
pub mod pump;
pub mod session;
pub mod shutdown;

pub use crate::tracked::{EndedBy, Reach, Recorded, TrackedRun};
