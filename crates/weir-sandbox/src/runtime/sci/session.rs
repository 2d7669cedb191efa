//! A `python-sci` run as turns of the interpreter: the program is one turn (`_weir.main()`),
//! which for a session returns after the program; each cell is then a turn of its own
//! (`_weir._cell`), and so are the check before a snapshot and the session's end. Between turns
//! no guest code runs, so the module's memory and globals are the session's whole state, and the
//! host serves what the caller asks of the idle session: the next cell, or a snapshot.
//!
//! A turn takes only source and returns only a status, so what the lean runtime's session calls
//! take and return goes through the door instead: the cell's source (`GuestState::cell_source`)
//! and whether it ended the session (`crate::launch::SessionReports`). Whether the session can
//! be saved the host sees for itself: no file or directory open beyond those it opened for the
//! guest (`GuestState::open_descriptors`).

use crate::error::{Error, Result};
use crate::launch::Capture;
use crate::runtime::plugin::CallResult;
use crate::runtime::state::{exited, SessionGuest};
use crate::snapshot::Snapshot;
use crate::store::GuestState;
use wasmtime::{Instance, Memory, Store, TypedFunc};

/// The turn that runs the program: weir's runner, loaded when the guest was pre-initialized.
const ENTRY: &str = "import _weir; _weir.main()";

/// The turn that ends a session as a program ends (exit handlers run, output is flushed).
/// Turns run in `__main__`, the session's namespace: these bind no name there, and, not being
/// an expression, show no value.
const END: &str = "if __import__('_weir')._end():\n    pass\n";

/// The turn before a snapshot: the runner lets go of files it holds open for its own
/// convenience (matplotlib's fonts).
const RELEASE: &str = "if __import__('_weir')._release_files():\n    pass\n";

/// The turn that runs the session's running cell (the runner takes its source through the
/// door: a turn's own source is kept by the interpreter for its tracebacks).
const CELL: &str = "if __import__('_weir')._cell():\n    pass\n";

/// The module's instance and the exports a turn needs.
pub(super) struct Guest {
    instance: Instance,
    alloc: TypedFunc<i32, i32>,
    turn: TypedFunc<(i32, i32), i32>,
    memory: Memory,
}

impl Guest {
    pub fn new(store: &mut Store<GuestState>, instance: Instance) -> wasmtime::Result<Self> {
        Ok(Guest {
            alloc: instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?,
            turn: instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?,
            memory: instance
                .get_memory(&mut *store, "memory")
                .ok_or_else(|| wasmtime::format_err!("python-sci exports no memory"))?,
            instance,
        })
    }

    /// The module's linear memory.
    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// The module's instance.
    pub fn instance(&self) -> Instance {
        self.instance
    }

    /// Runs `source` as one turn of the interpreter, in `__main__`. Its value: the exit status
    /// in the low byte (0: no exception; a `SystemExit`'s code), 256 added when the turn called
    /// `exit()` or `quit()` (which the runner undoes for a session: `_keep_session`).
    async fn turn(&self, store: &mut Store<GuestState>, source: &str) -> wasmtime::Result<i32> {
        let len = i32::try_from(source.len())
            .map_err(|_| wasmtime::format_err!("a turn of {} bytes", source.len()))?;
        let at = self.alloc.call_async(&mut *store, len).await?;
        let fits = (at as u32 as usize)
            .checked_add(source.len())
            .is_some_and(|end| end <= self.memory.data_size(&*store));
        // Where the guest could not allocate, it raises `MemoryError` for the turn's code.
        let at = match at != 0 && fits {
            true => {
                self.memory
                    .write(&mut *store, at as u32 as usize, source.as_bytes())?;
                at
            }
            false => 0,
        };
        self.turn.call_async(&mut *store, (at, len)).await
    }

    /// Runs the program: the run's result, or `None` for a session whose program has run (its
    /// cells follow: `crate::runtime::state::serve`).
    pub async fn main(&self, store: &mut Store<GuestState>) -> Option<CallResult> {
        let value = match self.turn(store, ENTRY).await {
            Ok(value) => value,
            Err(e) => return Some(Err(e)),
        };
        match store.data().host.cells.is_some() {
            true if value == 0 => None,
            _ => Some(exited(status(value))),
        }
    }
}

/// The exit status in a turn's value (the low byte).
fn status(value: i32) -> i32 {
    value & 0xFF
}

/// A cell is a turn running `_weir._cell()`; the session's end and the check before a snapshot
/// are turns too.
impl SessionGuest for Guest {
    async fn cell(
        &self,
        store: &mut Store<GuestState>,
        _code: String,
    ) -> wasmtime::Result<Option<i32>> {
        let value = self.turn(store, CELL).await?;
        let exit = reports(store).and_then(|r| r.exit.take());
        Ok(match (value, exit) {
            (0, None) => None,
            (0, Some(exit)) => Some(status(exit)),
            // The runner itself failed (its traceback went to stderr).
            (value, _) => Some(status(value)),
        })
    }

    async fn finish(&self, store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        Ok(status(self.turn(store, END).await?))
    }

    async fn snapshot(&self, store: &mut Store<GuestState>, capture: Capture) -> Result<Snapshot> {
        take(store, self, capture).await
    }
}

/// What the session's guest reports through the door.
fn reports(store: &mut Store<GuestState>) -> Option<&mut crate::launch::SessionReports> {
    store.data_mut().host.cells.as_mut().map(|i| &mut i.reports)
}

/// Snapshots the idle session, once it holds no file open.
async fn take(store: &mut Store<GuestState>, guest: &Guest, capture: Capture) -> Result<Snapshot> {
    let fuel = store.data().host.cells.as_ref().and_then(|i| i.fuel);
    if let Some(fuel) = fuel {
        // The turn's own CPU budget: what the last cell left may not cover it, and a turn cut
        // short would leave the interpreter where it stopped.
        let _ = store.set_fuel(fuel);
    }
    crate::runtime::state::ran(store);
    let value = guest
        .turn(store, RELEASE)
        .await
        .map_err(|e| Error::SnapshotGuest(format!("{e:#}")))?;
    if value != 0 {
        return Err(Error::SnapshotGuest(format!(
            "letting go of its files failed (status {value})"
        )));
    }
    match store.data_mut().open_descriptors() {
        0 => {}
        1 => {
            return Err(Error::Unsaved(
                "the session holds a file or directory open: close it first".into(),
            ))
        }
        n => {
            return Err(Error::Unsaved(format!(
                "the session holds {n} files or directories open: close them first"
            )))
        }
    }
    crate::runtime::state::take_core(store, guest.instance, capture)
}
