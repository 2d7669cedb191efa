//! Session snapshots: a session's whole state between two cells, as bytes that restore in any
//! process with the same runtime build.
//!
//! Between two cells no guest code runs (each cell is its own call into the guest), so the
//! guest's linear memories and globals are all the state it has; its tables do not change
//! after instantiation. A snapshot keeps the memory pages that differ from the runtime's own
//! image (what a fresh instance maps before running anything), every global the guest's core
//! instances define, the files of the working directory, and the environment and arguments the
//! session started with. Restoring starts a fresh session of the same build (its host side —
//! stdio, directories — set up as every session's is), then writes the snapshot's pages and
//! globals over it and resets every page the fresh start wrote that the snapshot does not hold.
//!
//! Not captured, and so refused: a file the session holds open (the host's side of it is not in
//! the guest's memory), a deterministic run's seeded randomness and virtual clock, and a cell in
//! progress (a snapshot waits for the running cell to end).
//!
//! A *save* ([`crate::RunControl::save`]) is a snapshot of only what changed since the
//! session's last save: within the pages that save held, the 256-byte blocks whose contents
//! differ; the pages it did not hold that now differ from the image, whole; the files that
//! changed, and the names of those that did not. The session keeps hashes of what its last save
//! held (XXH3: 128 bits a page, to skip unchanged pages, and 64 bits a block; 144 bytes a page),
//! so finding the changes reads only the pages the instance wrote. A cell that changes one
//! variable writes ~40 pages (the interpreter's allocator and collector) but ~2 KB of them: its
//! save holds ~25 KB of blocks instead of ~160 KB of pages. The first save, and one asked to be
//! whole, holds everything. [`Snapshot::apply`] lays a save over the one before it; a chain of
//! saves folded from its whole first one is the session's latest state. A restored session's
//! first save is whole.
//!
//! On disk: `WEIRSNAP`, a format version (u32, little endian), then one zstd frame (with its
//! checksum) holding a JSON header and the page and file bytes it describes.

use crate::error::{Error, Result};
use crate::pagefile::{Mapped, PageFile};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use wasmtime::{AsContextMut, Global, Memory, Mutability, Val};

/// The unit a snapshot compares and stores memory in, bytes.
pub const PAGE_BYTES: usize = 4096;
/// The unit a save of changes stores changed parts of pages in, bytes.
const BLOCK_BYTES: usize = 256;
const BLOCKS_PER_PAGE: usize = PAGE_BYTES / BLOCK_BYTES;
/// Largest snapshot read back, bytes once decompressed: a 32-bit guest's whole memory plus
/// its files.
pub const MAX_SNAPSHOT_BYTES: u64 = 5 << 30;

const MAGIC: &[u8; 8] = b"WEIRSNAP";
/// Version 2 added saves of changes (`Header::changes`, `Header::kept`); version 1 reads as
/// a whole snapshot.
const VERSION: u32 = 2;
const OLDEST_VERSION: u32 = 1;
/// zstd's fast end: a snapshot is taken while the session waits, and pages of interpreter heap
/// compress about 4:1 at this level already.
const LEVEL: i32 = 1;

/// A global's value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum GlobalValue {
    /// `i32`.
    I32(i32),
    /// `i64`.
    I64(i64),
    /// `f32`, as bits.
    F32(u32),
    /// `f64`, as bits.
    F64(u64),
    /// `v128`, as two halves (low, high).
    V128(u64, u64),
    /// A reference: kept as the instance has it (such globals do not change after start).
    Ref,
}

/// One linear memory: its length and the pages that differ from the image, as runs of pages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MemoryHeader {
    /// Its length, bytes (a multiple of 64 KiB).
    len: u64,
    /// `(first page, count)`, ascending and disjoint; their bytes follow in this order.
    runs: Vec<(u32, u32)>,
    /// A save of changes only: `(first block, count)` of [`BLOCK_BYTES`] blocks within pages the
    /// save before it holds, ascending and disjoint; their bytes follow the pages'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    blocks: Vec<(u32, u32)>,
}

/// Everything but the bytes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Header {
    runtime: String,
    build: String,
    memories: Vec<MemoryHeader>,
    globals: Vec<GlobalValue>,
    /// `(path, size)`; their bytes follow the pages', in this order.
    files: Vec<(String, u64)>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// It holds only what changed since the save before it ([`Snapshot::apply`]).
    #[serde(default)]
    changes: bool,
    /// Files unchanged since the save before it (a save of changes only).
    #[serde(default)]
    kept: Vec<String>,
    /// A deterministic session's seed, random sources and virtual clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    determinism: Option<Determinism>,
}

/// Where a deterministic session's host-side state was: its seed, how far each random source
/// had gone (32-bit words; as strings, past JSON's integers), its virtual clock's reading and
/// the file identities it had handed out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Determinism {
    pub seed: u64,
    pub secure_words: String,
    pub insecure_words: String,
    pub elapsed_ns: u64,
    pub file_ids: u64,
    /// The fuel the session had left: its budget for the whole session goes on from there.
    #[serde(default)]
    pub fuel_left: Option<u64>,
    /// Fuel burnt since the clock's last whole nanosecond: the restored clock counts it, so it
    /// ticks exactly as the session's own would have.
    #[serde(default)]
    pub sub_ns_fuel: u64,
}

impl Determinism {
    /// The random sources' positions, `(secure, insecure)`.
    pub fn positions(&self) -> Result<(u128, u128)> {
        let parse = |s: &str| {
            s.parse::<u128>()
                .map_err(|_| Error::SnapshotCorrupted("a random source's position".into()))
        };
        Ok((parse(&self.secure_words)?, parse(&self.insecure_words)?))
    }
}

/// A session's state between two cells. See the module documentation for what it holds.
#[derive(Debug, Clone)]
pub struct Snapshot {
    header: Header,
    /// Per memory, its stored pages' bytes, concatenated.
    pages: Vec<PageBytes>,
    files: Vec<Vec<u8>>,
}

