//! `python`: CPython 3.14 for WASI, built from `guests/python/` with componentize-py
//! (`weir-guest-build`), pre-imported, snapshotted and embedded in the crate. A WASI command
//! component; the program arrives through weir's own interface (`host`).
//!
//! Compiling it to machine code takes 10–20 s, so the result is cached in a file keyed by the
//! guest's sha256, the wasmtime version and the engine's compile settings ([`super::artifact`]).

pub mod host;
mod session;

use crate::interrupt::InterruptAddrs;
use crate::launch::Uncaught;
use crate::outcome::Outcome;
use crate::runtime::artifact;
use crate::runtime::plugin::{CallResult, Footprint, Loaded, Policy, Runtime, RuntimeInfo};
use crate::store::GuestState;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};

/// The guest component's bytes.
pub static GUEST_WASM: &[u8] = include_bytes!(env!("WEIR_GUEST_WASM"));

/// sha256 of [`GUEST_WASM`]: these exact bytes (the precompile cache is keyed by it).
pub const GUEST_SHA256: &str = env!("WEIR_GUEST_SHA256");

/// The guest build's identity: a hash of its sources, the build recipe and the componentize-py
/// version. Builds are deterministic (see `weir-guest-build`), so two builds with the same
/// identity run every script the same way; transcripts name it.
pub const GUEST_BUILD: &str = env!("WEIR_GUEST_BUILD");

/// Where an interrupt is written in the guest's memory (`guests/build/src/interrupt.rs`), as
/// the build found it: three decimal addresses.
const GUEST_INTERRUPT: &str = env!("WEIR_GUEST_INTERRUPT");

/// The guest's [`InterruptAddrs`], if the build recorded a well-formed one.
fn interrupt_site() -> Option<InterruptAddrs> {
    InterruptAddrs::parse(GUEST_INTERRUPT)
}

/// The Python version inside the guest.
pub const PYTHON_VERSION: &str = "3.14.0";

/// The runtime's name.
pub const NAME: &str = "python";

/// Core instances, memories and tables one CPython component instance needs (with headroom).
const FOOTPRINT: Footprint = Footprint {
    core_instances: 16,
    memories: 4,
    tables: 8,
    gc_heaps: 0,
    max_memory_bytes: crate::limits::MAX_MEMORY_BYTES,
};

/// CPython's message when an object size does not fit in `Py_ssize_t`.
const SIZE_OVERFLOW: &str = "cannot fit 'int' into an index-sized integer";

/// The embedded CPython component.
#[derive(Debug, Default, Clone, Copy)]
pub struct CPython;

/// What the embedded CPython is.
pub fn info() -> &'static RuntimeInfo {
    static INFO: OnceLock<RuntimeInfo> = OnceLock::new();
    INFO.get_or_init(|| RuntimeInfo {
        name: NAME.into(),
        language: "python".into(),
        version: PYTHON_VERSION.into(),
        aliases: vec!["py".into(), "python3".into()],
        extensions: vec!["py".into()],
        build: GUEST_BUILD.into(),
        sha256: GUEST_SHA256.into(),
    })
}

impl Runtime for CPython {
    fn info(&self) -> &RuntimeInfo {
        info()
    }

    /// The embedder's default limits; matplotlib figures are shown.
    fn policy(&self) -> Policy {
        Policy {
            memory_bytes: None,
            display: true,
        }
    }

    fn footprint(&self) -> Footprint {
        FOOTPRINT
    }

    fn load(&self, engine: &Engine, cache_dir: &Path) -> anyhow::Result<Arc<dyn Loaded>> {
        let component = load_component(engine, cache_dir)?;
        let mut linker: Linker<GuestState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        crate::determinism::add_to_linker(&mut linker)?;
        host::add_to_linker(&mut linker)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("the guest does not link: {e:#}"))?;
        let pre = CommandPre::new(pre)
            .map_err(|e| anyhow::anyhow!("the guest is not a WASI command: {e:#}"))?;
        Ok(Arc::new(Linked { pre }))
    }

    fn exited(&self, code: i32, uncaught: Option<&Uncaught>, memory_hit: bool) -> Outcome {
        match uncaught {
            Some(u) if code == 1 && u.type_name == "MemoryError" && memory_hit => {
                Outcome::MemoryLimit
            }
            // wasm32 CPython: a size past the 32-bit address space (`bytearray(10**10)`) cannot
            // even be expressed; a 64-bit CPython would have failed the allocation instead.
            Some(u)
                if code == 1 && u.type_name == "OverflowError" && u.message == SIZE_OVERFLOW =>
            {
                Outcome::MemoryLimit
            }
            Some(u) if code == 1 => Outcome::Error {
                exception: u.type_name.clone(),
                message: u.message.clone(),
            },
            _ => Outcome::Exited { code },
        }
    }
}

/// The component pre-instantiated on one engine.
struct Linked {
    pre: CommandPre<GuestState>,
}

impl Loaded for Linked {
    fn call<'a>(
        &'a self,
        store: &'a mut Store<GuestState>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let instance = self
                .pre
                .instance_pre()
                .instantiate_async(&mut *store)
                .await?;
            if let (Some(site), Some((base, len))) =
                (interrupt_site(), instance.weir_memory_base(&*store))
            {
                // SAFETY: the instance's memory, in a pooled slot that does not move, detached
                // by `GuestState` before the instance goes; written only on this store's thread
                // while the guest waits (epoch callback, stdin and sleep).
                #[allow(unsafe_code)]
                unsafe {
                    store.data().interrupter().attach(base, len, site)
                };
            }
            let command = Command::new(&mut *store, &instance)?;
            let ran = command.wasi_cli_run().call_run(&mut *store).await;
            let Some(restore) = store.data_mut().session_start() else {
                return ran;
            };
            // A session: its program has run (a restored one's is empty); its cells follow.
            if ran.is_err() || ran.as_ref().is_ok_and(|r| r.is_err()) {
                return ran;
            }
            let exports = session::Exports::new(store, &instance)?;
            if let Some((base, _)) = instance.weir_memory_base(&*store) {
                let limit = store.data().limiter.limit();
                // SAFETY: the instance's one memory, in a pooled slot reserving at least the
                // run's memory limit (the most it can grow to), never shared.
                #[allow(unsafe_code)]
                unsafe {
                    store.data_mut().release_on_drop(base, limit)
                };
            }
            if let Some(from) = restore {
                session::restore(store, &instance, &from).map_err(wasmtime::Error::new)?;
            }
            let session = session::Session {
                instance: &instance,
                exports,
            };
            crate::runtime::state::serve(store, &session).await
        })
    }
}

/// Loads the guest for `engine`, compiling and caching it the first time.
#[allow(unsafe_code)]
pub fn load_component(engine: &Engine, cache_dir: &Path) -> anyhow::Result<Component> {
    let path = artifact::cache_path(engine, cache_dir, NAME, GUEST_SHA256);
    artifact::load_or_compile(
        &path,
        "the Python guest (10-20 s)",
        || {
            engine
                .precompile_component(GUEST_WASM)
                .map_err(|e| anyhow::anyhow!("cannot compile the guest: {e:#}"))
        },
        // SAFETY: the file was written by this same wasmtime version with matching settings
        // (the file name encodes both); wasmtime checks its header too.
        |path| {
            artifact::cached(path, "guest", |p| unsafe {
                Component::deserialize_file(engine, p)
            })
        },
    )
}
