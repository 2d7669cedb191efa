//! Runtimes: the guest kinds weir hosts, behind one trait.
//!
//! A runtime is a language interpreter compiled to WebAssembly. It says what it is
//! ([`RuntimeInfo`]: name, language, version, aliases, which build), how much of the pooling
//! allocator one instance needs ([`Footprint`]), how its artifact is obtained and compiled for an
//! engine, and how its guest is linked and entered ([`Runtime::load`] → [`Loaded::call`]), and
//! how a guest's exit reads as an [`Outcome`] ([`Runtime::exited`]). Everything else — engines,
//! stores, limits, pipes, scratch directories, warm instances, priorities, determinism, the run
//! driver — is the sandbox's and the same for every runtime; the service above names a runtime
//! and nothing more.
//!
//! The program reaches the guest as a [`Launch`](crate::launch::Launch) in the store's data
//! ([`store::launch`](crate::store::launch)); what the guest reports back goes through
//! [`GuestState`]'s methods.
//!
//! [`python::CPython`] (CPython 3.14 built with componentize-py and embedded) is the first
//! implementation.

pub mod artifact;
mod clock;
pub mod js;
mod plugin;
pub mod python;
pub mod rb;
pub mod sci;
mod state;

pub use artifact::PROGRESS_TARGET;
pub use plugin::{
    CallResult, Footprint, GuestCall, GuestSetup, Loaded, Policy, Runtime, RuntimeInfo,
};