/// One memory's stored pages: on the heap, or (a fork's) in a page file that sessions map
/// copy-on-write (`crate::pagefile`).
#[derive(Debug, Clone)]
pub(crate) enum PageBytes {
    Heap(Vec<u8>),
    Shared {
        file: Arc<PageFile>,
        at: usize,
        len: usize,
    },
}

impl std::ops::Deref for PageBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            PageBytes::Heap(bytes) => bytes,
            PageBytes::Shared { file, at, len } => &file.bytes()[*at..*at + *len],
        }
    }
}

impl PartialEq for PageBytes {
    fn eq(&self, other: &PageBytes) -> bool {
        **self == **other
    }
}

impl From<Vec<u8>> for PageBytes {
    fn from(bytes: Vec<u8>) -> PageBytes {
        PageBytes::Heap(bytes)
    }
}

impl Snapshot {
    /// The runtime it was taken in.
    pub fn runtime(&self) -> &str {
        &self.header.runtime
    }

    /// The runtime build it restores in.
    pub fn build(&self) -> &str {
        &self.header.build
    }

    /// The working directory's files, `(relative path, bytes)`.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.header
            .files
            .iter()
            .zip(&self.files)
            .map(|((path, _), bytes)| (path.as_str(), bytes.as_slice()))
    }

    /// The environment the session started with.
    pub fn env(&self) -> &[(String, String)] {
        &self.header.env
    }

    /// `sys.argv[1:]` of the session.
    pub fn args(&self) -> &[String] {
        &self.header.args
    }

    /// The memory the guest had: what restoring it needs under its memory limit, bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.header.memories.iter().map(|m| m.len).sum()
    }

    /// Bytes of memory pages it stores (those that differ from the runtime's image, or for a
    /// save of changes, from the save before it).
    pub fn stored_page_bytes(&self) -> u64 {
        self.pages.iter().map(|p| p.len() as u64).sum()
    }

    /// A deterministic session's seed: a session restored from it is deterministic with it, its
    /// random sources and virtual clock where they were.
    pub fn seed(&self) -> Option<u64> {
        self.header.determinism.as_ref().map(|d| d.seed)
    }

    pub(crate) fn determinism(&self) -> Option<&Determinism> {
        self.header.determinism.as_ref()
    }

    pub(crate) fn with_determinism(mut self, determinism: Option<Determinism>) -> Self {
        self.header.determinism = determinism;
        self
    }

    /// Whether it holds only the changes since an earlier save ([`Snapshot::apply`] it to that
    /// save to restore it).
    pub fn is_changes(&self) -> bool {
        self.header.changes
    }

    /// Lays `next`, the save that followed this one, over it: `self` becomes the session's state
    /// at `next` ([`Snapshot::fold`]).
    pub fn apply(&mut self, next: &Snapshot) -> Result<()> {
        *self = Snapshot::fold([self.clone(), next.clone()])?;
        Ok(())
    }

    /// The session's state at the last of `saves`: the first whole, each later one laid over
    /// the one before (a whole one replaces what came before it). Refused for a chain that
    /// starts with changes, a save of another runtime build or memory shape, or one changing a
    /// page or keeping a file the state before it lacks.
    pub fn fold(saves: impl IntoIterator<Item = Snapshot>) -> Result<Snapshot> {
        let mut saves = saves.into_iter();
        let first = saves
            .next()
            .ok_or_else(|| Error::SnapshotCorrupted("no saves".into()))?;
        let mut state = Unfolded::of(first)?;
        for next in saves {
            state.lay(next)?;
        }
        Ok(state.into_snapshot())
    }

    /// The snapshot as bytes (compressed).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = serde_json::to_vec(&self.header)
            .map_err(|e| Error::SnapshotCorrupted(e.to_string()))?;
        let mut out = Vec::with_capacity(self.stored_page_bytes() as usize / 3);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let io = |e: std::io::Error| Error::SnapshotCorrupted(e.to_string());
        let header_len = u32::try_from(header.len())
            .map_err(|_| Error::SnapshotCorrupted("header too large".into()))?;
        let mut context = Contexts::take();
        let mut raw = zstd::stream::raw::Encoder::with_context(&mut context);
        let params = [
            zstd::stream::raw::CParameter::CompressionLevel(LEVEL),
            zstd::stream::raw::CParameter::ChecksumFlag(true),
        ];
        for param in params {
            raw.set_parameter(param).map_err(io)?;
        }
        let mut z = zstd::stream::zio::Writer::new(out, raw);
        z.write_all(&header_len.to_le_bytes()).map_err(io)?;
        z.write_all(&header).map_err(io)?;
        for bytes in self
            .pages
            .iter()
            .map(|p| &**p)
            .chain(self.files.iter().map(|f| &f[..]))
        {
            z.write_all(bytes).map_err(io)?;
        }
        z.finish().map_err(io)?;
        let (out, _) = z.into_inner();
        Contexts::put(context);
        Ok(out)
    }

    /// Reads a snapshot written by [`Snapshot::to_bytes`], checking its format, checksum and
    /// consistency (not yet its runtime build: restoring does).
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(Error::NotASnapshot)?;
        let (version, body) = rest.split_at_checked(4).ok_or(Error::NotASnapshot)?;
        let version = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(Error::SnapshotVersion {
                version,
                supported: VERSION,
            });
        }
        let corrupted = |e: std::io::Error| Error::SnapshotCorrupted(e.to_string());
        let z = zstd::stream::read::Decoder::new(body).map_err(corrupted)?;
        let mut plain = Vec::new();
        z.take(MAX_SNAPSHOT_BYTES + 1)
            .read_to_end(&mut plain)
            .map_err(corrupted)?;
        if plain.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(Error::SnapshotTooLarge {
                max: MAX_SNAPSHOT_BYTES,
            });
        }
        Self::parse(&plain)
    }

    fn parse(plain: &[u8]) -> Result<Snapshot> {
        let mut at = Cursor(plain);
        let header_len = u32::from_le_bytes(at.take(4)?.try_into().unwrap_or_default());
        let header: Header = serde_json::from_slice(at.take(header_len as usize)?)
            .map_err(|e| Error::SnapshotCorrupted(format!("header: {e}")))?;
        let mut pages = Vec::new();
        for memory in &header.memories {
            let bytes = check_runs(memory, header.changes)?;
            pages.push(at.take(bytes)?.to_vec().into());
        }
        let mut files = Vec::new();
        for (_, size) in &header.files {
            let size = usize::try_from(*size).map_err(|_| short())?;
            files.push(at.take(size)?.to_vec());
        }
        if !at.0.is_empty() {
            return Err(Error::SnapshotCorrupted("bytes after the last file".into()));
        }
        Ok(Snapshot {
            header,
            pages,
            files,
        })
    }
}

