//! A session's state as a snapshot (`crate::snapshot`), taken from and written into a guest's
//! instance: what every runtime does the same way once its guest has listed its globals and
//! memories and said it can be saved.

use crate::error::{Error, Result};
use crate::snapshot::{self, Snapshot};
use crate::store::GuestState;
use wasmtime::{Global, Memory, Store};

/// A memory's initial image, as `weir_core_images` gives it (vendored wasmtime, patch 5).
pub(crate) type Image<'a> = Option<(u64, &'a [u8])>;

/// Snapshots the idle session in `store` whose guest has said it can be saved: the pages of
/// `memories` that differ from `images` (what the guest's instance lists for them), the values of
/// `globals`, and the session's files, environment and arguments. Refused for a deterministic
/// session and for a run that is not a session.
pub(crate) fn take(
    store: &mut Store<GuestState>,
    globals: &[Global],
    memories: &[Memory],
    images: impl for<'a> FnOnce(&'a Store<GuestState>) -> Vec<Image<'a>>,
) -> Result<Snapshot> {
    let inbox = store.data().host.cells.as_ref().ok_or(Error::Ended)?;
    if inbox.deterministic {
        return Err(Error::Unsaved(
            "a deterministic session cannot be snapshotted: its seeded randomness and virtual \
             clock are not kept"
                .into(),
        ));
    }
    let values = snapshot::read_globals(&mut *store, globals)?;
    let state = store.data();
    let inbox = state.host.cells.as_ref().ok_or(Error::Ended)?;
    let (runtime, build) = (inbox.runtime.clone(), inbox.build.clone());
    let (env, args) = (inbox.env.clone(), inbox.args.clone());
    let scratch = state.scratch().ok_or(Error::Ended)?;
    let images = images(store);
    let data: Vec<&[u8]> = memories.iter().map(|m| m.data(&*store)).collect();
    let taken = snapshot::capture(&images, &data, values, runtime, build);
    let files = crate::scratch::LiveDir::new(scratch)
        .read_all()
        .map_err(|e| Error::Unsaved(e.to_string()))?;
    Ok(taken.with_host(files, env, args))
}

/// Turns the fresh session in `store` (its program has run; `globals`, `memories` and `images`
/// as its guest's instance lists them) into `from`'s.
pub(crate) fn restore(
    store: &mut Store<GuestState>,
    globals: &[Global],
    memories: &[Memory],
    images: impl for<'a> FnOnce(&'a Store<GuestState>) -> Vec<Image<'a>>,
    from: &Snapshot,
) -> Result<()> {
    snapshot::prepare(&mut *store, globals, memories, from)?;
    let writes = {
        let images = images(store);
        let data: Vec<&[u8]> = memories.iter().map(|m| m.data(&*store)).collect();
        snapshot::plan_writes(&data, &images, from)
    };
    for (m, page, bytes) in writes {
        let at = page * snapshot::PAGE_BYTES;
        memories[m].data_mut(&mut *store)[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    snapshot::write_globals(&mut *store, globals, from)
}
