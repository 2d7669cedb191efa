//! A session as every runtime serves it once each cell is its own call into the guest: the loop
//! between cells ([`serve`]), and the session's state as a snapshot (`crate::snapshot`), taken
//! from and written into the guest's instance once the guest has listed its globals and
//! memories and said it can be saved.

use crate::determinism::GuestClock;
use crate::error::{Error, Result};
use crate::launch::{Capture, SessionRequest};
use crate::runtime::plugin::CallResult;
use crate::snapshot::{self, Snapshot};
use crate::store::{self, GuestState};
use std::future::Future;
use wasmtime::{AsContextMut, Global, Memory, Store};

/// A memory's initial image, as `weir_core_images` gives it (vendored wasmtime, patch 5).
pub(crate) type Image<'a> = Option<(u64, &'a [u8])>;

/// Snapshots the idle session in `store` whose guest has said it can be saved: the pages of
/// `memories` that differ from `images` (what the guest's instance lists for them), the values of
/// `globals`, and the session's files, environment and arguments; for a save, only what changed
/// since the last ([`Capture`]); a deterministic session's seed, random sources and virtual
/// clock. Refused for a run that is not a session.
pub(crate) fn take(
    store: &mut Store<GuestState>,
    globals: &[Global],
    memories: &[Memory],
    capture: Capture,
    images: impl for<'a> FnOnce(&'a Store<GuestState>) -> Vec<Image<'a>>,
) -> Result<Snapshot> {
    let determinism = determinism(store)?;
    if capture == Capture::Fork {
        if let Some(last) = unchanged_fork(store)? {
            let (files, env, args) = host_side(store)?;
            return Ok(last
                .with_host(files, env, args, None)
                .with_determinism(determinism));
        }
    }
    let values = snapshot::read_globals(&mut *store, globals)?;
    let mut saved = match capture {
        Capture::Snapshot | Capture::Fork => None,
        Capture::Changes => Some(std::mem::take(&mut cells_mut(store)?.saved)),
        Capture::WholeSave => Some(snapshot::Saved::default()),
    };
    let state = store.data();
    let inbox = state.host.cells.as_ref().ok_or(Error::Ended)?;
    let (runtime, build) = (inbox.runtime.clone(), inbox.build.clone());
    let images = images(store);
    let data: Vec<&[u8]> = memories.iter().map(|m| m.data(&*store)).collect();
    let mapped = &inbox.mapped;
    let mut taken = snapshot::capture(
        &images,
        &data,
        values,
        runtime,
        build,
        mapped,
        saved.as_mut(),
    );
    if capture == Capture::Fork {
        taken.widen(&data, BRIDGE_PAGES, mapped);
        share(store, memories, &mut taken)?;
    }
    // A save that fails leaves no record: the next one is whole.
    let (files, env, args) = host_side(store)?;
    let taken = taken
        .with_host(files, env, args, saved.as_mut())
        .with_determinism(determinism);
    if let Some(saved) = saved {
        cells_mut(store)?.saved = saved;
    }
    Ok(taken)
}

/// A fork's runs of pages this many pages apart or closer are mapped as one (the pages between
/// stored too).
const BRIDGE_PAGES: u32 = 8;

/// The session's files, environment and arguments.
fn host_side(store: &Store<GuestState>) -> Result<crate::snapshot::HostSide> {
    let state = store.data();
    let inbox = state.host.cells.as_ref().ok_or(Error::Ended)?;
    let scratch = state.scratch().ok_or(Error::Ended)?;
    let files = crate::scratch::LiveDir::new(scratch)
        .read_all()
        .map_err(|e| Error::Unsaved(e.to_string()))?;
    Ok((files, inbox.env.clone(), inbox.args.clone()))
}

/// The session's last fork, when no guest code has run since it was taken: its memories are
/// still exactly what it shares.
fn unchanged_fork(store: &mut Store<GuestState>) -> Result<Option<Snapshot>> {
    let inbox = cells_mut(store)?;
    Ok(match &inbox.last_fork {
        Some((calls, last)) if *calls == inbox.calls => Some(last.without_files()),
        _ => None,
    })
}

/// Moves `taken`'s pages into a page file and maps the session's own memories from it: the
/// same bytes, now shared with the sessions started from `taken` until one of them writes.
/// When the file cannot be made, `taken` keeps its pages on the heap (a fork then copies
/// them); when the session's own pages cannot be mapped, it keeps its own copy.
fn share(store: &mut Store<GuestState>, memories: &[Memory], taken: &mut Snapshot) -> Result<()> {
    if !snapshot::pages_fit() {
        return Ok(());
    }
    if let Err(e) = taken.share() {
        tracing::warn!(error = %e, "a fork's pages stay on the heap");
        return Ok(());
    }
    let mut mapped = std::mem::take(&mut cells_mut(store)?.mapped);
    for (m, memory) in memories.iter().enumerate() {
        let Some((file, runs, bytes)) = taken.shared(m) else {
            continue;
        };
        if !mapped.record(m, runs) {
            break;
        }
        // SAFETY: the session is between cells (no guest code runs, no slice of its memory is
        // alive); the file holds these very pages' bytes, captured just now.
        #[allow(unsafe_code)]
        let done = unsafe { memory.weir_map_private(&mut *store, file.fd(), &bytes) };
        if let Err(e) = done {
            tracing::warn!(error = %e, "a session keeps its own copy of the pages it forks");
            break;
        }
    }
    let inbox = cells_mut(store)?;
    inbox.last_fork = Some((inbox.calls, taken.without_files()));
    inbox.mapped = mapped;
    Ok(())
}