/// A session's state while saves are laid over it: its pages by number.
struct Unfolded {
    header: Header,
    memories: Vec<std::collections::BTreeMap<u32, Vec<u8>>>,
    files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Unfolded {
    fn of(whole: Snapshot) -> Result<Unfolded> {
        if whole.header.changes {
            return Err(Error::SnapshotShape(
                "a chain of saves starts with a whole one".into(),
            ));
        }
        let memories = whole
            .header
            .memories
            .iter()
            .zip(&whole.pages)
            .map(|(m, bytes)| page_list(m, bytes).map(|(p, b)| (p, b.to_vec())).collect())
            .collect();
        let files = whole
            .files()
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .collect();
        Ok(Unfolded {
            header: whole.header,
            memories,
            files,
        })
    }

    fn lay(&mut self, next: Snapshot) -> Result<()> {
        next.check_build(&self.header.runtime, &self.header.build)?;
        if !next.header.changes {
            *self = Unfolded::of(next)?;
            return Ok(());
        }
        let (old, new) = (&self.header.memories, &next.header.memories);
        if old.len() != new.len() || old.iter().zip(new).any(|(o, n)| n.len < o.len) {
            return Err(Error::SnapshotShape(
                "a save's memories do not extend the save before it".into(),
            ));
        }
        for (m, (memory, bytes)) in new.iter().zip(&next.pages).enumerate() {
            let pages = &mut self.memories[m];
            for (page, bytes) in page_list(memory, bytes) {
                pages.insert(page, bytes.to_vec());
            }
            for (block, bytes) in block_list(memory, bytes) {
                let page = block / BLOCKS_PER_PAGE as u32;
                let at = (block as usize % BLOCKS_PER_PAGE) * BLOCK_BYTES;
                let held = pages.get_mut(&page).ok_or_else(|| {
                    Error::SnapshotCorrupted(format!(
                        "a save changes page {page}, which the save before it lacks"
                    ))
                })?;
                held[at..at + BLOCK_BYTES].copy_from_slice(bytes);
            }
        }
        let mut files = std::collections::BTreeMap::new();
        for path in &next.header.kept {
            let bytes = self.files.remove(path).ok_or_else(|| {
                Error::SnapshotCorrupted(format!(
                    "a save keeps {path:?}, which the save before it lacks"
                ))
            })?;
            files.insert(path.clone(), bytes);
        }
        files.extend(next.files().map(|(p, b)| (p.to_string(), b.to_vec())));
        self.files = files;
        let lens = next.header.memories.iter().map(|m| m.len);
        for (memory, len) in self.header.memories.iter_mut().zip(lens) {
            memory.len = len;
        }
        self.header.globals = next.header.globals;
        self.header.determinism = next.header.determinism;
        self.header.env = next.header.env;
        self.header.args = next.header.args;
        Ok(())
    }

    fn into_snapshot(self) -> Snapshot {
        let mut pages = Vec::with_capacity(self.memories.len());
        let mut memories = Vec::with_capacity(self.memories.len());
        for (memory, held) in self.header.memories.iter().zip(self.memories) {
            let mut gathered = Pages::default();
            for (page, bytes) in held {
                gathered.push(page as usize, &bytes);
            }
            memories.push(MemoryHeader {
                len: memory.len,
                runs: gathered.runs,
                blocks: Vec::new(),
            });
            pages.push(gathered.bytes.into());
        }
        let (env, args) = (self.header.env.clone(), self.header.args.clone());
        let header = Header {
            memories,
            files: Vec::new(),
            changes: false,
            kept: Vec::new(),
            ..self.header
        };
        Snapshot {
            header,
            pages,
            files: Vec::new(),
        }
        .with_host(self.files.into_iter().collect(), env, args, None)
    }
}

/// Compression contexts kept for the next snapshot: making one costs about as much as
/// compressing a small save (~0.1 ms). At most [`Contexts::KEPT`] (~1 MiB each).
struct Contexts;

static CONTEXTS: std::sync::Mutex<Vec<zstd::zstd_safe::CCtx<'static>>> =
    std::sync::Mutex::new(Vec::new());

impl Contexts {
    const KEPT: usize = 4;

    fn take() -> zstd::zstd_safe::CCtx<'static> {
        let kept = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner()).pop();
        kept.unwrap_or_default()
    }

    fn put(context: zstd::zstd_safe::CCtx<'static>) {
        let mut kept = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < Self::KEPT {
            kept.push(context);
        }
    }
}

fn short() -> Error {
    Error::SnapshotCorrupted("it ends early".into())
}

/// Reads a snapshot's body front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n).ok_or_else(short)?;
        self.0 = rest;
        Ok(head)
    }
}

/// The bytes a memory's runs (and a save of changes' blocks) hold, once they are in order and
/// inside its length.
fn check_runs(memory: &MemoryHeader, changes: bool) -> Result<usize> {
    if !memory.len.is_multiple_of(64 << 10) || memory.len > 1 << 32 {
        return Err(Error::SnapshotCorrupted(format!(
            "memory length {}",
            memory.len
        )));
    }
    if !changes && !memory.blocks.is_empty() {
        return Err(Error::SnapshotCorrupted(
            "blocks in a whole snapshot".into(),
        ));
    }
    let pages = count_units(&memory.runs, memory.len / PAGE_BYTES as u64)?;
    let blocks = count_units(&memory.blocks, memory.len / BLOCK_BYTES as u64)?;
    Ok(pages * PAGE_BYTES + blocks * BLOCK_BYTES)
}

