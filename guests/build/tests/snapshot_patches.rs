//! Tests of the build steps that patch the interpreter snapshot: immortal objects
//! (`immortalize`) and the sealed heap (`seal_heap`), on hand-made components.

use weir_guest_build::immortalize::immortalize;
use weir_guest_build::seal_heap::seal_heap;

const MARKER: &[u8] = b"WEIR-IMMORTAL-TABLE-V1";
const IMMORTAL: u32 = 5 << 28;

fn leb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Where a segment's bytes are: guest address, offset in the module, length.
type Placed = Vec<(u32, usize, usize)>;

/// A core module holding only active data segments at `(address, bytes)`.
fn module(segments: &[(u32, Vec<u8>)]) -> (Vec<u8>, Placed) {
    let mut section = Vec::new();
    let mut placed = Vec::new();
    leb(segments.len() as u64, &mut section);
    for (address, bytes) in segments {
        section.push(0); // active, memory 0
        section.push(0x41); // i32.const, signed LEB128
        let mut v = *address as i64;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
            section.push(if done { byte } else { byte | 0x80 });
            if done {
                break;
            }
        }
        section.push(0x0b);
        leb(bytes.len() as u64, &mut section);
        placed.push((*address, section.len(), bytes.len()));
        section.extend_from_slice(bytes);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.push(11);
    leb(section.len() as u64, &mut m);
    let base = m.len();
    m.extend(section);
    let placed = placed
        .into_iter()
        .map(|(a, at, len)| (a, base + at, len))
        .collect();
    (m, placed)
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn table(pairs: &[(u32, u32)]) -> Vec<u8> {
    let mut t = MARKER.to_vec();
    t.extend((pairs.len() as u32).to_le_bytes());
    for (address, ty) in pairs {
        t.extend(words(&[*address, *ty]));
    }
    t
}

/// The u32 at guest `address` in the module's memory image (zero outside every segment).
fn word_at(m: &[u8], placed: &Placed, address: u32) -> u32 {
    let mut le = [0u8; 4];
    for (k, byte) in le.iter_mut().enumerate() {
        let a = address + k as u32;
        for &(start, at, len) in placed {
            if (start..start + len as u32).contains(&a) {
                *byte = m[at + (a - start) as usize];
            }
        }
    }
    u32::from_le_bytes(le)
}

#[test]
fn live_objects_become_immortal_and_freed_blocks_are_left_alone() {
    const TY: u32 = 0x0010_0040;
    // Four "objects" of 8 bytes (count, type) at 0x1000.., and the table at 0x2000.
    let heap = words(&[
        3,
        TY, // live: a small count and the listed type
        0x0012_3450,
        TY, // freed: an allocator pointer where the count was
        2,
        0x0010_0080, // reused by an object of another type
        7,
        TY, // live again
    ]);
    let objects = [(0x1000, TY), (0x1008, TY), (0x1010, TY), (0x1018, TY)];
    let segments = vec![(0x1000, heap), (0x2000, table(&objects))];
    let (mut m, placed) = module(&segments);
    let before = m.len();

    let done = immortalize(&mut m).expect("the table is found");

    assert_eq!((done.listed, done.patched, done.skipped), (4, 2, 2));
    assert_eq!(m.len(), before, "patched in place");
    let after: Vec<u32> = (0..4)
        .map(|i| word_at(&m, &placed, 0x1000 + 8 * i))
        .collect();
    assert_eq!(after, [IMMORTAL, 0x0012_3450, 2, IMMORTAL]);
    // The types are untouched, and the table is zeroed, marker included.
    assert_eq!(word_at(&m, &placed, 0x1004), TY);
    assert!(!m.windows(MARKER.len()).any(|w| w == MARKER));
}

#[test]
fn a_count_whose_high_byte_lies_outside_every_segment_is_skipped() {
    const TY: u32 = 0x0010_0040;
    // The count's low byte ends one segment; its high bytes are in no segment (zero in the
    // image), the type word is in the next one. The immortal count needs its top byte written.
    let segments = vec![
        (0x1000, vec![5]),
        (0x1004, words(&[TY])),
        (0x2000, table(&[(0x1000, TY)])),
    ];
    let (mut m, placed) = module(&segments);
    let done = immortalize(&mut m).expect("the table is found");
    assert_eq!((done.patched, done.skipped), (0, 1));
    assert_eq!(word_at(&m, &placed, 0x1000), 5);
}

#[test]
fn a_component_without_the_table_is_an_error() {
    let (mut m, _) = module(&[(0x1000, words(&[1, 2, 3]))]);
    let err = immortalize(&mut m).err().expect("no table");
    assert!(err.contains("immortal table"), "{err}");
}

// ------------------------------------------------------------------ the sealed heap

/// Where the fake allocator state and its heap live in the tests' images.
const STATE: u32 = 0x1000;
const HEAP: u32 = 0x2008; // chunk addresses are 8 mod 16, so payloads are 16-aligned
const SMALLBINS: u32 = 40;
const TREEBINS: u32 = SMALLBINS + 66 * 4;
const SEG_BASE: u32 = TREEBINS + 32 * 4 + 16;

/// A dlmalloc heap (chunks of `(size, in_use)`, then a top chunk of 0x100 bytes) and its state,
/// with every free chunk linked alone into its small bin (dlmalloc's own layout, 32-bit).
fn heap_image(chunks: &[(u32, bool)]) -> Vec<(u32, Vec<u8>)> {
    let mut state = vec![0u32; (SEG_BASE / 4 + 4) as usize];
    for i in 0..32u32 {
        let bin = STATE + SMALLBINS + 8 * i;
        state[((SMALLBINS + 8 * i + 8) / 4) as usize] = bin;
        state[((SMALLBINS + 8 * i + 12) / 4) as usize] = bin;
    }
    let mut heap = vec![0u32; 2];
    let (mut p, mut previous_in_use, mut smallmap) = (HEAP, true, 0u32);
    for &(size, in_use) in chunks {
        let at = ((p - HEAP) / 4) as usize;
        heap.resize(at + (size / 4) as usize + 2, 0);
        heap[at + 1] = size | u32::from(previous_in_use) | if in_use { 2 } else { 0 };
        if !in_use {
            let i = size / 8;
            let bin = STATE + SMALLBINS + 8 * i;
            smallmap |= 1 << i;
            heap[at + 2] = bin; // fd
            heap[at + 3] = bin; // bk
            state[((SMALLBINS + 8 * i + 8) / 4) as usize] = p;
            state[((SMALLBINS + 8 * i + 12) / 4) as usize] = p;
            heap[at + (size / 4) as usize] = size; // the next chunk's prev_foot
        }
        previous_in_use = in_use;
        p += size;
    }
    let at = ((p - HEAP) / 4) as usize;
    heap.resize(at + 2, 0);
    heap[at + 1] = 0x100 | u32::from(previous_in_use);
    state[0] = smallmap;
    state[3] = 0x100; // topsize
    state[4] = HEAP; // least_addr
    state[6] = p; // top
    state[(SEG_BASE / 4) as usize] = HEAP;
    state[(SEG_BASE / 4 + 1) as usize] = p + 0x100 - HEAP;
    vec![(STATE, words(&state)), (HEAP, words(&heap))]
}

/// The heads of the chunks at `sizes` (in order from the heap's start), then the top's.
fn heads(m: &[u8], placed: &Placed, sizes: &[u32]) -> Vec<u32> {
    let mut p = HEAP;
    let mut out = Vec::new();
    for size in sizes {
        out.push(word_at(m, placed, p + 4));
        p += size;
    }
    out.push(word_at(m, placed, p + 4));
    out
}

#[test]
fn free_chunks_are_sealed_and_the_bins_emptied() {
    let chunks = [(32, true), (48, false), (16, true), (16, false), (32, true)];
    let (mut m, placed) = module(&heap_image(&chunks));
    let before = m.len();

    let sealed = seal_heap(&mut m).expect("the state is found and the heap is consistent");

    assert_eq!(m.len(), before, "patched in place");
    assert_eq!(
        (sealed.state, sealed.chunks, sealed.bytes, sealed.walked),
        (STATE, 2, 64, 5)
    );
    let sizes: Vec<u32> = chunks.iter().map(|c| c.0).collect();
    // Every chunk is now in use (CINUSE = 2) and follows one in use (PINUSE = 1): no
    // allocation or free will ever find a free neighbour among them. The top keeps its size.
    assert_eq!(heads(&m, &placed, &sizes), [35, 51, 19, 19, 35, 0x101]);
    // Both bitmaps are clear and every small bin points to itself: nothing to take from.
    assert_eq!(word_at(&m, &placed, STATE), 0, "smallmap");
    for i in 0..32 {
        let bin = STATE + SMALLBINS + 8 * i;
        assert_eq!(word_at(&m, &placed, bin + 8), bin, "bin {i} fd");
        assert_eq!(word_at(&m, &placed, bin + 12), bin, "bin {i} bk");
    }
    assert_eq!(
        word_at(&m, &placed, STATE + 24),
        HEAP + 144,
        "the top is where it was"
    );
}

#[test]
fn an_inconsistent_heap_is_an_error_and_the_image_is_left_as_it_was() {
    let chunks = [(32, true), (48, false), (16, true)];
    let mut segments = heap_image(&chunks);
    // The chunk after the free one claims its predecessor is in use.
    let heap = &mut segments[1].1;
    let at = (32 + 48 + 4) as usize;
    heap[at] |= 1;
    let (mut m, _) = module(&segments);
    let original = m.clone();

    let err = seal_heap(&mut m)
        .err()
        .expect("the walk finds the mismatch");

    assert!(err.contains("PINUSE"), "{err}");
    assert_eq!(m, original);
}

#[test]
fn an_image_without_an_allocator_state_is_an_error() {
    let (mut m, _) = module(&[(0x1000, words(&[1, 2, 3]))]);
    let err = seal_heap(&mut m).err().expect("no state");
    assert!(err.contains("dlmalloc"), "{err}");
}
