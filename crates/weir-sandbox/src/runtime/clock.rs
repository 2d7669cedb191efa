//! The clocks and file identities of a core-module guest (`python-sci`, `javascript`) in WASI
//! preview 1, over wasmtime-wasi's: a
//! deterministic run reads the virtual clock (`crate::determinism`) in `clock_time_get`, and
//! `fd_filestat_get` and `path_filestat_get` number its files in the order the guest first
//! looks at them and date them all at the virtual clock's start (as the lean runtime's `stat`
//! does); any other run gets the host's.

use crate::determinism::{self, GuestClock, MONOTONIC_START_NS, WALL_START_SECS};
use crate::store::GuestState;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{Errno, Fd, Filestat, Lookupflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wiggle::{GuestMemory, GuestPtr};

const REALTIME: i32 = 0;
const MONOTONIC: i32 = 1;
pub(crate) const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Installs `clock_time_get`, `fd_filestat_get` and `path_filestat_get` over wasmtime-wasi's
/// (call after it is linked).
pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let stats = add_stats(linker).and_then(|()| add_poll(linker));
    let defined = linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "clock_time_get",
            |mut caller: Caller<'_, GuestState>, id: i32, _precision: i64, out: i32| -> i32 {
                let Some(ns) = now(&mut caller, id) else {
                    return ERRNO_INVAL;
                };
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                    return ERRNO_FAULT;
                };
                match memory.write(&mut caller, out as u32 as usize, &ns.to_le_bytes()) {
                    Ok(()) => 0,
                    Err(_) => ERRNO_FAULT,
                }
            },
        )
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e:#}"));
    linker.allow_shadowing(false);
    defined?;
    stats
}