/// The number of units `runs` name, once they are in order and below `limit`.
fn count_units(runs: &[(u32, u32)], limit: u64) -> Result<usize> {
    let mut next = 0u64;
    let mut count = 0usize;
    for &(first, n) in runs {
        let end = u64::from(first) + u64::from(n);
        if u64::from(first) < next || n == 0 || end > limit {
            return Err(Error::SnapshotCorrupted("page runs out of order".into()));
        }
        next = end;
        count += n as usize;
    }
    Ok(count)
}

/// The values of `globals`.
pub(crate) fn read_globals(
    mut store: impl AsContextMut,
    globals: &[Global],
) -> Result<Vec<GlobalValue>> {
    globals
        .iter()
        .map(|g| match g.get(&mut store) {
            Val::I32(x) => Ok(GlobalValue::I32(x)),
            Val::I64(x) => Ok(GlobalValue::I64(x)),
            Val::F32(x) => Ok(GlobalValue::F32(x)),
            Val::F64(x) => Ok(GlobalValue::F64(x)),
            Val::V128(x) => {
                let x = x.as_u128();
                Ok(GlobalValue::V128(x as u64, (x >> 64) as u64))
            }
            _ if g.ty(&store).mutability() == Mutability::Const => Ok(GlobalValue::Ref),
            _ => Err(Error::SnapshotUnsupported(
                "a guest with reference globals".into(),
            )),
        })
        .collect()
}

/// The page of `image` at `page` (zeros outside it).
fn image_page<'a>(image: Option<(u64, &'a [u8])>, page: usize, zero: &'a [u8]) -> &'a [u8] {
    let Some((offset, bytes)) = image else {
        return zero;
    };
    let start = page * PAGE_BYTES;
    let Some(from) = (start as u64).checked_sub(offset) else {
        return zero;
    };
    match bytes.get(from as usize..from as usize + PAGE_BYTES) {
        Some(p) => p,
        None => zero,
    }
}

/// What a session's last save held ([`crate::RunControl::save`]): a hash of each page it
/// stored, per memory, and of each file; `None` before the first save.
#[derive(Debug, Default)]
pub(crate) struct Saved {
    pages: Vec<HashMap<u32, PageHashes>>,
    files: HashMap<String, u128>,
    taken: bool,
}

fn hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// What a save held of one page: its hash, and each block's.
#[derive(Debug, Clone)]
struct PageHashes {
    page: u128,
    blocks: [u64; BLOCKS_PER_PAGE],
}

impl PageHashes {
    fn of(page: &[u8]) -> PageHashes {
        let mut blocks = [0u64; BLOCKS_PER_PAGE];
        for (h, block) in blocks.iter_mut().zip(page.chunks_exact(BLOCK_BYTES)) {
            *h = xxhash_rust::xxh3::xxh3_64(block);
        }
        PageHashes {
            page: hash(page),
            blocks,
        }
    }
}

