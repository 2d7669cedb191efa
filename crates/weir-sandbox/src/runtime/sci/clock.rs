//! The guest's clocks in WASI preview 1 (`clock_time_get`), over wasmtime-wasi's: a
//! deterministic run reads the virtual clock (`crate::determinism`), any other the host's.

use crate::determinism::{self, MONOTONIC_START_NS, WALL_START_SECS};
use crate::store::GuestState;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{AsContextMut, Caller, Extern, Linker};

const REALTIME: i32 = 0;
const MONOTONIC: i32 = 1;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Installs `clock_time_get` over wasmtime-wasi's (call after it is linked).
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "clock_time_get",
            |mut caller: Caller<'_, GuestState>, id: i32, _precision: i64, out: i32| -> i32 {
                let Some(ns) = now(&mut caller, id) else {
                    return ERRNO_INVAL;
                };
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                    return ERRNO_FAULT;
                };
                match memory.write(&mut caller, out as u32 as usize, &ns.to_le_bytes()) {
                    Ok(()) => 0,
                    Err(_) => ERRNO_FAULT,
                }
            },
        )
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e:#}"));
    linker.allow_shadowing(false);
    defined?;
    Ok(())
}

/// The clock `id`'s reading in nanoseconds; `None` for a clock WASI does not name here.
fn now(caller: &mut Caller<'_, GuestState>, id: i32) -> Option<u64> {
    if let Some(elapsed) = determinism::virtual_now(&caller.as_context_mut()) {
        return match id {
            REALTIME => Some((WALL_START_SECS * 1_000_000_000).saturating_add(elapsed)),
            MONOTONIC => Some(MONOTONIC_START_NS.saturating_add(elapsed)),
            _ => None,
        };
    }
    match id {
        REALTIME => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64),
        MONOTONIC => {
            static ORIGIN: OnceLock<Instant> = OnceLock::new();
            let origin = *ORIGIN.get_or_init(Instant::now);
            Some(MONOTONIC_START_NS + origin.elapsed().as_nanos() as u64)
        }
        _ => None,
    }
}