/// A deterministic session's host-side state, `None` for another session.
fn determinism(store: &mut Store<GuestState>) -> Result<Option<snapshot::Determinism>> {
    let inbox = store.data().host.cells.as_ref().ok_or(Error::Ended)?;
    let Some(random) = inbox.random.clone() else {
        return Ok(None);
    };
    let GuestClock::Virtual(clock) = &store.data().clock else {
        return Ok(None);
    };
    let file_ids = clock.ids_issued();
    let sub_ns_fuel = clock.sub_ns_fuel(store.get_fuel().unwrap_or(0));
    let elapsed_ns = crate::determinism::virtual_now(&store.as_context_mut()).unwrap_or(0);
    let (secure, insecure) = random.positions();
    Ok(Some(snapshot::Determinism {
        seed: random.seed.0,
        secure_words: secure.to_string(),
        insecure_words: insecure.to_string(),
        elapsed_ns,
        file_ids,
        fuel_left: store.get_fuel().ok(),
        sub_ns_fuel,
    }))
}

/// Puts a restored deterministic session's random sources and virtual clock where `from`'s
/// were.
fn resume_determinism(store: &mut Store<GuestState>, from: &Snapshot) -> Result<()> {
    let Some(was) = from.determinism() else {
        return Ok(());
    };
    let positions = was.positions()?;
    if let Some(random) = &cells_mut(store)?.random {
        random.set_positions(positions);
    }
    // The session's fuel is one budget (not refilled per cell): it goes on from what was left,
    // never above what this run was given.
    let given = store.get_fuel().unwrap_or(0);
    let fuel_left = was.fuel_left.map_or(given, |left| left.min(given));
    store
        .set_fuel(fuel_left)
        .map_err(|e| Error::SnapshotShape(format!("fuel: {e}")))?;
    if let GuestClock::Virtual(clock) = &mut store.data_mut().clock {
        clock.resume(was.elapsed_ns, was.sub_ns_fuel, was.file_ids, fuel_left);
    }
    Ok(())
}

/// Counts a call into the session's guest (it may change its memory).
pub(crate) fn ran(store: &mut Store<GuestState>) {
    if let Some(inbox) = store.data_mut().host.cells.as_mut() {
        inbox.calls += 1;
    }
}

fn cells_mut(store: &mut Store<GuestState>) -> Result<&mut crate::launch::CellInbox> {
    store.data_mut().host.cells.as_mut().ok_or(Error::Ended)
}

/// Turns the fresh session in `store` (its program has run; `globals`, `memories` and `images`
/// as its guest's instance lists them) into `from`'s. Its first save is whole (hashing what a
/// restore wrote would cost every restore, saved or not).
pub(crate) fn restore(
    store: &mut Store<GuestState>,
    globals: &[Global],
    memories: &[Memory],
    images: impl for<'a> Fn(&'a Store<GuestState>) -> Vec<Image<'a>>,
    from: &Snapshot,
) -> Result<()> {
    snapshot::prepare(&mut *store, globals, memories, from)?;
    let mapped = map_shared(store, memories, from, |store| images(store))?;
    let writes = {
        let images = images(store);
        let data: Vec<&[u8]> = memories.iter().map(|m| m.data(&*store)).collect();
        snapshot::plan_writes(&data, &images, from, &mapped)
    };
    for (m, page, bytes) in writes {
        let at = page * snapshot::PAGE_BYTES;
        memories[m].data_mut(&mut *store)[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    snapshot::write_globals(&mut *store, globals, from)?;
    resume_determinism(store, from)?;
    Ok(())
}

/// Maps the memories whose pages `from` keeps in a page file (a fork's) from it, copy-on-write,
/// and hands back the pages the fresh start wrote that `from` does not hold; which memories
/// it mapped. A memory it could not map (no budget left, no pooled slot) is left to be copied.
fn map_shared(
    store: &mut Store<GuestState>,
    memories: &[Memory],
    from: &Snapshot,
    images: impl for<'a> Fn(&'a Store<GuestState>) -> Vec<Image<'a>>,
) -> Result<Vec<bool>> {
    let mut done = vec![false; memories.len()];
    let Some(inbox) = store.data_mut().host.cells.as_mut() else {
        return Ok(done);
    };
    let mut mapped = std::mem::take(&mut inbox.mapped);
    for (m, memory) in memories.iter().enumerate() {
        let Some((file, runs, bytes)) = from.shared(m) else {
            continue;
        };
        if !mapped.record(m, runs) {
            break;
        }
        let stale = {
            let image = images(store).get(m).copied().flatten();
            snapshot::stale_pages(memory.data(&*store), image, runs)
        };
        // SAFETY: the fresh session is between its start and its first cell (no guest code
        // runs, no slice of its memory is alive); the file holds the snapshot's pages.
        #[allow(unsafe_code)]
        let mapping = unsafe { memory.weir_map_private(&mut *store, file.fd(), &bytes) };
        if let Err(e) = mapping {
            // Pages mapped before the error hold the snapshot's bytes already; the copy below
            // writes the rest.
            tracing::warn!(error = %e, "a fork's pages are copied, not shared");
            continue;
        }
        release(memory.data_ptr(&*store), &stale);
        done[m] = true;
    }
    if let Some(inbox) = store.data_mut().host.cells.as_mut() {
        inbox.mapped = mapped;
    }
    Ok(done)
}

/// Hands `runs` of pages of the memory at `base` back to the operating system: an image page
/// reads as the image again, any other as zeros.
fn release(base: *mut u8, runs: &[(u32, u32)]) {
    for &(first, n) in runs {
        let (at, len) = (
            first as usize * snapshot::PAGE_BYTES,
            n as usize * snapshot::PAGE_BYTES,
        );
        // SAFETY: the runs lie within the memory (found by reading it), which no slice borrows
        // now; `MADV_DONTNEED` on its private mapping only drops this instance's copies.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(base.add(at).cast(), len, libc::MADV_DONTNEED);
        }
    }
}

