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

use wasmparser::{DataKind, Encoding, Operator, Parser, Payload};

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

/// One active data segment of the memory that holds the snapshot.
struct Segment {
    address: u32,
    len: u32,
    file_offset: usize,
}

/// The snapshot memory's data segments, addressable by guest address.
struct Image<'a> {
    bytes: &'a mut [u8],
    segments: Vec<Segment>,
}

impl Image<'_> {
    fn locate(&self, address: u32) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.address <= address);
        let seg = self.segments.get(i.checked_sub(1)?)?;
        let delta = address - seg.address;
        (delta < seg.len).then(|| seg.file_offset + delta as usize)
    }

    /// Memory outside every segment is zero in the image.
    fn read_u32(&self, address: u32) -> u32 {
        let mut le = [0u8; 4];
        for (k, byte) in le.iter_mut().enumerate() {
            if let Some(at) = self.locate(address.wrapping_add(k as u32)) {
                *byte = self.bytes[at];
            }
        }
        u32::from_le_bytes(le)
    }

    /// Writes `value` if every nonzero byte of it falls in a segment (the rest are zero anyway).
    fn write_u32(&mut self, address: u32, value: u32) -> bool {
        let le = value.to_le_bytes();
        let places: [Option<usize>; 4] =
            std::array::from_fn(|k| self.locate(address.wrapping_add(k as u32)));
        if le.iter().zip(&places).any(|(b, p)| *b != 0 && p.is_none()) {
            return false;
        }
        for (b, p) in le.iter().zip(places) {
            if let Some(at) = p {
                self.bytes[at] = *b;
            }
        }
        true
    }
}

/// Patches `component` in place. Fails if the guest's table is missing or malformed.
pub fn immortalize(component: &mut [u8]) -> Result<Immortalized, String> {
    let (segments, table) = snapshot_segments(component)?;
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

/// The guest address of the marker, if one of `segments` holds it.
fn find_marker(component: &[u8], segments: &[Segment]) -> Option<u32> {
    segments.iter().find_map(|seg| {
        let data = &component[seg.file_offset..seg.file_offset + seg.len as usize];
        data.windows(MARKER.len())
            .position(|w| w == MARKER)
            .map(|pos| seg.address + pos as u32)
    })
}

/// The active, constant-offset data segments of the core module that holds the marker, sorted,
/// and the marker's guest address.
fn snapshot_segments(component: &[u8]) -> Result<(Vec<Segment>, u32), String> {
    let base = component.as_ptr() as usize;
    let mut modules: Vec<Vec<Segment>> = Vec::new();
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| format!("cannot parse the component: {e}"))?;
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => modules.push(Vec::new()),
            Payload::DataSection(reader) => {
                let Some(segments) = modules.last_mut() else {
                    continue;
                };
                for data in reader {
                    let data = data.map_err(|e| format!("bad data segment: {e}"))?;
                    let DataKind::Active {
                        memory_index: 0,
                        offset_expr,
                    } = data.kind
                    else {
                        continue;
                    };
                    let mut ops = offset_expr.get_operators_reader();
                    if let Ok(Operator::I32Const { value }) = ops.read() {
                        segments.push(Segment {
                            address: value as u32,
                            len: data.data.len() as u32,
                            file_offset: data.data.as_ptr() as usize - base,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    modules
        .into_iter()
        .find_map(|mut segments| {
            let table = find_marker(component, &segments)?;
            segments.sort_by_key(|s| s.address);
            Some((segments, table))
        })
        .ok_or_else(|| "the guest's immortal table is not in the image".into())
}
