//! A `python` session: the program runs in `wasi:cli/run`, which returns; each cell is then one
//! call to the guest's `weir:sandbox/session` interface. Between calls no guest code runs, and
//! the host serves what the caller asks of the idle session: the next cell, or a snapshot.

use crate::error::{Error, Result};
use crate::launch::Capture;
use crate::runtime::state::SessionGuest;
use crate::snapshot::Snapshot;
use crate::store::GuestState;
use std::sync::Arc;
use wasmtime::component::{Instance, TypedFunc};
use wasmtime::Store;

const INTERFACE: &str = "weir:sandbox/session@0.1.0";

/// The guest's session exports.
pub(super) struct Exports {
    cell: TypedFunc<(String,), (Option<i32>,)>,
    finish: TypedFunc<(), (i32,)>,
    unsaved: TypedFunc<(), (Option<String>,)>,
}

impl Exports {
    pub fn new(store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<Self> {
        let iface = instance
            .get_export_index(&mut *store, None, INTERFACE)
            .ok_or_else(|| wasmtime::format_err!("the guest does not export {INTERFACE}"))?;
        let mut func = |name: &str| {
            instance
                .get_export_index(&mut *store, Some(&iface), name)
                .ok_or_else(|| wasmtime::format_err!("the guest does not export {name}"))
        };
        let (cell, finish, unsaved) = (func("cell")?, func("finish")?, func("unsaved")?);
        Ok(Exports {
            cell: instance.get_typed_func(&mut *store, cell)?,
            finish: instance.get_typed_func(&mut *store, finish)?,
            unsaved: instance.get_typed_func(&mut *store, unsaved)?,
        })
    }
}

/// The guest's instance and its session exports: a cell is a call to `cell`.
pub(super) struct Session<'a> {
    pub instance: &'a Instance,
    pub exports: Exports,
}

impl SessionGuest for Session<'_> {
    async fn cell(
        &self,
        store: &mut Store<GuestState>,
        code: String,
    ) -> wasmtime::Result<Option<i32>> {
        Ok(self.exports.cell.call_async(&mut *store, (code,)).await?.0)
    }

    async fn finish(&self, store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        Ok(self.exports.finish.call_async(&mut *store, ()).await?.0)
    }

    async fn snapshot(&self, store: &mut Store<GuestState>, capture: Capture) -> Result<Snapshot> {
        take(store, self.instance, &self.exports, capture).await
    }
}

/// Snapshots the idle session.
async fn take(
    store: &mut Store<GuestState>,
    instance: &Instance,
    exports: &Exports,
    capture: Capture,
) -> Result<Snapshot> {
    // The host's count of the files the guest holds open decides; the guest's own probe (a
    // `fstat` of each descriptor: 0.9 ms, four times the rest of a save) runs only to name
    // the descriptor.
    if store.data_mut().open_descriptors() > 0 {
        crate::runtime::state::ran(store);
        let (why,) = exports
            .unsaved
            .call_async(&mut *store, ())
            .await
            .map_err(|e| Error::SnapshotGuest(format!("{e:#}")))?;
        return Err(Error::Unsaved(why.unwrap_or_else(|| {
            "the session holds a file or directory open: close it first".into()
        })));
    }
    let (globals, memories) = instance.weir_core_state(&mut *store);
    crate::runtime::state::take(store, &globals, &memories, capture, |store| {
        instance.weir_core_images(store)
    })
}

/// Turns the fresh session in `store` (its program has run) into `from`'s.
pub(super) fn restore(
    store: &mut Store<GuestState>,
    instance: &Instance,
    from: &Arc<Snapshot>,
) -> Result<()> {
    let (globals, memories) = instance.weir_core_state(&mut *store);
    crate::runtime::state::restore(
        store,
        &globals,
        &memories,
        |store| instance.weir_core_images(store),
        from,
    )
}
