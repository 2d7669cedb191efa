//! weir's own host interface for the guest (`weir:sandbox/host`, see
//! `guests/python/wit/world.wit`): how to launch the program, and what became of it.

use crate::compile_cache::{CacheSlot, MAX_ENTRY_BYTES};
use crate::sandbox::GuestState;
use wasmtime::component::{ComponentType, Linker, Lower, WasmList, WasmStr};
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
    /// Where the guest's compiled program goes, if this run may fill the cache (once).
    pub cache_slot: CacheSlot,
    /// The guest has said its REPL started.
    pub repl_started: bool,
}

impl HostState {
    pub fn new(launch: Launch, cache_slot: CacheSlot) -> Self {
        HostState {
            launch,
            uncaught: None,
            cache_slot,
            repl_started: false,
        }
    }
}

/// Longest exception type name kept from the guest, bytes.
pub const MAX_TYPE_NAME_BYTES: usize = 256;
/// Longest exception message kept from the guest, bytes (the runner sends at most 1,000
/// characters; user code calling the interface directly is cut here).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// A guest string, cut at `max` bytes (on a character boundary): what the guest hands the host
/// ends up in responses and the run history, so its size is the host's to decide.
fn bounded(store: &StoreContextMut<'_, GuestState>, text: &WasmStr, max: usize) -> String {
    let text = text.to_str(store).unwrap_or_default();
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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
        |mut store: StoreContextMut<'_, GuestState>, (code,): (WasmList<u8>,)| {
            // Read only when it could be kept: the guest names the length, up to its memory.
            let code = match code.len() <= MAX_ENTRY_BYTES {
                true => code.as_le_slice(&store).to_vec(),
                false => Vec::new(),
            };
            store.data_mut().host.cache_slot.offer(code);
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "uncaught-exception",
        |mut store: StoreContextMut<'_, GuestState>, (type_name, message): (WasmStr, WasmStr)| {
            let type_name = bounded(&store, &type_name, MAX_TYPE_NAME_BYTES);
            let message = bounded(&store, &message, MAX_MESSAGE_BYTES);
            store.data_mut().host.uncaught = Some(Uncaught { type_name, message });
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "repl-started",
        |mut store: StoreContextMut<'_, GuestState>, (): ()| {
            // Only a run that asked for a REPL has one, and it starts once: a script calling
            // this itself gains nothing (each REPL statement's fresh wall-time limit included).
            let host = &mut store.data_mut().host;
            if host.launch.repl && !std::mem::replace(&mut host.repl_started, true) {
                store.data().status.send_modify(|s| s.in_repl = true);
            }
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}
