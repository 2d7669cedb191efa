//! Seals the free chunks of the snapshot's heap, so that a run allocates into fresh pages.
//!
//! CPython for WASI is built without pymalloc: every object comes from wasi-libc's dlmalloc. The
//! snapshot's heap holds some 13,000 free chunks (12,000 of them 16 bytes) scattered over its
//! 30 MB, left by the build's imports and warm-up. A run's allocations would take those first,
//! from the bins, each one on a page of its own, and unlinking a chunk from its bin writes its two
//! neighbours in the list, on two more pages: every such page is copied into the instance (memory
//! per idle session) and back out when its slot is reset (time per run). This pass marks every
//! free chunk of the image in use and empties the allocator's bins, so a run's allocations come,
//! one after the other, from the top of the heap: a few fresh pages instead of hundreds of copied
//! ones. The sealed chunks are never used again; they were free, and no page of theirs is touched.
//!
//! Layout: dlmalloc 2.8.6 as wasi-libc configures it for wasm32 (4-byte `size_t`, 16-byte
//! alignment, no locks, no footers, one contiguous `sbrk` segment). The allocator's state
//! (`_gm_`, a static of libc) is found by its two never-used small bins, which point to
//! themselves, and is checked before anything is written: the heap is walked from the segment's
//! base to the top chunk, and every chunk's `PINUSE` bit must agree with its predecessor's
//! `CINUSE` bit. Any mismatch is an error and leaves the image as it was.

use crate::image::{module_segments, Image};

const PINUSE: u32 = 1;
const CINUSE: u32 = 2;
const FLAG_BITS: u32 = 7;
const CHUNK_ALIGN: u32 = 16;
const MIN_CHUNK: u32 = 16;
const NSMALLBINS: u32 = 32;
const NTREEBINS: u32 = 32;

/// Offsets in `struct malloc_state`.
const SMALLMAP: u32 = 0;
const TREEMAP: u32 = 4;
const DVSIZE: u32 = 8;
const TOPSIZE: u32 = 12;
const LEAST_ADDR: u32 = 16;
const DV: u32 = 20;
const TOP: u32 = 24;
const SMALLBINS: u32 = 40;
const TREEBINS: u32 = SMALLBINS + (NSMALLBINS + 1) * 2 * 4;
const SEG_BASE: u32 = TREEBINS + NTREEBINS * 4 + 16;
const SEG_SIZE: u32 = SEG_BASE + 4;
const SEG_NEXT: u32 = SEG_BASE + 8;

/// What the pass did, for the build's log.
pub struct Sealed {
    /// Guest address of the allocator's state.
    pub state: u32,
    pub chunks: usize,
    pub bytes: u64,
    /// Chunks in the heap, free or not.
    pub walked: usize,
}

/// Seals the heap of the core module whose image holds dlmalloc's state, in place.
pub fn seal_heap(component: &mut [u8]) -> Result<Sealed, String> {
    let mut last_error = "dlmalloc's state is not in the image".to_string();
    for segments in module_segments(component)? {
        let mut image = Image {
            bytes: &mut *component,
            segments,
        };
        for state in candidates(&image) {
            // Two bins that point to themselves may be any two empty bins: the first candidate
            // whose fields describe a heap is the state, and its heap must then be consistent.
            match check_state(&image, state) {
                Ok(bounds) => {
                    let heap = walk(&image, &bounds)?;
                    return Ok(seal(&mut image, state, heap));
                }
                Err(e) => last_error = e,
            }
        }
    }
    Err(last_error)
}

/// Guest addresses where small bins 0 and 1 (sizes 0 and 8, below the minimum chunk, so never
/// used) point to themselves, as `init_bins` left them.
fn candidates(image: &Image) -> Vec<u32> {
    let mut found = Vec::new();
    for seg in &image.segments {
        let data = image.data(seg);
        let word =
            |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let first = (4 - seg.address % 4) % 4;
        let mut at = first as usize;
        while at + 16 <= data.len() {
            let address = seg.address + at as u32;
            // `at` is bin 0's `fd`: the bin's fake chunk starts 8 bytes before it.
            let bin = address.wrapping_sub(8);
            if word(at) == bin && word(at + 4) == bin && word(at + 8) == address {
                if let Some(state) = bin
                    .checked_sub(SMALLBINS)
                    .filter(|_| word(at + 12) == address)
                {
                    found.push(state);
                }
            }
            at += 4;
        }
    }
    found
}

