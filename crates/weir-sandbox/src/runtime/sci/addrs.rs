//! Where an interrupt is written in `python-sci`'s memory (`crate::interrupt`): the main thread
//! state's `eval_breaker` and `async_exc` words, and `KeyboardInterrupt`'s address.
//!
//! Found while pre-initializing, in the live instance: `_PyRuntime` starts with
//! `_Py_DebugOffsets` (PEP 768's table for out-of-process debuggers, cookie `xdebugpy`), whose
//! head gives the interpreter and its first thread state. The thread-state part of the table
//! moves between CPython versions, so it is not assumed: the offsets of `interp` and `thread_id`
//! are the pair of table slots, a few apart, at which the thread state really holds the
//! interpreter's address and the thread's ident (which the pre-initializing turn prints, with
//! `id(KeyboardInterrupt)`). `eval_breaker` directly follows `interp`, `async_exc` directly
//! precedes `thread_id`. The addresses are then tried on the instance (`super::preinit`) before it is
//! kept: addresses that do not raise `KeyboardInterrupt` in a loop is not used.

use crate::interrupt::InterruptAddrs;

const COOKIE: &[u8] = b"xdebugpy";
/// `_Py_DebugOffsets` head: `version`, `runtime_state.interpreters_head`,
/// `interpreter_state.threads_head` (unchanged since CPython 3.13).
const VERSION: usize = 8;
const INTERPRETERS_HEAD: usize = 40;
const THREADS_HEAD: usize = 72;
/// The table offsets searched for the thread state's `interp` slot.
const THREAD_SLOTS: std::ops::Range<usize> = 120..480;
/// Most table slots between the thread state's `interp` and `thread_id` (2 in CPython 3.14,
/// 5 in 3.15).
const FIELDS_BETWEEN: usize = 8;
/// The CPython minor version the module is.
const MINOR: u64 = 15;

fn u64_at(memory: &[u8], at: usize) -> Option<u64> {
    let bytes = memory.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

pub(super) fn u32_at(memory: &[u8], at: usize) -> Option<u32> {
    let bytes = memory.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The interrupt addresses in `memory`, given `KeyboardInterrupt`'s address and the main thread's ident.
pub fn find(memory: &[u8], exception: u32, ident: u32) -> Option<InterruptAddrs> {
    memory
        .windows(COOKIE.len())
        .enumerate()
        .filter(|(at, w)| at % 8 == 0 && *w == COOKIE)
        .filter(|(at, _)| {
            u64_at(memory, at + VERSION).is_some_and(|v| v >> 24 == 3 && (v >> 16) & 0xFF == MINOR)
        })
        .find_map(|(at, _)| from_runtime(memory, at, exception, ident))
}

fn from_runtime(
    memory: &[u8],
    runtime: usize,
    exception: u32,
    ident: u32,
) -> Option<InterruptAddrs> {
    let head = usize::try_from(u64_at(memory, runtime + INTERPRETERS_HEAD)?).ok()?;
    let interp = u32_at(memory, runtime.checked_add(head)?)?;
    let threads = usize::try_from(u64_at(memory, runtime + THREADS_HEAD)?).ok()?;
    let tstate = u32_at(memory, (interp as usize).checked_add(threads)?)? as usize;
    let value = |slot: usize| {
        u64_at(memory, runtime + slot)
            .filter(|v| *v < 4096)
            .map(|v| v as usize)
    };
    for slot in THREAD_SLOTS.step_by(8) {
        let Some(a) = value(slot).filter(|a| u32_at(memory, tstate + a) == Some(interp)) else {
            continue;
        };
        let later = (slot + 8..=slot + FIELDS_BETWEEN * 8).step_by(8);
        let Some(b) = later
            .filter_map(value)
            .find(|b| *b > a + 4 && u32_at(memory, tstate + b) == Some(ident))
        else {
            continue;
        };
        let async_exc = tstate + b - 4;
        if u32_at(memory, async_exc) != Some(0) {
            return None;
        }
        return Some(InterruptAddrs {
            eval_breaker: u32::try_from(tstate + a + 4).ok()?,
            async_exc: u32::try_from(async_exc).ok()?,
            exception,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put64(m: &mut [u8], at: usize, v: u64) {
        m[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(m: &mut [u8], at: usize, v: u32) {
        m[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn the_site_follows_the_debug_table_and_the_live_thread_state() {
        let mut m = vec![0u8; 1 << 16];
        let runtime = 0x1000;
        m[runtime..runtime + 8].copy_from_slice(COOKIE);
        put64(&mut m, runtime + VERSION, 0x030F_00F0);
        put64(&mut m, runtime + INTERPRETERS_HEAD, 0x100);
        let interp = 0x4000u32;
        put32(&mut m, runtime + 0x100, interp);
        put64(&mut m, runtime + THREADS_HEAD, 0x20);
        let tstate = 0x8000u32;
        put32(&mut m, interp as usize + 0x20, tstate);
        // The table's thread part: interp (8) at 200, four other fields, thread_id (96) at 240.
        put64(&mut m, runtime + 200, 8);
        put64(&mut m, runtime + 208, 56);
        put64(&mut m, runtime + 240, 96);
        put32(&mut m, tstate as usize + 8, interp);
        put32(&mut m, tstate as usize + 96, 77);
        let addrs = find(&m, 0x9999, 77).expect("found");
        assert_eq!(addrs.eval_breaker, tstate + 12);
        assert_eq!(addrs.async_exc, tstate + 92);
        assert_eq!(addrs.exception, 0x9999);
        assert_eq!(InterruptAddrs::parse(&addrs.to_string()), Some(addrs));
        // Another thread ident, or another CPython, finds nothing.
        assert!(find(&m, 0x9999, 78).is_none());
        put64(&mut m, runtime + VERSION, 0x030E_00F0);
        assert!(find(&m, 0x9999, 77).is_none());
    }
}