/// `(block, bytes)` of each block a save of changes holds in a memory, in order (`bytes`: the
/// memory's stored bytes, pages first).
fn block_list<'a>(
    memory: &'a MemoryHeader,
    bytes: &'a [u8],
) -> impl Iterator<Item = (u32, &'a [u8])> + 'a {
    let pages: usize = memory.runs.iter().map(|&(_, n)| n as usize).sum();
    let blocks = bytes.get(pages * PAGE_BYTES..).unwrap_or_default();
    memory
        .blocks
        .iter()
        .flat_map(|&(first, n)| first..first + n)
        .zip(blocks.chunks_exact(BLOCK_BYTES))
}

/// `(page, bytes)` of each page a memory's runs hold, in order.
fn page_list<'a>(
    memory: &'a MemoryHeader,
    bytes: &'a [u8],
) -> impl Iterator<Item = (u32, &'a [u8])> + 'a {
    memory
        .runs
        .iter()
        .flat_map(|&(first, n)| first..first + n)
        .zip(bytes.chunks_exact(PAGE_BYTES))
}

/// Pages (or blocks) being gathered in ascending order: runs and their bytes.
#[derive(Default)]
struct Pages {
    runs: Vec<(u32, u32)>,
    bytes: Vec<u8>,
}

impl Pages {
    fn push(&mut self, page: usize, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.push_page(page);
    }

    /// Adds `page` to the runs only.
    fn push_page(&mut self, page: usize) {
        match self.runs.last_mut() {
            Some((first, n)) if (*first + *n) as usize == page => *n += 1,
            _ => self.runs.push((page as u32, 1)),
        }
    }
}

/// Captures a session: the pages of each memory that differ from its image, and the globals.
/// With `saved` (a save), only the pages that differ from what the last save held, and
/// `saved` then records this save's.
pub(crate) fn capture(
    images: &[Option<(u64, &[u8])>],
    data: &[&[u8]],
    globals: Vec<GlobalValue>,
    runtime: String,
    build: String,
    mapped: &Mapped,
    mut saved: Option<&mut Saved>,
) -> Snapshot {
    let zero = [0u8; PAGE_BYTES];
    let mut memories = Vec::new();
    let mut pages = Vec::new();
    let changes = saved.as_ref().is_some_and(|s| s.taken);
    if let Some(saved) = saved.as_mut() {
        saved.pages.resize_with(data.len(), HashMap::new);
    }
    for (m, (memory, image)) in data.iter().zip(images).enumerate() {
        let (mut gathered, mut blocks) = (Pages::default(), Pages::default());
        let mut record = saved.as_mut().map(|s| &mut s.pages[m]);
        let untouched = untouched_pages(memory, mapped.pages(m));
        for (page, now) in memory.chunks_exact(PAGE_BYTES).enumerate() {
            // A page a save holds differs from the image: the instance wrote it.
            if untouched.get(page).copied().unwrap_or(false) {
                continue;
            }
            let held = record.as_mut().and_then(|r| r.get_mut(&(page as u32)));
            if let Some(held) = held {
                changed_blocks(held, page, now, &mut blocks);
                continue;
            }
            if now == image_page(*image, page, &zero) {
                continue;
            }
            if let Some(record) = record.as_mut() {
                record.insert(page as u32, PageHashes::of(now));
            }
            gathered.push(page, now);
        }
        gathered.bytes.extend_from_slice(&blocks.bytes);
        memories.push(MemoryHeader {
            len: memory.len() as u64,
            runs: gathered.runs,
            blocks: blocks.runs,
        });
        pages.push(gathered.bytes.into());
    }
    Snapshot {
        header: Header {
            runtime,
            build,
            memories,
            globals,
            files: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            changes,
            kept: Vec::new(),
            determinism: None,
        },
        pages,
        files: Vec::new(),
    }
}

/// Gathers the blocks of `page` (held by the last save, as `held` says) that changed since, and
/// records them.
fn changed_blocks(held: &mut PageHashes, page: usize, now: &[u8], into: &mut Pages) {
    let is = hash(now);
    if is == held.page {
        return;
    }
    held.page = is;
    for (b, block) in now.chunks_exact(BLOCK_BYTES).enumerate() {
        let h = xxhash_rust::xxh3::xxh3_64(block);
        if h != held.blocks[b] {
            held.blocks[b] = h;
            into.push(page * BLOCKS_PER_PAGE + b, block);
        }
    }
}

impl Snapshot {
    /// Adds the session's working-directory files, environment and arguments. With `saved` (a
    /// save of changes), a file whose bytes the last save held already is named in `kept`
    /// instead, and `saved` records this save's files.
    pub(crate) fn with_host(
        mut self,
        files: Vec<(String, Vec<u8>)>,
        env: Vec<(String, String)>,
        args: Vec<String>,
        saved: Option<&mut Saved>,
    ) -> Snapshot {
        let stored = match saved {
            None => files,
            Some(saved) => {
                let mut stored = Vec::with_capacity(files.len());
                let mut now = HashMap::with_capacity(files.len());
                for (path, bytes) in files {
                    let h = hash(&bytes);
                    if self.header.changes && saved.files.get(&path) == Some(&h) {
                        self.header.kept.push(path.clone());
                    } else {
                        stored.push((path.clone(), bytes));
                    }
                    now.insert(path, h);
                }
                saved.files = now;
                saved.taken = true;
                stored
            }
        };
        self.header.files = stored
            .iter()
            .map(|(p, b)| (p.clone(), b.len() as u64))
            .collect();
        self.files = stored.into_iter().map(|(_, b)| b).collect();
        self.header.env = env;
        self.header.args = args;
        self
    }

    /// Checks that it was taken in this runtime build.
    pub(crate) fn check_build(&self, runtime: &str, build: &str) -> Result<()> {
        if self.header.runtime == runtime && self.header.build == build {
            return Ok(());
        }
        Err(Error::SnapshotBuild {
            runtime: self.header.runtime.clone(),
            build: self.header.build.clone(),
            current: format!("{runtime:?} build {build}"),
        })
    }
}

/// Grows each memory to the snapshot's length and checks the guest has the snapshot's shape.
pub(crate) fn prepare(
    mut store: impl AsContextMut,
    globals: &[Global],
    memories: &[Memory],
    snapshot: &Snapshot,
) -> Result<()> {
    let h = &snapshot.header;
    if h.changes {
        return Err(Error::SnapshotShape(
            "it holds only the changes since an earlier save: it restores laid over that save"
                .into(),
        ));
    }
    if globals.len() != h.globals.len() || memories.len() != h.memories.len() {
        return Err(Error::SnapshotShape(format!(
            "{} globals and {} memories, the snapshot has {} and {}",
            globals.len(),
            memories.len(),
            h.globals.len(),
            h.memories.len()
        )));
    }
    for (memory, want) in memories.iter().zip(&h.memories) {
        let now = memory.data_size(&store) as u64;
        if now > want.len {
            return Err(Error::SnapshotShape(format!(
                "a fresh instance's memory ({now} bytes) is larger than the snapshot's ({})",
                want.len
            )));
        }
        let grow = (want.len - now) / (64 << 10);
        if grow > 0 {
            memory
                .grow(&mut store, grow)
                .map_err(|e| Error::SnapshotGuest(format!("growing memory: {e}")))?;
        }
    }
    Ok(())
}

/// The writes that turn each memory of a fresh instance into the snapshot's: the snapshot's
/// pages where they differ from it, and the image's where the fresh start wrote a page the
/// snapshot does not hold. `(memory, page, bytes)`, the bytes borrowed from the snapshot or
/// copied from the image.
pub(crate) fn plan_writes<'s>(
    data: &[&[u8]],
    images: &[Option<(u64, &[u8])>],
    snapshot: &'s Snapshot,
    mapped: &[bool],
) -> Vec<(usize, usize, std::borrow::Cow<'s, [u8]>)> {
    let mut writes = Vec::new();
    for (m, (memory, want)) in data.iter().zip(&snapshot.header.memories).enumerate() {
        if mapped.get(m).copied().unwrap_or(false) {
            continue;
        }
        let stored = &snapshot.pages[m];
        let image = images.get(m).copied().flatten();
        fresh_pages(memory, image, &want.runs, |page, fresh| match fresh {
            Fresh::Held(at) => {
                let bytes = &stored[at..at + PAGE_BYTES];
                if memory[page * PAGE_BYTES..][..PAGE_BYTES] != *bytes {
                    writes.push((m, page, std::borrow::Cow::Borrowed(bytes)));
                }
            }
            Fresh::Stale(image) => writes.push((m, page, std::borrow::Cow::Owned(image.to_vec()))),
        });
    }
    writes
}

/// A page of a fresh instance's memory, as a snapshot laid over it sees it ([`fresh_pages`]).
enum Fresh<'a> {
    /// The snapshot holds it; its bytes start at this offset of the snapshot's stored pages.
    Held(usize),
    /// The snapshot does not hold it, and the fresh start wrote it away from the image, whose
    /// bytes for it these are.
    Stale(&'a [u8]),
}

