//! Memory pages shared copy-on-write between sessions: a fork's pages.
//!
//! A fork's snapshot keeps its pages in an anonymous memory file ([`PageFile`], a `memfd`)
//! instead of the heap. The session it was taken from then maps those pages of its own memory
//! from the file (their bytes are the same), and so does every session restored from the
//! snapshot: all of them share one copy of each page until one writes it, and the kernel copies
//! that page for the writer alone — what `fork(2)` does for a process. The pages are mapped into
//! the instances' pooled slots through the vendored wasmtime's `Memory::weir_map_private`, which
//! records each run in the slot; when the instance goes, the slot maps its image back over
//! exactly those runs before its ordinary reset: nothing of the file outlives the instance.
//!
//! Each mapped run of pages is a mapping of its own (two, counting the split it makes), and a
//! process may hold `vm.max_map_count` of them (65,530 by default). The runs mapped at once are
//! counted process-wide ([`Budget`]) and held below a quarter of that limit; past it a restore
//! copies pages as a snapshot from a file does.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// An anonymous memory file of whole pages, mapped read-only into this process for reading.
pub(crate) struct PageFile {
    file: OwnedFd,
    /// Address of the read-only shared mapping of the whole file (0 when empty).
    map: usize,
    len: usize,
}

impl PageFile {
    /// A file holding `parts` one after another (each a whole number of pages), and where each
    /// starts in it.
    pub(crate) fn new(parts: &[&[u8]]) -> std::io::Result<(Arc<PageFile>, Vec<usize>)> {
        use std::os::unix::fs::FileExt;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: `memfd_create` with a constant name; the descriptor it returns is ours alone.
        #[allow(unsafe_code)]
        let file = unsafe {
            let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
            let fd = libc::memfd_create(c"weir-fork".as_ptr(), flags);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let writer = std::fs::File::from(file.try_clone()?);
        writer.set_len(len as u64)?;
        let mut starts = Vec::with_capacity(parts.len());
        let mut at = 0usize;
        for part in parts {
            writer.write_all_at(part, at as u64)?;
            starts.push(at);
            at += part.len();
        }
        // Sealed: nothing can change, grow or shrink it any more (a shrunk file would fault
        // every mapping's reader).
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: `fcntl` on our own descriptor.
        #[allow(unsafe_code)]
        if unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::F_ADD_SEALS,
                seals,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let map = match len {
            0 => 0,
            // SAFETY: a fresh shared read-only mapping of the whole file, unmapped on drop.
            #[allow(unsafe_code)]
            _ => unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                );
                if p == libc::MAP_FAILED {
                    return Err(std::io::Error::last_os_error());
                }
                p as usize
            },
        };
        Ok((Arc::new(PageFile { file, map, len }), starts))
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping covers `len` bytes and lives as long as `self`; nothing writes the
        // file after `new` (instances map it privately).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.map as *const u8, self.len)
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for PageFile {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `new`, no longer borrowed (`bytes` borrows `self`).
            #[allow(unsafe_code)]
            unsafe {
                libc::munmap(self.map as *mut libc::c_void, self.len);
            }
        }
    }
}

impl std::fmt::Debug for PageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageFile").field("len", &self.len).finish()
    }
}

/// Runs of pages mapped from files into instances' memories, process-wide.
static MAPPED_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The most runs mapped at once: a quarter of the process's mapping limit (each run can take
/// two mappings, and the pool's slots and everything else need the rest).
fn max_runs() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65_530)
            / 4
    })
}

/// Runs an instance has mapped, counted against the process's [`max_runs`] until it goes.
#[derive(Default)]
pub(crate) struct Budget(usize);

impl Budget {
    /// Counts `runs` for the instance instead of what it counted before, or refuses when the
    /// process would pass its limit.
    fn set(&mut self, runs: usize) -> bool {
        let (held, max) = (self.0, max_runs());
        let took = MAPPED_RUNS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            let after = now - held + runs;
            (runs <= held || after <= max).then_some(after)
        });
        if took.is_ok() {
            self.0 = runs;
        }
        took.is_ok()
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        MAPPED_RUNS.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// What a session's memories have mapped from page files: which pages (they hold a file's
/// bytes, not the image's, although the operating system reports them as file pages), and the
/// runs counted.
#[derive(Default)]
pub(crate) struct Mapped {
    /// Per memory, a bit per page: mapped from a page file at some point.
    pages: Vec<Vec<u64>>,
    budget: Budget,
}

impl Mapped {
    /// Records that `runs` (`(first page, count)`) of memory `m` are to be mapped from a file,
    /// within the process's budget of mapped runs; false (nothing recorded) past it.
    pub(crate) fn record(&mut self, m: usize, runs: &[(u32, u32)]) -> bool {
        let mut pages = self.pages.clone();
        if pages.len() <= m {
            pages.resize_with(m + 1, Vec::new);
        }
        let bits = &mut pages[m];
        for &(first, n) in runs {
            for page in first as usize..(first + n) as usize {
                if bits.len() <= page / 64 {
                    bits.resize(page / 64 + 1, 0);
                }
                bits[page / 64] |= 1 << (page % 64);
            }
        }
        // Each run of mapped pages is (at most) one mapping, however often it was mapped over.
        if !self
            .budget
            .set(pages.iter().map(|bits| count_runs(bits)).sum())
        {
            return false;
        }
        self.pages = pages;
        true
    }

    /// Per page of memory `m`, whether it was mapped from a file (empty when none was).
    pub(crate) fn pages(&self, m: usize) -> &[u64] {
        self.pages.get(m).map_or(&[], Vec::as_slice)
    }
}

/// Runs of set bits in `bits`.
fn count_runs(bits: &[u64]) -> usize {
    let mut carry = 0u64;
    let mut runs = 0;
    for &word in bits {
        // A run starts at a set bit whose lower neighbour (the previous word's top bit for bit
        // 0) is clear.
        let starts = word & !((word << 1) | carry);
        runs += starts.count_ones() as usize;
        carry = word >> 63;
    }
    runs
}

/// Whether bit `page` is set in `bits`.
pub(crate) fn is_set(bits: &[u64], page: usize) -> bool {
    bits.get(page / 64)
        .is_some_and(|w| w & (1 << (page % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_mapped_pages_are_counted_across_words() {
        assert_eq!(count_runs(&[]), 0);
        assert_eq!(count_runs(&[0b0110_0111]), 2);
        // A run over a word boundary is one run.
        assert_eq!(count_runs(&[1 << 63, 1]), 1);
        assert_eq!(count_runs(&[u64::MAX, u64::MAX, 0, 1]), 2);
    }

    #[test]
    fn pages_mapped_again_count_once() {
        let mut mapped = Mapped::default();
        assert!(mapped.record(0, &[(0, 2), (10, 1)]));
        assert!(mapped.record(0, &[(0, 2), (10, 1)]));
        assert_eq!(mapped.budget.0, 2);
        assert!(mapped.record(0, &[(2, 8)]));
        assert_eq!(mapped.budget.0, 1, "pages 0 to 10 are one run now");
        assert!(is_set(mapped.pages(0), 5) && !is_set(mapped.pages(0), 11));
        drop(mapped);
    }
}
