//! `fd_readdir` in name order. wasmtime-wasi's preview-1 `fd_readdir` lists a directory in the
//! host file system's order — on ext4 a hash order seeded per file system, so it differs between
//! machines — and the guest builds sets and dicts from listings (importlib's path caches,
//! matplotlib's style library and font list) while it is pre-initialized and while it runs. Their
//! layout, and so a run's fuel count, then depends on the machine, and a transcript recorded on
//! one would not replay on another. Here every listing is `.`, `..`, then the entries by name, on
//! every machine, while pre-initializing (`super::preinit`) and in every run.
//!
//! In a deterministic run each entry's `d_ino` is the file's virtual identity, the number its
//! `stat` gives (`super::clock`), not the host's inode.
//!
//! A listing larger than [`MOST`] bytes (only a guest that made hundreds of thousands of files in
//! its own directory) is passed through in the host's order, with the host's inodes.

use crate::determinism::{GuestClock, VirtualClock};
use crate::runtime::clock::{put_u32, ERRNO_FAULT};
use crate::store::GuestState;
use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{Error, Fd};
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wasmtime_wasi::p1::WasiP1Ctx;
use wiggle::{GuestMemory, GuestPtr};

/// A dirent's fixed part: `d_next` u64, `d_ino` u64, `d_namlen` u32, `d_type` u8, padding.
const HEADER: usize = 24;
/// The first host buffer a listing is read into; doubled until the listing fits.
const FIRST: usize = 64 << 10;
/// The largest listing sorted.
const MOST: usize = 16 << 20;

struct Entry<'a> {
    ino: [u8; 8],
    kind: u8,
    name: &'a [u8],
}

/// The directory's entries from `cookie` on, serialized as `fd_readdir` writes them, `.` and `..`
/// first and the rest by name, their inodes renumbered by `ids` when given; `None` if the listing
/// is larger than [`MOST`].
async fn listing(
    ctx: &mut WasiP1Ctx,
    fd: Fd,
    cookie: u64,
    ids: Option<&mut VirtualClock>,
) -> Result<Option<Vec<u8>>, Error> {
    let mut size = FIRST;
    let raw = loop {
        let mut host = vec![0u8; size];
        let n = {
            let mut memory = GuestMemory::Unshared(&mut host);
            ctx.fd_readdir(&mut memory, fd, GuestPtr::new(0), size as u32, 0)
                .await? as usize
        };
        if n < size {
            host.truncate(n);
            break host;
        }
        if size >= MOST {
            return Ok(None);
        }
        size *= 2;
    };
    let mut entries = parse(&raw);
    let dots = entries
        .iter()
        .take_while(|e| e.name == b"." || e.name == b"..")
        .count();
    entries[dots..].sort_by(|a, b| a.name.cmp(b.name));
    if let Some(ids) = ids {
        // The directory's device: with an inode, what the file's `stat` is numbered by.
        let dev = ctx
            .fd_filestat_get(&mut GuestMemory::Unshared(&mut []), fd)
            .await?
            .dev;
        for e in &mut entries {
            e.ino = ids.file_id((dev, u64::from_le_bytes(e.ino))).to_le_bytes();
        }
    }
    Ok(Some(serialize(&entries, cookie)))
}

fn parse(raw: &[u8]) -> Vec<Entry<'_>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + HEADER <= raw.len() {
        let header = &raw[at..at + HEADER];
        let mut ino = [0u8; 8];
        ino.copy_from_slice(&header[8..16]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[16..20]);
        let end = at + HEADER + u32::from_le_bytes(len) as usize;
        let Some(name) = raw.get(at + HEADER..end) else {
            break;
        };
        entries.push(Entry {
            ino,
            kind: header[20],
            name,
        });
        at = end;
    }
    entries
}