/// Calls `visit` with each page of a fresh instance's `memory` that a snapshot holding `runs`
/// (over `image`) must change: every page it holds, and every other page the fresh start wrote
/// away from the image.
fn fresh_pages(
    memory: &[u8],
    image: Option<(u64, &[u8])>,
    runs: &[(u32, u32)],
    mut visit: impl FnMut(usize, Fresh<'_>),
) {
    let zero = [0u8; PAGE_BYTES];
    let untouched = untouched_pages(memory, &[]);
    let mut runs = runs.iter().copied().peekable();
    let mut at = 0usize;
    for (page, now) in memory.chunks_exact(PAGE_BYTES).enumerate() {
        while matches!(runs.peek(), Some(&(first, n)) if (first + n) as usize <= page) {
            runs.next();
        }
        if matches!(runs.peek(), Some(&(first, _)) if first as usize <= page) {
            visit(page, Fresh::Held(at));
            at += PAGE_BYTES;
            continue;
        }
        if untouched.get(page).copied().unwrap_or(false) {
            continue;
        }
        let image = image_page(image, page, &zero);
        if now != image {
            visit(page, Fresh::Stale(image));
        }
    }
}

/// Whether the host's pages are a snapshot's (4 KiB): only then can a snapshot's runs of pages
/// be mapped.
pub(crate) fn pages_fit() -> bool {
    // SAFETY: `sysconf` reads a constant of the system.
    #[allow(unsafe_code)]
    let host = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    host == PAGE_BYTES as libc::c_long
}

/// A session's files `(path, bytes)`, environment and arguments.
pub(crate) type HostSide = (Vec<(String, Vec<u8>)>, Vec<(String, String)>, Vec<String>);

/// The pages of a fresh instance's `memory` that its start wrote, that differ from `image`,
/// and that the snapshot's `runs` do not cover: handed back to the operating system
/// (`MADV_DONTNEED`), they read as the image again. As `(first page, count)`.
pub(crate) fn stale_pages(
    memory: &[u8],
    image: Option<(u64, &[u8])>,
    runs: &[(u32, u32)],
) -> Vec<(u32, u32)> {
    let mut stale = Pages::default();
    fresh_pages(memory, image, runs, |page, fresh| {
        if let Fresh::Stale(_) = fresh {
            stale.push_page(page);
        }
    });
    stale.runs
}

impl Snapshot {
    /// Widens a fork's stored pages, from `data` (the memories captured, unchanged since):
    /// every page `mapped` says the session maps from an earlier fork's file is stored too, even
    /// one that now equals the image, so that mapping the session from this snapshot's file
    /// replaces every earlier mapping and no earlier file stays pinned by a stray page; and runs
    /// `gap` pages or fewer apart are joined, the pages between stored too (as the image's
    /// bytes): fewer, longer runs are fewer mappings, each a call that takes the process's
    /// memory-map lock.
    pub(crate) fn widen(&mut self, data: &[&[u8]], gap: u32, mapped: &Mapped) {
        if self.header.changes {
            return;
        }
        for (m, memory) in data.iter().enumerate() {
            let Some(header) = self.header.memories.get_mut(m) else {
                continue;
            };
            let pages = memory.len() / PAGE_BYTES;
            let mut want = vec![false; pages];
            for &(first, n) in &header.runs {
                want[first as usize..(first + n) as usize].fill(true);
            }
            for (page, w) in want.iter_mut().enumerate() {
                *w |= crate::pagefile::is_set(mapped.pages(m), page);
            }
            let mut joined = Pages::default();
            let mut last: Option<usize> = None;
            for page in (0..pages).filter(|&p| want[p]) {
                if let Some(end) = last.filter(|&l| page - l - 1 <= gap as usize) {
                    for between in end + 1..page {
                        joined.push(between, &memory[between * PAGE_BYTES..][..PAGE_BYTES]);
                    }
                }
                joined.push(page, &memory[page * PAGE_BYTES..][..PAGE_BYTES]);
                last = Some(page);
            }
            header.runs = joined.runs;
            self.pages[m] = joined.bytes.into();
        }
    }

    /// Moves the stored pages into one page file, to be mapped copy-on-write
    /// (`crate::pagefile`). A save of changes is not moved (it restores only folded).
    pub(crate) fn share(&mut self) -> std::io::Result<()> {
        if self.header.changes {
            return Ok(());
        }
        let parts: Vec<&[u8]> = self.pages.iter().map(|p| &**p).collect();
        let (file, starts) = PageFile::new(&parts)?;
        self.pages = self
            .pages
            .iter()
            .zip(starts)
            .map(|(p, at)| PageBytes::Shared {
                file: file.clone(),
                at,
                len: p.len(),
            })
            .collect();
        Ok(())
    }

    /// Memory `m`'s pages as a page file maps them: the file, its runs of pages `(first page,
    /// count)` and the same as `(offset, length, file offset)` in bytes. `None` when its pages
    /// are on the heap.
    #[allow(clippy::type_complexity)]
    pub(crate) fn shared(
        &self,
        m: usize,
    ) -> Option<(&Arc<PageFile>, &[(u32, u32)], Vec<(usize, usize, u64)>)> {
        let PageBytes::Shared { file, at, .. } = self.pages.get(m)? else {
            return None;
        };
        let runs = &self.header.memories.get(m)?.runs;
        let mut offset = *at;
        let bytes = runs
            .iter()
            .map(|&(first, n)| {
                let run = (
                    first as usize * PAGE_BYTES,
                    n as usize * PAGE_BYTES,
                    offset as u64,
                );
                offset += n as usize * PAGE_BYTES;
                run
            })
            .collect();
        Some((file, runs, bytes))
    }

    /// The same snapshot without its files' bytes (a fork's, kept by its session to give the
    /// next fork when nothing has run since).
    pub(crate) fn without_files(&self) -> Snapshot {
        let mut header = self.header.clone();
        header.files.clear();
        Snapshot {
            header,
            pages: self.pages.clone(),
            files: Vec::new(),
        }
    }
}

/// For each page of `memory`, whether it surely still holds what the instance started with: a
/// page of the copy-on-write image never written (present and file-backed), or a page never
/// touched at all (absent, not swapped). Such pages need no comparison: a snapshot reads only
/// the others, which in an idle session are a few hundred of its thousands. Read from
/// `/proc/self/pagemap` (8 bytes a page); empty where it cannot be read, and every page is
/// compared then.
///
/// Pages mapped from a page file (`mapped`, a bit each) look like image pages to the operating
/// system but hold a fork's bytes: they are never counted untouched.
fn untouched_pages(memory: &[u8], mapped: &[u64]) -> Vec<bool> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;
    // SAFETY: `sysconf` reads a constant of the system.
    #[allow(unsafe_code)]
    let host_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let address = memory.as_ptr() as usize;
    if host_page != PAGE_BYTES as libc::c_long || !address.is_multiple_of(PAGE_BYTES) {
        return Vec::new();
    }
    let pages = memory.len() / PAGE_BYTES;
    let mut raw = vec![0u8; pages * 8];
    let read = std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut raw, (address / PAGE_BYTES * 8) as u64));
    if read.is_err() {
        return Vec::new();
    }
    raw.chunks_exact(8)
        .enumerate()
        .map(|(page, e)| {
            let entry = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
            let untouched = match entry & PRESENT != 0 {
                true => entry & FILE_OR_SHARED != 0,
                false => entry & SWAPPED == 0,
            };
            untouched && !crate::pagefile::is_set(mapped, page)
        })
        .collect()
}

