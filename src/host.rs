//! weir's own host interface for the guest (`weir:sandbox/host`, see
//! `guests/python/wit/world.wit`): how to launch the program, and what became of it.

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
    pub repl: bool,
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
}

pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    let mut inst = linker
        .instance(INTERFACE)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "launch-config",
        |store: StoreContextMut<'_, GuestState>, (): ()| Ok((store.data().host.launch.clone(),)),
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