fn serialize(entries: &[Entry<'_>], cookie: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
    for (i, e) in entries.iter().enumerate().skip(skip) {
        out.extend_from_slice(&(i as u64 + 1).to_le_bytes());
        out.extend_from_slice(&e.ino);
        out.extend_from_slice(&(e.name.len() as u32).to_le_bytes());
        out.extend_from_slice(&[e.kind, 0, 0, 0]);
        out.extend_from_slice(e.name);
    }
    out
}

/// `fd_readdir` for a guest whose WASI context is `ctx` and whose memory is `memory`: writes at
/// most `len` bytes of the sorted listing at `buf`, inodes renumbered by `ids` when given; the
/// size written, or the errno.
async fn fd_readdir(
    ctx: &mut WasiP1Ctx,
    ids: Option<&mut VirtualClock>,
    memory: &mut [u8],
    (fd, buf, len, cookie): (i32, i32, i32, i64),
) -> wasmtime::Result<Result<u32, i32>> {
    let fd = Fd::from(fd as u32);
    let (buf, len, cookie) = (buf as u32, len as u32, cookie as u64);
    let errno = |e: Error| -> wasmtime::Result<Result<u32, i32>> {
        Ok(Err(
            e.downcast().map_err(|e| wasmtime::format_err!("{e}"))? as i32
        ))
    };
    let listed = match listing(ctx, fd, cookie, ids).await {
        Ok(Some(listed)) => listed,
        Ok(None) => {
            // Too large to sort: the host's order, written straight into the guest.
            let mut guest = GuestMemory::Unshared(memory);
            return match ctx
                .fd_readdir(&mut guest, fd, GuestPtr::new(buf), len, cookie)
                .await
            {
                Ok(used) => Ok(Ok(used)),
                Err(e) => errno(e),
            };
        }
        Err(e) => return errno(e),
    };
    let n = listed.len().min(len as usize);
    let start = buf as usize;
    let Some(dest) = memory.get_mut(start..start + n) else {
        return Ok(Err(ERRNO_FAULT));
    };
    dest.copy_from_slice(&listed[..n]);
    Ok(Ok(n as u32))
}

/// Writes a successful `fd_readdir`'s size at `out`; returns the errno (0 on success).
fn finish(memory: &mut [u8], result: Result<u32, i32>, out: i32) -> i32 {
    match result {
        Ok(used) => put_u32(memory, out as u32, used),
        Err(errno) => errno,
    }
}

/// Installs the sorted `fd_readdir` over wasmtime-wasi's in a run's linker.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "fd_readdir",
            |mut caller: Caller<'_, GuestState>,
             (fd, buf, len, cookie, out): (i32, i32, i32, i64, i32)| {
                Box::new(async move {
                    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                        return Ok(ERRNO_FAULT);
                    };
                    let (mem, state) = memory.data_and_store_mut(&mut caller);
                    let (wasi, clock) = state.wasi_and_clock();
                    let ids = match clock {
                        GuestClock::Virtual(clock) => Some(clock),
                        GuestClock::Real => None,
                    };
                    let result = fd_readdir(wasi, ids, mem, (fd, buf, len, cookie)).await?;
                    Ok(finish(mem, result, out))
                })
            },
        )
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e:#}"));
    linker.allow_shadowing(false);
    defined
}

/// Installs the sorted `fd_readdir` in the pre-initializer's (synchronous) linker.
pub fn add_to_preinit_linker(linker: &mut Linker<WasiP1Ctx>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "fd_readdir",
            |mut caller: Caller<'_, WasiP1Ctx>,
             fd: i32,
             buf: i32,
             len: i32,
             cookie: i64,
             out: i32|
             -> wasmtime::Result<i32> {
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                    return Ok(ERRNO_FAULT);
                };
                let (mem, ctx) = memory.data_and_store_mut(&mut caller);
                let result = wasmtime_wasi::runtime::in_tokio(fd_readdir(
                    ctx,
                    None,
                    mem,
                    (fd, buf, len, cookie),
                ))?;
                Ok(finish(mem, result, out))
            },
        )
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e:#}"));
    linker.allow_shadowing(false);
    defined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirent(next: u64, name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&next.to_le_bytes());
        v.extend_from_slice(&7u64.to_le_bytes());
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&[4, 0, 0, 0]);
        v.extend_from_slice(name.as_bytes());
        v
    }

    #[test]
    fn entries_are_renumbered_in_name_order_and_a_cookie_skips() {
        let raw: Vec<u8> = [".", "..", "b.py", "a.py", "c"]
            .iter()
            .enumerate()
            .flat_map(|(i, n)| dirent(i as u64 + 1, n))
            .collect();
        let mut entries = parse(&raw);
        assert_eq!(entries.len(), 5);
        entries[2..].sort_by(|a, b| a.name.cmp(b.name));
        let all = serialize(&entries, 0);
        let expected: Vec<u8> = [".", "..", "a.py", "b.py", "c"]
            .iter()
            .enumerate()
            .flat_map(|(i, n)| dirent(i as u64 + 1, n))
            .collect();
        assert_eq!(all, expected);
        let rest = serialize(&entries, 3);
        assert_eq!(rest, [dirent(4, "b.py"), dirent(5, "c")].concat());
        // A truncated last entry is dropped, not misread.
        assert_eq!(parse(&raw[..raw.len() - 1]).len(), 4);
    }
}
