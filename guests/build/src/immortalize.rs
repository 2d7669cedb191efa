//! Makes the interpreter snapshot's objects immortal, in the built component's memory image.
//!
//! Every run touches objects of the snapshot: it calls functions, reads module globals, creates
//! instances of classes. Each touch changes a reference count, and a changed count dirties its
//! page, which the instance then copies from the image (memory per idle session) and the pool
//! copies back when the slot is reset (time per run). CPython (3.12+) skips reference counting
//! for immortal objects: on wasm32, those whose count is at least 2**30. Python code cannot set a
//! count, so the guest (`guests/python/runner.py`, `_immortal_table`) lists, at build time, every
//! object it can reach by address beside its type's address, and this step writes the immortal
//! count into those addresses of the snapshot's data segments, in place (the component keeps its
//! size and layout). An entry is patched only if the word after the count still holds the listed
//! type and the count is a plausible count: a block freed between the listing and the snapshot
//! holds an allocator pointer there instead, and is left alone.

use crate::image::{marked_segments, Image};

/// CPython's `_Py_IMMORTAL_INITIAL_REFCNT` on 32-bit targets (`Include/refcount.h`).
const IMMORTAL_REFCNT: u32 = 5 << 28;
/// Larger values are not counts but pointers left in freed blocks (the heap starts near 1 MiB).
const MAX_PLAUSIBLE_REFCNT: u32 = 1 << 16;
/// The guest builds this marker at run time, so no constant of its own holds it.
const MARKER: &[u8] = b"WEIR-IMMORTAL-TABLE-V1";

/// What the pass did, for the build's log.
pub struct Immortalized {
    pub listed: usize,
    pub patched: usize,
    pub skipped: usize,
}

/// Patches `component` in place. Fails if the guest's table is missing or malformed.
pub fn immortalize(component: &mut [u8]) -> Result<Immortalized, String> {
    let (segments, table) = marked_segments(component, MARKER, "immortal table")?;
    let mut image = Image {
        bytes: component,
        segments,
    };
    let count = image.read_u32(table + MARKER.len() as u32) as usize;
    let first = table + MARKER.len() as u32 + 4;
    let (mut patched, mut skipped) = (0, 0);
    for i in 0..count as u32 {
        let address = image.read_u32(first + 8 * i);
        let ty = image.read_u32(first + 8 * i + 4);
        let refcnt = image.read_u32(address);
        let plausible = (1..MAX_PLAUSIBLE_REFCNT).contains(&refcnt);
        if plausible
            && image.read_u32(address + 4) == ty
            && image.write_u32(address, IMMORTAL_REFCNT)
        {
            patched += 1;
        } else {
            skipped += 1;
        }
    }
    // The table has done its work: zero it, so the image keeps no copy of it in use.
    for k in 0..(MARKER.len() as u32 + 4 + 8 * count as u32) {
        if let Some(at) = image.locate(table + k) {
            image.bytes[at] = 0;
        }
    }
    Ok(Immortalized {
        listed: count,
        patched,
        skipped,
    })
}