/// The stat calls: wasmtime-wasi's preview-1 implementation, then, in a deterministic run,
/// the file's identity made virtual.
fn add_stats(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "fd_filestat_get",
            |mut caller: Caller<'_, GuestState>, (fd, buf): (i32, i32)| {
                Box::new(async move {
                    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                        return Ok(ERRNO_FAULT);
                    };
                    let (mem, state) = memory.data_and_store_mut(&mut caller);
                    let mut guest = GuestMemory::Unshared(mem);
                    let fd = Fd::from(fd as u32);
                    let stat = state.wasi_p1().fd_filestat_get(&mut guest, fd).await;
                    answer(&mut caller, memory, stat, buf)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "path_filestat_get",
            |mut caller: Caller<'_, GuestState>,
             (fd, flags, path, len, buf): (i32, i32, i32, i32, i32)| {
                Box::new(async move {
                    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                        return Ok(ERRNO_FAULT);
                    };
                    let Ok(flags) = Lookupflags::try_from(flags as u32) else {
                        return Ok(ERRNO_INVAL);
                    };
                    let (mem, state) = memory.data_and_store_mut(&mut caller);
                    let mut guest = GuestMemory::Unshared(mem);
                    let path = GuestPtr::new((path as u32, len as u32));
                    let fd = Fd::from(fd as u32);
                    let stat = state
                        .wasi_p1()
                        .path_filestat_get(&mut guest, fd, flags, path)
                        .await;
                    answer(&mut caller, memory, stat, buf)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}

/// `poll_oneoff` (how `time.sleep` waits): in a deterministic run a wait on timers alone
/// advances the virtual clock to the first one and returns at once (as the lean runtime's
/// sleep does); otherwise wasmtime-wasi's, but a wait that includes a timer ends early when an interrupt is asked for — the interrupt is written into the guest and the
/// first timer is reported as fired, so the sleep returns and the interpreter raises
/// `KeyboardInterrupt` at once, as in the lean runtime (`crate::determinism`'s sleep).
fn add_poll(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            |mut caller: Caller<'_, GuestState>, (subs, events, n, out): (i32, i32, i32, i32)| {
                Box::new(async move {
                    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                        return Ok(ERRNO_FAULT);
                    };
                    let (subs, events, n) = (subs as u32, events as u32, n as u32);
                    if let Some(now) = determinism::virtual_now(&caller.as_context_mut()) {
                        if let Some((userdata, wait)) =
                            virtual_timer(memory.data(&caller), subs, n, now)
                        {
                            determinism::advance(&mut caller.as_context_mut(), wait);
                            let data = memory.data_mut(&mut caller);
                            return Ok(timer_fired(data, events, userdata, out as u32));
                        }
                    }
                    let interrupter = determinism::ClockView::interrupter(caller.data());
                    let timer = first_timer(memory.data(&caller), subs, n);
                    let early = match (&interrupter, timer) {
                        (Some(i), Some(_)) => i.in_flight(),
                        _ => false,
                    };
                    let polled = if early {
                        None
                    } else {
                        let (mem, state) = memory.data_and_store_mut(&mut caller);
                        let mut guest = GuestMemory::Unshared(mem);
                        let poll = state.wasi_p1().poll_oneoff(
                            &mut guest,
                            GuestPtr::new(subs),
                            GuestPtr::new(events),
                            n,
                        );
                        match (&interrupter, timer) {
                            (Some(i), Some(_)) => tokio::select! {
                                r = poll => Some(r),
                                () = i.requested() => None,
                            },
                            _ => Some(poll.await),
                        }
                    };
                    let data = memory.data_mut(&mut caller);
                    match polled {
                        Some(Ok(count)) => Ok(put_u32(data, out as u32, count)),
                        Some(Err(e)) => {
                            Ok(e.downcast().map_err(|e| wasmtime::format_err!("{e}"))? as i32)
                        }
                        None => {
                            if let Some(i) = &interrupter {
                                i.deliver();
                            }
                            let userdata = timer.unwrap_or(0);
                            Ok(timer_fired(data, events, userdata, out as u32))
                        }
                    }
                })
            },
        )
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// In a deterministic run, a wait on timers only (`time.sleep`): the first timer to fire and how
/// long the virtual clock, at `now` ns, advances until it does; `None` when a subscription waits
/// for something else (a descriptor), or there is none.
fn virtual_timer(memory: &[u8], subs: u32, n: u32, now: u64) -> Option<(u64, u64)> {
    let mut first: Option<(u64, u64)> = None;
    for k in 0..n as usize {
        let sub = subscription(memory, subs, k)?;
        let word = |from: usize| u64_at(sub, from);
        if sub[8] != 0 {
            return None;
        }
        let clock_now = match u32::from_le_bytes(sub[16..20].try_into().unwrap_or_default()) {
            0 => (WALL_START_SECS * 1_000_000_000).saturating_add(now),
            1 => MONOTONIC_START_NS.saturating_add(now),
            _ => return None,
        };
        let (timeout, absolute) = (word(24), sub[40] & ABSTIME != 0);
        let wait = if absolute {
            timeout.saturating_sub(clock_now)
        } else {
            timeout
        };
        if first.is_none_or(|(_, w)| wait < w) {
            first = Some((word(0), wait));
        }
    }
    first
}

/// A clock subscription's flag: its timeout is an instant on its clock, not a duration.
const ABSTIME: u8 = 1;

/// A preview-1 subscription's size; its `userdata` is first, its tag (0: a timer) at 8.
const SUBSCRIPTION: usize = 48;
/// A preview-1 event's size: `userdata`, `error` (u16 at 8), `type` (u8 at 10), then the
/// read/write part.
const EVENT: usize = 32;

/// The `userdata` of the first timer among the `n` subscriptions at `subs`, if there is one.
fn first_timer(memory: &[u8], subs: u32, n: u32) -> Option<u64> {
    (0..n as usize).find_map(|k| {
        let sub = subscription(memory, subs, k)?;
        (sub[8] == 0).then(|| u64_at(sub, 0))
    })
}

/// The `k`th of the subscriptions at `subs` ([`SUBSCRIPTION`] bytes), if it is in `memory`.
fn subscription(memory: &[u8], subs: u32, k: usize) -> Option<&[u8]> {
    let at = (subs as usize).checked_add(k.checked_mul(SUBSCRIPTION)?)?;
    memory.get(at..at.checked_add(SUBSCRIPTION)?)
}

/// The little-endian `u64` at `at` in a subscription (0 past its end).
fn u64_at(sub: &[u8], at: usize) -> u64 {
    sub.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Writes `value` at `at`; the errno (0, or a fault).
pub(crate) fn put_u32(memory: &mut [u8], at: u32, value: u32) -> i32 {
    match memory.get_mut(at as usize..at as usize + 4) {
        Some(dest) => {
            dest.copy_from_slice(&value.to_le_bytes());
            0
        }
        None => ERRNO_FAULT,
    }
}

/// Reports one event, the timer `userdata` firing, and its count at `out`.
fn timer_fired(memory: &mut [u8], events: u32, userdata: u64, out: u32) -> i32 {
    let Some(event) = memory.get_mut(events as usize..events as usize + EVENT) else {
        return ERRNO_FAULT;
    };
    event.fill(0);
    event[..8].copy_from_slice(&userdata.to_le_bytes());
    put_u32(memory, out, 1)
}

/// Writes a stat's answer at `buf` (virtual in a deterministic run) and returns its errno; an
/// error that is not an errno traps, as wasmtime-wasi's own functions do.
fn answer(
    caller: &mut Caller<'_, GuestState>,
    memory: wasmtime::Memory,
    stat: Result<Filestat, wasmtime_wasi::p1::types::Error>,
    buf: i32,
) -> wasmtime::Result<i32> {
    let mut stat = match stat {
        Ok(stat) => stat,
        Err(e) => return Ok(e.downcast().map_err(|e| wasmtime::format_err!("{e}"))? as i32),
    };
    if let GuestClock::Virtual(clock) = &mut caller.data_mut().clock {
        stat.ino = clock.file_id((stat.dev, stat.ino));
        stat.dev = 0;
        // Every file time is the virtual clock's start, as in the lean runtime: the host's
        // times differ between machines and change under the guest (a read updates a file's
        // access time), and the interpreter's work depends on them (importlib compares a
        // directory's modification time with the one it cached).
        let start = WALL_START_SECS * 1_000_000_000;
        (stat.atim, stat.mtim, stat.ctim) = (start, start, start);
    }
    let mut bytes = [0u8; 64];
    bytes[0..8].copy_from_slice(&stat.dev.to_le_bytes());
    bytes[8..16].copy_from_slice(&stat.ino.to_le_bytes());
    bytes[16] = stat.filetype as u8;
    bytes[24..32].copy_from_slice(&stat.nlink.to_le_bytes());
    bytes[32..40].copy_from_slice(&stat.size.to_le_bytes());
    bytes[40..48].copy_from_slice(&stat.atim.to_le_bytes());
    bytes[48..56].copy_from_slice(&stat.mtim.to_le_bytes());
    bytes[56..64].copy_from_slice(&stat.ctim.to_le_bytes());
    Ok(
        match memory.write(&mut *caller, buf as u32 as usize, &bytes) {
            Ok(()) => Errno::Success as i32,
            Err(_) => ERRNO_FAULT,
        },
    )
}

/// The clock `id`'s reading in nanoseconds; `None` for a clock WASI does not name here.
fn now(caller: &mut Caller<'_, GuestState>, id: i32) -> Option<u64> {
    if let Some(elapsed) = determinism::virtual_now(&caller.as_context_mut()) {
        return match id {
            REALTIME => Some((WALL_START_SECS * 1_000_000_000).saturating_add(elapsed)),
            MONOTONIC => Some(MONOTONIC_START_NS.saturating_add(elapsed)),
            _ => None,
        };
    }
    match id {
        REALTIME => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64),
        MONOTONIC => Some(determinism::HostMonotonic::now_ns()),
        _ => None,
    }
}
