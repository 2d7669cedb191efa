//! weir's own host interface for the guest (`weir:sandbox/host`, see
//! `guests/python/wit/world.wit`): how to launch the program, and what became of it.

use crate::display;
use crate::event::{CellEnd, CellException};
use crate::launch::Uncaught;
use crate::store::{self, GuestState};
use wasmtime::component::{Linker, WasmList, WasmStr};
use wasmtime::StoreContextMut;

const INTERFACE: &str = "weir:sandbox/host@0.1.0";

/// Longest exception type name kept from the guest, bytes.
pub const MAX_TYPE_NAME_BYTES: usize = 256;
/// Longest exception message kept from the guest, bytes (the runner sends at most 1,000
/// characters; user code calling the interface directly is cut here).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest cell result (`repr` of its last expression) kept, bytes; a longer one is cut with
/// a visible marker.
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// `text` cut at `max` bytes (on a character boundary): what a guest hands the host ends up in
/// responses and the run history, so its size is the host's to decide. Both runtimes' host
/// interfaces cut with this.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A cell's result (`repr` of its last expression) as the host keeps it: at most
/// [`MAX_VALUE_BYTES`], a longer one cut with a visible marker.
pub(crate) fn cell_value(text: &str) -> String {
    let kept = cut(text, MAX_VALUE_BYTES);
    match kept.len() < text.len() {
        true => format!("{kept}… [truncated: longer than {MAX_VALUE_BYTES} bytes]"),
        false => kept,
    }
}

/// A guest string, cut with [`cut`].
fn bounded(store: &StoreContextMut<'_, GuestState>, text: &WasmStr, max: usize) -> String {
    cut(&text.to_str(store).unwrap_or_default(), max)
}

/// `cell-done`'s arguments: the value's `repr`, the exception, the value's bundle.
type CellDone = (
    Option<WasmStr>,
    Option<(WasmStr, WasmStr)>,
    Option<(WasmStr, WasmStr)>,
);

/// Installs the interface's host functions.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    let mut inst = linker
        .instance(INTERFACE)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap_async(
        "launch-config",
        |mut store: StoreContextMut<'_, GuestState>, (): ()| {
            Box::new(async move { Ok((store::launch(&mut store).await?,)) })
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "program-compiled",
        |mut store: StoreContextMut<'_, GuestState>, (code,): (WasmList<u8>,)| {
            // Read only when it could be kept: the guest names the length, up to its memory.
            let code = match code.len() <= GuestState::MAX_COMPILED_BYTES {
                true => code.as_le_slice(&store).to_vec(),
                false => Vec::new(),
            };
            store.data_mut().offer_compiled(code);
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "uncaught-exception",
        |mut store: StoreContextMut<'_, GuestState>, (type_name, message): (WasmStr, WasmStr)| {
            let type_name = bounded(&store, &type_name, MAX_TYPE_NAME_BYTES);
            let message = bounded(&store, &message, MAX_MESSAGE_BYTES);
            store
                .data_mut()
                .report_uncaught(Uncaught { type_name, message });
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "cell-code",
        |mut store: StoreContextMut<'_, GuestState>, (running,): (bool,)| {
            store.data_mut().cell_code(running);
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "cell-done",
        |mut store: StoreContextMut<'_, GuestState>, (value, failure, rich): CellDone| {
            let value = value.map(|v| cell_value(&v.to_str(&store).unwrap_or_default()));
            let exception = failure.map(|(t, m)| CellException {
                type_name: bounded(&store, &t, MAX_TYPE_NAME_BYTES),
                message: bounded(&store, &m, MAX_MESSAGE_BYTES),
            });
            let rich = rich.and_then(|(data, metadata)| {
                let data = data.to_str(&store).ok()?;
                let metadata = metadata.to_str(&store).ok()?;
                display::cell_result(&data, &metadata)
            });
            store.data_mut().cell_done(CellEnd {
                value,
                rich,
                exception,
            });
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "display",
        |mut store: StoreContextMut<'_, GuestState>,
         (data, metadata, id, update): (WasmStr, WasmStr, Option<WasmStr>, bool)| {
            let shown = {
                let (data, metadata) = (data.to_str(&store)?, metadata.to_str(&store)?);
                let id = id.map(|id| id.to_str(&store)).transpose()?;
                display::from_guest(&data, &metadata, id.as_deref(), update)
            };
            match shown {
                Ok(shown) => store.data_mut().display(shown).map(|()| (None,)),
                Err(why) => Ok((Some(why),)),
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "clear-output",
        |mut store: StoreContextMut<'_, GuestState>, (wait,): (bool,)| {
            store.data_mut().clear_output(wait)
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap_async(
        "call-tool",
        |mut store: StoreContextMut<'_, GuestState>, (name, args): (WasmStr, WasmStr)| {
            Box::new(async move {
                let (name, args) = {
                    let name = cut(&name.to_str(&store)?, crate::tools::MAX_NAME_BYTES + 1);
                    (name, args.to_str(&store)?.into_owned())
                };
                Ok((store::call_tool(&mut store, &name, &args).await,))
            })
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.func_wrap(
        "repl-started",
        |mut store: StoreContextMut<'_, GuestState>, (): ()| {
            store.data_mut().repl_started();
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}