/// Sets every mutable global to the snapshot's value.
pub(crate) fn write_globals(
    mut store: impl AsContextMut,
    globals: &[Global],
    snapshot: &Snapshot,
) -> Result<()> {
    for (g, value) in globals.iter().zip(&snapshot.header.globals) {
        if g.ty(&store).mutability() == Mutability::Const {
            continue;
        }
        let val = match *value {
            GlobalValue::I32(x) => Val::I32(x),
            GlobalValue::I64(x) => Val::I64(x),
            GlobalValue::F32(x) => Val::F32(x),
            GlobalValue::F64(x) => Val::F64(x),
            GlobalValue::V128(lo, hi) => Val::V128((u128::from(lo) | u128::from(hi) << 64).into()),
            GlobalValue::Ref => continue,
        };
        g.set(&mut store, val)
            .map_err(|e| Error::SnapshotShape(format!("a global: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            header: Header {
                runtime: "python".into(),
                build: "b1".into(),
                memories: vec![MemoryHeader {
                    len: 64 << 10,
                    runs: vec![(1, 2), (5, 1)],
                    blocks: Vec::new(),
                }],
                globals: vec![GlobalValue::I32(7), GlobalValue::V128(1, 2)],
                files: Vec::new(),
                env: vec![("A".into(), "1".into())],
                args: vec!["x".into()],
                changes: false,
                kept: Vec::new(),
                determinism: None,
            },
            pages: vec![vec![3u8; 3 * PAGE_BYTES].into()],
            files: Vec::new(),
        }
        .with_host(
            vec![("a.txt".into(), b"hello".to_vec())],
            vec![],
            vec![],
            None,
        )
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let s = sample();
        let bytes = s.to_bytes().unwrap();
        let back = Snapshot::from_bytes(&bytes).unwrap();
        assert_eq!(back.header.memories, s.header.memories);
        assert_eq!(back.header.globals, s.header.globals);
        assert_eq!(back.pages, s.pages);
        assert_eq!(
            back.files().collect::<Vec<_>>(),
            vec![("a.txt", &b"hello"[..])]
        );
    }

    #[test]
    fn damaged_bytes_are_refused_with_a_reason() {
        let bytes = sample().to_bytes().unwrap();
        assert!(matches!(
            Snapshot::from_bytes(b"hello"),
            Err(Error::NotASnapshot)
        ));
        assert!(matches!(
            Snapshot::from_bytes(&bytes[..bytes.len() - 3]),
            Err(Error::SnapshotCorrupted(_))
        ));
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        assert!(matches!(
            Snapshot::from_bytes(&flipped),
            Err(Error::SnapshotCorrupted(_))
        ));
        let mut other = bytes.clone();
        other[8] = 9;
        assert!(matches!(
            Snapshot::from_bytes(&other),
            Err(Error::SnapshotVersion { version: 9, .. })
        ));
    }

    #[test]
    fn only_the_same_runtime_build_restores_it() {
        let s = sample();
        assert!(s.check_build("python", "b1").is_ok());
        let other = s.check_build("python", "b2").unwrap_err().to_string();
        assert!(
            other.contains("build b1") && other.contains("b2"),
            "{other}"
        );
        assert!(s.check_build("python-sci", "b1").is_err());
    }

    #[test]
    fn runs_outside_the_memory_are_corrupt() {
        let mut s = sample();
        s.header.memories[0].runs = vec![(15, 2)];
        s.pages = vec![vec![0; 2 * PAGE_BYTES].into()];
        let bytes = s.to_bytes().unwrap();
        assert!(matches!(
            Snapshot::from_bytes(&bytes),
            Err(Error::SnapshotCorrupted(_))
        ));
    }

    /// Sixteen pages (64 KiB), page `p` filled with `p`.
    fn memory() -> Vec<u8> {
        (0..16u8).flat_map(|p| [p; PAGE_BYTES]).collect()
    }

    fn files(a: &[u8]) -> Vec<(String, Vec<u8>)> {
        vec![
            ("a.txt".into(), a.to_vec()),
            ("b.txt".into(), b"same".to_vec()),
        ]
    }

    fn save(mem: &[u8], a: &[u8], global: i32, saved: Option<&mut Saved>) -> Snapshot {
        let mut saved = saved;
        let g = vec![GlobalValue::I32(global)];
        let taken = capture(
            &[None],
            &[mem],
            g,
            "python".into(),
            "b1".into(),
            &Mapped::default(),
            saved.as_deref_mut(),
        );
        taken.with_host(files(a), vec![], vec!["x".into()], saved)
    }

    #[test]
    fn a_forks_pages_join_close_runs_and_read_the_same_from_their_file() {
        let mut mem = memory();
        for page in [1, 3, 12] {
            mem[page * PAGE_BYTES] = 0xee;
        }
        let image = memory();
        let mut s = capture(
            &[Some((0, &image))],
            &[&mem],
            vec![],
            "python".into(),
            "b1".into(),
            &Mapped::default(),
            None,
        );
        assert_eq!(s.header.memories[0].runs, vec![(1, 1), (3, 1), (12, 1)]);
        // Page 14 was mapped from an earlier fork's file (it equals the image now).
        let mut mapped = Mapped::default();
        assert!(mapped.record(0, &[(14, 1)]));
        s.widen(&[&mem], 1, &mapped);
        // Pages 1 and 3 have one page between: one run, page 2 stored with them; 12 and 14
        // too; the mapped page is stored.
        assert_eq!(s.header.memories[0].runs, vec![(1, 3), (12, 3)]);
        assert_eq!(
            &s.pages[0][PAGE_BYTES..2 * PAGE_BYTES],
            &mem[2 * PAGE_BYTES..3 * PAGE_BYTES]
        );
        let heap = s.pages[0].to_vec();
        s.share().expect("a page file");
        assert!(matches!(s.pages[0], PageBytes::Shared { .. }));
        assert_eq!(&*s.pages[0], &heap[..]);
        let (_, runs, bytes) = s.shared(0).expect("shared");
        assert_eq!(runs, &[(1, 3), (12, 3)]);
        let want = [
            (PAGE_BYTES, 3 * PAGE_BYTES, 0),
            (12 * PAGE_BYTES, 3 * PAGE_BYTES, 3 * PAGE_BYTES as u64),
        ];
        assert_eq!(bytes, want);
        // Written out, it is an ordinary snapshot.
        let back = Snapshot::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back.pages, s.pages);
        assert!(matches!(back.pages[0], PageBytes::Heap(_)));
    }

    fn names(s: &Snapshot) -> Vec<&str> {
        s.files().map(|(p, _)| p).collect()
    }

    #[test]
    fn a_save_holds_only_what_changed_and_folds_back_into_the_whole_state() {
        let mut mem = memory();
        let mut saved = Saved::default();
        let first = save(&mem, b"one", 1, Some(&mut saved));
        assert!(!first.is_changes());
        assert_eq!(
            first.stored_page_bytes(),
            15 * PAGE_BYTES as u64,
            "page 0 is the image's"
        );
        mem[3 * PAGE_BYTES + 5] = 99;
        mem[PAGE_BYTES..2 * PAGE_BYTES].fill(0); // back to the image's: still a change
        let second = save(&mem, b"two", 2, Some(&mut saved));
        assert!(second.is_changes());
        // Within held pages, only the blocks that changed: all of page 1, one of page 3.
        assert!(second.header.memories[0].runs.is_empty());
        assert_eq!(second.header.memories[0].blocks, vec![(16, 16), (48, 1)]);
        assert_eq!(second.stored_page_bytes(), 17 * BLOCK_BYTES as u64);
        assert_eq!(names(&second), vec!["a.txt"]);
        assert_eq!(second.header.kept, vec!["b.txt".to_string()]);
        let third = save(&mem, b"two", 3, Some(&mut saved));
        assert_eq!(third.stored_page_bytes(), 0);
        assert!(names(&third).is_empty());

        let mut folded = Snapshot::from_bytes(&first.to_bytes().unwrap()).unwrap();
        for next in [&second, &third] {
            let next = Snapshot::from_bytes(&next.to_bytes().unwrap()).unwrap();
            folded.apply(&next).unwrap();
        }
        let whole = save(&mem, b"two", 3, None);
        assert!(!folded.is_changes());
        assert_eq!(folded.header.memories[0].len, whole.header.memories[0].len);
        // The folded state holds page 1 as zeros where a whole snapshot leaves it out.
        let page = |s: &Snapshot, p: u32| -> Vec<u8> {
            page_list(&s.header.memories[0], &s.pages[0])
                .find(|(n, _)| *n == p)
                .map(|(_, b)| b.to_vec())
                .unwrap_or(vec![0; PAGE_BYTES])
        };
        for p in 0..16 {
            assert_eq!(page(&folded, p), page(&whole, p), "page {p}");
        }
        assert_eq!(folded.header.globals, vec![GlobalValue::I32(3)]);
        assert_eq!(
            folded.files().collect::<Vec<_>>(),
            whole.files().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_page_the_last_save_did_not_hold_is_saved_whole() {
        let mut mem = vec![0u8; 64 << 10];
        let mut saved = Saved::default();
        save(&mem, b"one", 1, Some(&mut saved));
        mem[5 * PAGE_BYTES + 7] = 1;
        let next = save(&mem, b"one", 1, Some(&mut saved));
        assert_eq!(next.header.memories[0].runs, vec![(5, 1)]);
        assert!(next.header.memories[0].blocks.is_empty());
        let back = Snapshot::from_bytes(&next.to_bytes().unwrap()).unwrap();
        assert_eq!(back.header.memories, next.header.memories);
    }

    #[test]
    fn a_broken_chain_of_saves_is_refused() {
        let mem = memory();
        let mut saved = Saved::default();
        let mut first = save(&mem, b"one", 1, Some(&mut saved));
        let second = save(&mem, b"one", 1, Some(&mut saved));
        let mut lacking = save(&mem, b"one", 1, None);
        lacking.files.clear();
        lacking.header.files.clear();
        assert!(matches!(
            lacking.apply(&second),
            Err(Error::SnapshotCorrupted(_))
        ));
        let mut other = first.clone();
        other.header.build = "b2".into();
        assert!(matches!(
            other.apply(&second),
            Err(Error::SnapshotBuild { .. })
        ));
        first.apply(&second).unwrap();
        assert!(second.is_changes() && !first.is_changes());
    }
}