/// The heap's free chunks (address, size), and how many chunks it holds.
struct Heap {
    free: Vec<(u32, u32)>,
    walked: usize,
}

/// What a checked state says of its heap: where its segment starts, and its top chunk.
struct Bounds {
    base: u32,
    top: u32,
    top_head: u32,
}

/// `state`'s heap, if its fields describe one segment whose top chunk matches.
fn check_state(image: &Image, state: u32) -> Result<Bounds, String> {
    let field = |offset: u32| image.read_u32(state.wrapping_add(offset));
    let (top, topsize, base) = (field(TOP), field(TOPSIZE), field(SEG_BASE));
    if field(LEAST_ADDR) != base || field(SEG_NEXT) != 0 {
        return Err(format!(
            "dlmalloc state at {state:#x}: not one segment starting at least_addr"
        ));
    }
    let top_head = image.read_u32(top.wrapping_add(4));
    if top_head & !FLAG_BITS != topsize || top < base || top >= base.saturating_add(field(SEG_SIZE))
    {
        return Err(format!(
            "dlmalloc state at {state:#x}: the top chunk at {top:#x} does not match"
        ));
    }
    let bins = (0..NSMALLBINS * 2).map(|k| field(SMALLBINS + 8 + 4 * k));
    if bins.into_iter().any(|fd_or_bk| fd_or_bk == 0) {
        return Err(format!(
            "dlmalloc state at {state:#x}: a small bin is not initialised"
        ));
    }
    Ok(Bounds {
        base,
        top,
        top_head,
    })
}

/// Walks a checked heap from its segment's base to its top chunk.
fn walk(image: &Image, bounds: &Bounds) -> Result<Heap, String> {
    let Bounds {
        base,
        top,
        top_head,
    } = *bounds;
    let mut p = align_as_chunk(base);
    let (mut previous_in_use, mut free, mut walked) = (true, Vec::new(), 0);
    while p != top {
        let head = image.read_u32(p + 4);
        let size = head & !FLAG_BITS;
        let next = p.checked_add(size).filter(|&n| n <= top);
        let Some(next) = next.filter(|_| size >= MIN_CHUNK && size.is_multiple_of(CHUNK_ALIGN))
        else {
            return Err(format!("heap chunk at {p:#x}: bad size {size:#x}"));
        };
        if (head & PINUSE != 0) != previous_in_use {
            return Err(format!(
                "heap chunk at {p:#x}: PINUSE disagrees with its predecessor"
            ));
        }
        previous_in_use = head & CINUSE != 0;
        if !previous_in_use {
            free.push((p, size));
        }
        walked += 1;
        p = next;
    }
    if (top_head & PINUSE != 0) != previous_in_use {
        return Err(format!(
            "top chunk at {top:#x}: PINUSE disagrees with its predecessor"
        ));
    }
    Ok(Heap { free, walked })
}

/// dlmalloc's `align_as_chunk`: the first chunk of a segment, so that its payload is aligned.
fn align_as_chunk(base: u32) -> u32 {
    let misalign = (base + 8) % CHUNK_ALIGN;
    base + (CHUNK_ALIGN - misalign) % CHUNK_ALIGN
}

fn seal(image: &mut Image, state: u32, heap: Heap) -> Sealed {
    let mut bytes = 0u64;
    for &(p, size) in &heap.free {
        // Both heads are nonzero words of the image, so the writes land.
        let head = image.read_u32(p + 4);
        image.write_u32(p + 4, head | CINUSE);
        let next_head = image.read_u32(p + size + 4);
        image.write_u32(p + size + 4, next_head | PINUSE);
        bytes += u64::from(size);
    }
    for offset in [SMALLMAP, TREEMAP, DVSIZE, DV] {
        image.write_u32(state + offset, 0);
    }
    for i in 0..NSMALLBINS {
        let bin = state + SMALLBINS + 8 * i;
        image.write_u32(bin + 8, bin);
        image.write_u32(bin + 12, bin);
    }
    for i in 0..NTREEBINS {
        image.write_u32(state + TREEBINS + 4 * i, 0);
    }
    Sealed {
        state,
        chunks: heap.free.len(),
        bytes,
        walked: heap.walked,
    }
}
