//! The interpreter snapshot's memory image inside a built component: the active data segments of
//! its core modules, addressable by guest address. The build's passes over the snapshot
//! (`immortalize.rs`, `seal_heap.rs`) read and patch it in place: the component keeps its size
//! and layout.

use wasmparser::{DataKind, Encoding, Operator, Parser, Payload};

/// One active data segment of memory 0 of a core module.
pub struct Segment {
    pub address: u32,
    pub len: u32,
    pub file_offset: usize,
}

impl Segment {
    /// The segment's bytes in `component`.
    pub fn data<'a>(&self, component: &'a [u8]) -> &'a [u8] {
        &component[self.file_offset..self.file_offset + self.len as usize]
    }
}

/// One core module's memory image: the component's bytes and that module's segments, sorted.
pub struct Image<'a> {
    pub bytes: &'a mut [u8],
    pub segments: Vec<Segment>,
}

impl Image<'_> {
    pub fn locate(&self, address: u32) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.address <= address);
        let seg = self.segments.get(i.checked_sub(1)?)?;
        let delta = address.checked_sub(seg.address)?;
        (delta < seg.len).then(|| seg.file_offset + delta as usize)
    }

    /// Memory outside every segment is zero in the image.
    pub fn read_u32(&self, address: u32) -> u32 {
        let mut le = [0u8; 4];
        for (k, byte) in le.iter_mut().enumerate() {
            if let Some(at) = self.locate(address.wrapping_add(k as u32)) {
                *byte = self.bytes[at];
            }
        }
        u32::from_le_bytes(le)
    }

    /// Writes `value` if every nonzero byte of it falls in a segment (the rest are zero anyway).
    pub fn write_u32(&mut self, address: u32, value: u32) -> bool {
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

    /// A segment's bytes.
    pub fn data(&self, segment: &Segment) -> &[u8] {
        segment.data(self.bytes)
    }
}

/// The active, constant-offset data segments of memory 0 of each core module of `component`,
/// each module's sorted by address.
pub fn module_segments(component: &[u8]) -> Result<Vec<Vec<Segment>>, String> {
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
    for segments in &mut modules {
        segments.sort_by_key(|s| s.address);
    }
    Ok(modules)
}

/// The sorted segments of the core module whose memory image holds `marker` (a table the guest
/// left for the build, `what`), and the marker's guest address.
pub fn marked_segments(
    component: &[u8],
    marker: &[u8],
    what: &str,
) -> Result<(Vec<Segment>, u32), String> {
    let found = module_segments(component)?
        .into_iter()
        .find_map(|segments| {
            let at = segments.iter().find_map(|seg| {
                seg.data(component)
                    .windows(marker.len())
                    .position(|w| w == marker)
                    .map(|pos| seg.address + pos as u32)
            })?;
            Some((segments, at))
        });
    found.ok_or_else(|| format!("the guest's {what} is not in the image"))
}
