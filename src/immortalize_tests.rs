//! Unit tests of the build step that makes the snapshot's objects immortal
//! (`guests/build/immortalize.rs`, compiled into `build.rs`; included here only to test it).
//! The module under test lives outside `src/` because it is part of the guest's build recipe:
//! its source is hashed into the guest's build id.

#[path = "../guests/build/immortalize.rs"]
mod immortalize;

use immortalize::immortalize;

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
