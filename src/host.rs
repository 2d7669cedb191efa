//! weir's own host interface for the guest (`weir:sandbox/host`, see
//! `guests/python/wit/world.wit`): how to launch the program, and what became of it.

use crate::compile_cache::CachePut;
use crate::sandbox::GuestState;
use wasmtime::component::{ComponentType, Linker, Lower};
use wasmtime::StoreContextMut;

const INTERFACE: &str = "weir:sandbox/host@0.1.0";

/// How the guest should launch the user's program (the WIT `launch` record).
#[derive(Debug, Clone, ComponentType, Lower)]
#[component(record)]
pub struct Launch {
    pub script: String,
    pub code: Option<String>,
    /// The script's bytes as written to its file; `None` makes the guest read the file.
    pub source: Option<Vec<u8>>,
    /// The program as an earlier run compiled it (`crate::compile_cache`).
    pub compiled: Option<Vec<u8>>,
    #[component(name = "cache-compiled")]
    pub cache_compiled: bool,
    pub repl: bool,
    /// `sys.argv`, the environment and the working directory (as the WASI context has them).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
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
            args: Vec::new(),
            env: Vec::new(),
            cwd: String::new(),
        }
    }
}

/// An exception the user's program did not catch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncaught {
    pub type_name: String,
    pub message: String,
}

/// The host side of the interface, one per run.
#[derive(Debug)]
pub struct HostState {
    pub launch: Launch,
    pub uncaught: Option<Uncaught>,
    /// Where the guest's compiled program goes, if this run may fill the cache.
    pub cache_put: Option<CachePut>,
}

impl HostState {
    pub fn new(launch: Launch, cache_put: Option<CachePut>) -> Self {
        HostState {
            launch,
            uncaught: None,
            cache_put,
        }
    }
}

/// What `launch-config` answers. The guest asks once; the bytes move rather than copy (asked
/// again, it gets the rest, and reads and compiles the file itself).
fn take_launch(launch: &mut Launch) -> Launch {
    Launch {
        script: launch.script.clone(),
        code: launch.code.clone(),
        source: launch.source.take(),
        compiled: launch.compiled.take(),
        cache_compiled: launch.cache_compiled,
        repl: launch.repl,
        args: std::mem::take(&mut launch.args),
        env: std::mem::take(&mut launch.env),
        cwd: launch.cwd.clone(),
    }
}

pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    let mut inst = linker
        .instance(INTERFACE)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap_async(
        "launch-config",
        |mut store: StoreContextMut<'_, GuestState>, (): ()| {
            Box::new(async move {
                // A warm guest is entered ahead of demand and waits here for its run.
                if let Some(assignment) = store.data_mut().assignment.take() {
                    let run = assignment.wait().await?;
                    store.data_mut().take_over(run);
                    store.set_epoch_deadline(1);
                }
                Ok((take_launch(&mut store.data_mut().host.launch),))
            })
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "program-compiled",
        |mut store: StoreContextMut<'_, GuestState>, (code,): (Vec<u8>,)| {
            if let Some(put) = store.data_mut().host.cache_put.take() {
                put.put(code);
            }
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "uncaught-exception",
        |mut store: StoreContextMut<'_, GuestState>, (type_name, message): (String, String)| {
            store.data_mut().host.uncaught = Some(Uncaught { type_name, message });
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "repl-started",
        |store: StoreContextMut<'_, GuestState>, (): ()| {
            store.data().status.send_modify(|s| s.in_repl = true);
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}
