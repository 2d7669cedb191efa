//! What the CRuby guest imports beyond WASI: `canonical_abi`'s handle table for the values it
//! lends the host — the identity (a handle is the `VALUE`; the guest pins a lent value until
//! the host drops it) — and `rb-js-abi-host`, used only by `require "js"` (a browser's
//! JavaScript), which the linker defines as traps: a program that requires it fails with
//! `LoadError`-free certainty, never reaching a host.

use wasmtime::Linker;

/// Installs `canonical_abi`'s three functions.
pub(super) fn add_to_linker<T: 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker
        .func_wrap(
            "canonical_abi",
            "resource_new_rb-abi-value",
            |v: i32| -> i32 { v },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    linker
        .func_wrap(
            "canonical_abi",
            "resource_get_rb-abi-value",
            |h: i32| -> i32 { h },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    linker
        .func_wrap("canonical_abi", "resource_drop_js-abi-value", |_: i32| {})
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}