/// What a runtime's guest does for a session between whose cells no guest code runs: each a
/// call into the guest. The loop around them is one for every runtime ([`serve`]).
pub(crate) trait SessionGuest: Sync {
    /// Runs one cell (its stdin, output cap and fuel already given, `store::begin_cell`); the
    /// exit status when it ended the session.
    fn cell(
        &self,
        store: &mut Store<GuestState>,
        code: String,
    ) -> impl Future<Output = wasmtime::Result<Option<i32>>> + Send;

    /// Ends the session as a program ends (exit handlers run, output flushed); its status.
    fn finish(
        &self,
        store: &mut Store<GuestState>,
    ) -> impl Future<Output = wasmtime::Result<i32>> + Send;

    /// Snapshots the idle session ([`take`], once the guest has said it can be saved).
    fn snapshot(
        &self,
        store: &mut Store<GuestState>,
        capture: Capture,
    ) -> impl Future<Output = Result<Snapshot>> + Send;
}

/// Serves a session until its caller closes it or a cell ends it: waits (counted as idle) for
/// what the caller asks, runs cells, answers snapshots. What the run returns.
pub(crate) async fn serve(store: &mut Store<GuestState>, guest: &impl SessionGuest) -> CallResult {
    loop {
        match store::next_request(&mut store.as_context_mut()).await {
            None => return exited(guest.finish(store).await?),
            Some(SessionRequest::Cell(cell)) => {
                ran(store);
                let code = store::begin_cell(&mut store.as_context_mut(), cell).await;
                let exit = guest.cell(store, code).await?;
                store::end_cell(store.data_mut());
                if let Some(status) = exit {
                    return exited(status);
                }
            }
            Some(SessionRequest::Snapshot(capture, reply)) => {
                let taken = guest.snapshot(store, capture).await;
                let _ = reply.send(taken);
            }
        }
    }
}

/// A core-module guest's session (`python-sci`, `javascript`, `ruby`: one instance, one
/// memory), once its program has run: its memory handed back to the operating system when the
/// store goes, the snapshot it starts from (if any) written into `instance`, `restored` told,
/// then its cells served.
pub(crate) async fn serve_core(
    store: &mut Store<GuestState>,
    instance: wasmtime::Instance,
    guest: &impl SessionGuest,
    restored: impl FnOnce(),
) -> CallResult {
    if let Some(memory) = instance.get_memory(&mut *store, "memory") {
        if let Some(base) = std::ptr::NonNull::new(memory.data_ptr(&*store)) {
            let limit = store.data().limiter.limit();
            // SAFETY: the instance's one linear memory, in a pooled slot reserving at least the
            // run's memory limit (the most it can grow to), never shared.
            #[allow(unsafe_code)]
            unsafe {
                store.data_mut().release_on_drop(base, limit)
            };
        }
    }
    if let Some(Some(from)) = store.data_mut().session_start() {
        let (globals, memories) = instance.weir_core_state(&mut *store);
        restore(
            store,
            &globals,
            &memories,
            |store| instance.weir_core_images(store),
            &from,
        )
        .map_err(wasmtime::Error::new)?;
        restored();
    }
    serve(store, guest).await
}

/// Snapshots the idle session of a core-module guest's `instance` ([`take`]).
pub(crate) fn take_core(
    store: &mut Store<GuestState>,
    instance: wasmtime::Instance,
    capture: Capture,
) -> Result<Snapshot> {
    let (globals, memories) = instance.weir_core_state(&mut *store);
    take(store, &globals, &memories, capture, |store| {
        instance.weir_core_images(store)
    })
}

/// The run's result for a program or session that ended with exit status `status`.
pub(crate) fn exited(status: i32) -> CallResult {
    match status {
        0 => Ok(Ok(())),
        code => Err(wasmtime_wasi::I32Exit(code).into()),
    }
}
