//! The host functions the QuickJS guest imports (`env`): `host_call`, through which the
//! prelude's one host function (`__weir_host`) reaches weir — output, input, sleeps, exit, the
//! program's uncaught exception, host functions the embedder gives the run — and
//! `host_interrupt`, the interpreter's poll for an interrupt; and the module loader's two
//! (`modules`).
//!
//! Output and input go through the run's WASI context (`fd_write` on 1 and 2, `fd_read` and
//! `poll_oneoff` on 0) exactly as a WASI guest's own calls would, so the run's output queue,
//! its cap and backpressure, its stdin (interactive, recorded, replayed) and interrupts of a
//! wait all work as they do for Python.

use super::guest::{Exports, Handle};
use crate::determinism;
use crate::launch::Uncaught;
use crate::runtime::python::host::{cut, MAX_MESSAGE_BYTES, MAX_TYPE_NAME_BYTES};
use crate::store::GuestState;
use std::time::Duration;
use wasmtime::{AsContextMut, Caller, Linker};
use wasmtime_wasi::p1::types::Fd;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wiggle::{GuestMemory, GuestPtr};

/// The one host function the prelude takes off the global object.
pub(super) const HOST_FUNCTION: &str = "__weir_host";

/// `host_call`'s answer when the call failed: the guest throws a `HostError`.
const FAILED: i32 = -1;

/// Most arguments a host call passes.
const MAX_ARGS: u32 = 8;

/// Most bytes one `read` hands the guest.
const READ_BYTES: usize = 64 << 10;

/// Most bytes of a host function's arguments read from the guest (the function's own limit,
/// `ToolLimits`, is checked after).
const MAX_TOOL_ARGS: usize = 16 << 20;

/// Installs `env`'s functions.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            "env",
            "host_call",
            |mut caller: Caller<'_, GuestState>,
             (name, name_len, _this, argc, argv): (i32, i32, i32, i32, i32)| {
                Box::new(async move { call(&mut caller, name, name_len, argc, argv).await })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    linker
        .func_wrap(
            "env",
            "host_interrupt",
            |caller: Caller<'_, GuestState>| -> i32 { caller.data().interrupter().poll() as i32 },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    linker
        .func_wrap_async(
            "env",
            "host_module_normalize",
            |mut caller: Caller<'_, GuestState>, args: (i32, i32, i32, i32, i32)| {
                Box::new(async move { super::modules::on_normalize(&mut caller, args).await })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    linker
        .func_wrap_async(
            "env",
            "host_module_load",
            |mut caller: Caller<'_, GuestState>, args: (i32, i32, i32)| {
                Box::new(async move { super::modules::on_load(&mut caller, args).await })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}

/// One call of `__weir_host(op, ...args)`: the handle of its value, or [`FAILED`].
async fn call(
    caller: &mut Caller<'_, GuestState>,
    name: i32,
    name_len: i32,
    argc: i32,
    argv: i32,
) -> wasmtime::Result<i32> {
    let ex = Exports::of_caller(caller)?;
    let mut called = [0u8; HOST_FUNCTION.len()];
    if name_len as usize != called.len()
        || ex
            .memory
            .read(&*caller, name as u32 as usize, &mut called)
            .is_err()
        || called != *HOST_FUNCTION.as_bytes()
        || argc < 1
        || argc as u32 > MAX_ARGS
    {
        return Ok(FAILED);
    }
    let mut raw = vec![0u8; argc as usize * 4];
    if ex
        .memory
        .read(&*caller, argv as u32 as usize, &mut raw)
        .is_err()
    {
        return Ok(FAILED);
    }
    let args: Vec<Handle> = raw
        .chunks_exact(4)
        .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let Some(op) = ex.string(&mut *caller, args[0], 16).await? else {
        return Ok(FAILED);
    };
    let rest = &args[1..];
    match op.as_slice() {
        b"write" => write(caller, &ex, rest).await,
        b"read" => read(caller, &ex, rest).await,
        b"sleep" => sleep(caller, &ex, rest).await,
        b"exit" => {
            let code = number(caller, &ex, rest, 0).await?.unwrap_or(0.0);
            Err(wasmtime_wasi::I32Exit(code as i32).into())
        }
        b"uncaught" => uncaught(caller, &ex, rest).await,
        b"repl" => {
            caller.data_mut().repl_started();
            ex.undefined(&mut *caller).await
        }
        b"tool" => tool(caller, &ex, rest).await,
        b"read_file" => read_file(caller, &ex, rest).await,
        b"write_file" => write_file(caller, &ex, rest).await,
        _ => Ok(FAILED),
    }
}

async fn number(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
    at: usize,
) -> wasmtime::Result<Option<f64>> {
    match args.get(at) {
        Some(&h) => ex.number(&mut *caller, h).await,
        None => Ok(None),
    }
}

/// `write(fd, text)`: the text to stdout (1) or stderr (2), all of it (waiting while the
/// run's output queue is full).
async fn write(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let fd = match number(caller, ex, args, 0).await? {
        Some(2.0) => 2u32,
        _ => 1,
    };
    let Some(&text) = args.get(1) else {
        return Ok(FAILED);
    };
    // The text stays in the guest (its result buffer): written from there, never copied whole.
    let Some((at, len)) = ex.string_in_place(&mut *caller, text).await? else {
        return Ok(FAILED);
    };
    let iov = ex.alloc(&mut *caller, 8).await?;
    let mut done = 0usize;
    let mut failed = false;
    while done < len {
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&((at + done) as u32).to_le_bytes());
        entry[4..].copy_from_slice(&((len - done) as u32).to_le_bytes());
        ex.memory.write(&mut *caller, iov as u32 as usize, &entry)?;
        let fuel = caller.as_context_mut().hostcall_fuel();
        let (mem, state) = ex.memory.data_and_store_mut(&mut *caller);
        state.wasi_p1().set_hostcall_fuel(fuel);
        let mut guest = GuestMemory::Unshared(mem);
        let ciovs = GuestPtr::new((iov as u32, 1));
        match state
            .wasi_p1()
            .fd_write(&mut guest, Fd::from(fd), ciovs)
            .await
        {
            Ok(0) => {
                failed = true;
                break;
            }
            Ok(n) => done += n as usize,
            Err(e) => {
                // A trap (the output cap passed) ends the run; an errno ends the write.
                e.downcast()?;
                failed = true;
                break;
            }
        }
    }
    ex.release_result(&mut *caller).await?;
    ex.free(&mut *caller, iov, 8).await?;
    match failed {
        true => Ok(FAILED),
        false => ex.undefined(&mut *caller).await,
    }
}

/// `read(wait_ms)`: the next chunk of stdin as a string, `null` at its end, `undefined` when
/// nothing came within `wait_ms` (negative: wait as long as it takes). In a deterministic run
/// a bounded wait never reads (what came when would depend on timing): it is `undefined` at
/// once, and the caller's timer runs first.
async fn read(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let wait = number(caller, ex, args, 0).await?.unwrap_or(-1.0);
    let interrupter = caller.data().interrupter.clone();
    if interrupter.in_flight() {
        return Ok(FAILED);
    }
    if wait >= 0.0 {
        if determinism::virtual_now(&caller.as_context_mut()).is_some() {
            return ex.undefined(&mut *caller).await;
        }
        if !readable_within(caller, ex, wait).await? {
            return match interrupter.in_flight() {
                true => Ok(FAILED),
                false => ex.undefined(&mut *caller).await,
            };
        }
    }
    let buf = ex.alloc(&mut *caller, READ_BYTES + 8).await?;
    let iov = buf + READ_BYTES as i32;
    let mut got = Vec::new();
    let mut eof = false;
    // A chunk that ends inside a character reads on, a byte at a time, to the character's end.
    while got.is_empty() || (incomplete_tail(&got) && got.len() < READ_BYTES + 4) {
        let want = if got.is_empty() { READ_BYTES } else { 1 };
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&(buf as u32).to_le_bytes());
        entry[4..].copy_from_slice(&(want as u32).to_le_bytes());
        ex.memory.write(&mut *caller, iov as u32 as usize, &entry)?;
        let n = {
            let fuel = caller.as_context_mut().hostcall_fuel();
            let (mem, state) = ex.memory.data_and_store_mut(&mut *caller);
            state.wasi_p1().set_hostcall_fuel(fuel);
            let mut guest = GuestMemory::Unshared(mem);
            let iovs = GuestPtr::new((iov as u32, 1));
            match state.wasi_p1().fd_read(&mut guest, Fd::from(0), iovs).await {
                Ok(n) => n as usize,
                Err(e) => {
                    e.downcast()?;
                    0
                }
            }
        };
        if n == 0 {
            eof = got.is_empty();
            break;
        }
        let mut chunk = vec![0u8; n];
        ex.memory.read(&*caller, buf as u32 as usize, &mut chunk)?;
        got.extend_from_slice(&chunk);
    }
    ex.free(&mut *caller, buf, READ_BYTES + 8).await?;
    if interrupter.in_flight() {
        return Ok(FAILED);
    }
    match eof {
        true => ex.null(&mut *caller).await,
        false => {
            let text = String::from_utf8_lossy(&got);
            ex.new_string(&mut *caller, text.as_bytes()).await
        }
    }
}

/// Whether `bytes` end inside a UTF-8 character.
fn incomplete_tail(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => false,
        Err(e) => e.error_len().is_none(),
    }
}

/// Waits until stdin is readable (or at its end) or `wait_ms` pass, through the WASI
/// context's `poll_oneoff`; an interrupt ends the wait. Whether it is readable.
async fn readable_within(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    wait_ms: f64,
) -> wasmtime::Result<bool> {
    // Two subscriptions (48 bytes each: stdin, then a relative clock) and two events (32 each).
    let subs = ex.alloc(&mut *caller, 160).await?;
    let events = subs + 96;
    let mut bytes = [0u8; 96];
    bytes[0] = 1; // userdata 1: stdin
    bytes[8] = 1; // fd_read
    bytes[16..20].copy_from_slice(&0u32.to_le_bytes());
    bytes[48] = 2; // userdata 2: the clock
    bytes[56] = 0; // clock
    bytes[64..68].copy_from_slice(&1u32.to_le_bytes()); // monotonic
    let ns = (wait_ms * 1e6).clamp(0.0, 1e15) as u64;
    bytes[72..80].copy_from_slice(&ns.to_le_bytes());
    ex.memory
        .write(&mut *caller, subs as u32 as usize, &bytes)?;
    let interrupter = caller.data().interrupter.clone();
    let polled = {
        let fuel = caller.as_context_mut().hostcall_fuel();
        let (mem, state) = ex.memory.data_and_store_mut(&mut *caller);
        state.wasi_p1().set_hostcall_fuel(fuel);
        let mut guest = GuestMemory::Unshared(mem);
        let poll = state.wasi_p1().poll_oneoff(
            &mut guest,
            GuestPtr::new(subs as u32),
            GuestPtr::new(events as u32),
            2,
        );
        tokio::select! {
            r = poll => Some(r),
            () = interrupter.requested() => None,
        }
    };
    let readable = match polled {
        None => {
            interrupter.deliver();
            false
        }
        Some(Err(e)) => {
            e.downcast()?;
            false
        }
        Some(Ok(count)) => {
            let mut out = [0u8; 64];
            ex.memory.read(&*caller, events as u32 as usize, &mut out)?;
            (0..count.min(2) as usize).any(|k| out[k * 32] == 1)
        }
    };
    ex.free(&mut *caller, subs, 160).await?;
    Ok(readable)
}

/// `sleep(ms)`: waits (on the virtual clock in a deterministic run); an interrupt ends it.
async fn sleep(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let ms = number(caller, ex, args, 0)
        .await?
        .unwrap_or(0.0)
        .clamp(0.0, 1e12);
    let ns = (ms * 1e6) as u64;
    if determinism::virtual_now(&caller.as_context_mut()).is_some() {
        determinism::advance(&mut caller.as_context_mut(), ns);
        return ex.undefined(&mut *caller).await;
    }
    let interrupter = caller.data().interrupter.clone();
    if !interrupter.in_flight() {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_nanos(ns)) => {}
            () = interrupter.requested() => {
                interrupter.deliver();
            }
        }
    }
    ex.undefined(&mut *caller).await
}

/// `uncaught(type, message)`: the exception the program did not catch (the run's outcome).
async fn uncaught(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let (Some(&t), Some(&m)) = (args.first(), args.get(1)) else {
        return Ok(FAILED);
    };
    let type_name = ex
        .string(&mut *caller, t, MAX_TYPE_NAME_BYTES + 4)
        .await?
        .unwrap_or_default();
    let message = ex
        .string(&mut *caller, m, MAX_MESSAGE_BYTES + 4)
        .await?
        .unwrap_or_default();
    let interrupted = caller.data().interrupter.took();
    let type_name = match interrupted {
        true => "KeyboardInterrupt".to_owned(),
        false => cut(&String::from_utf8_lossy(&type_name), MAX_TYPE_NAME_BYTES),
    };
    let message = cut(&String::from_utf8_lossy(&message), MAX_MESSAGE_BYTES);
    caller
        .data_mut()
        .report_uncaught(Uncaught { type_name, message });
    ex.undefined(&mut *caller).await
}

/// `tool(name, json)`: a host function the embedder gave the run (`crate::tools`), answered
/// with its result's JSON text; its error (or an interrupt) is thrown as `weir.ToolError`
/// by the prelude, which sees `null`.
async fn tool(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let (Some(&n), Some(&a)) = (args.first(), args.get(1)) else {
        return Ok(FAILED);
    };
    let name = ex
        .string(&mut *caller, n, crate::tools::MAX_NAME_BYTES + 1)
        .await?
        .unwrap_or_default();
    let json = ex
        .string(&mut *caller, a, MAX_TOOL_ARGS)
        .await?
        .unwrap_or_default();
    let (name, json) = (
        String::from_utf8_lossy(&name).into_owned(),
        String::from_utf8_lossy(&json).into_owned(),
    );
    let answer = crate::store::call_tool(&mut caller.as_context_mut(), &name, &json).await;
    match answer {
        Ok(value) => {
            ex.new_string(&mut *caller, format!("{{\"ok\":{value}}}").as_bytes())
                .await
        }
        Err(Some(why)) => {
            let text = serde_json::json!({ "error": why }).to_string();
            ex.new_string(&mut *caller, text.as_bytes()).await
        }
        Err(None) => {
            // The interrupt that ended the wait was taken: raised at the interpreter's next poll.
            let interrupter = caller.data().interrupter.clone();
            if interrupter.request() {
                interrupter.deliver();
            }
            Ok(FAILED)
        }
    }
}

/// Most bytes a program reads from one file of its working directory.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The run's working directory, as the host reaches it (cap-std: nothing outside it).
fn live_dir(caller: &Caller<'_, GuestState>) -> Option<crate::scratch::LiveDir> {
    caller.data().scratch().map(crate::scratch::LiveDir::new)
}

/// `read_file(path)`: the text of a file of the working directory (`path` relative to it),
/// `null` when there is none; a failure's reason as `{error}` JSON text is not needed: any other
/// failure (too large, not text) is `null` too, and the prelude says ENOENT.
async fn read_file(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let Some(&p) = args.first() else {
        return Ok(FAILED);
    };
    let path = ex.string(&mut *caller, p, 4096).await?.unwrap_or_default();
    let path = String::from_utf8_lossy(&path).into_owned();
    let read = live_dir(caller).map(|dir| dir.read(&path, MAX_FILE_BYTES));
    match read {
        Some(Ok(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            ex.new_string(&mut *caller, text.as_bytes()).await
        }
        _ => ex.null(&mut *caller).await,
    }
}

/// `write_file(path, text, append)`: writes (or appends to) a file of the working directory,
/// the directory staying within the run's scratch limit: `undefined`, or why not as a string.
async fn write_file(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    args: &[Handle],
) -> wasmtime::Result<i32> {
    let (Some(&p), Some(&t)) = (args.first(), args.get(1)) else {
        return Ok(FAILED);
    };
    let append = number(caller, ex, args, 2).await?.unwrap_or(0.0) != 0.0;
    let path = ex.string(&mut *caller, p, 4096).await?.unwrap_or_default();
    let path = String::from_utf8_lossy(&path).into_owned();
    let limit = caller.data().host.scratch_bytes;
    let Some(mut text) = ex
        .string(&mut *caller, t, (limit as usize).saturating_add(1))
        .await?
    else {
        return Ok(FAILED);
    };
    if text.len() as u64 > limit {
        let why = format!("{path}: larger than the run's scratch limit of {limit} bytes");
        return ex.new_string(&mut *caller, why.as_bytes()).await;
    }
    let Some(dir) = live_dir(caller) else {
        return Ok(FAILED);
    };
    if append {
        if let Ok(mut old) = dir.read(&path, limit) {
            old.append(&mut text);
            text = old;
        }
    }
    match dir.write(&path, &text, limit) {
        Ok(()) => ex.undefined(&mut *caller).await,
        Err(e) => ex.new_string(&mut *caller, e.to_string().as_bytes()).await,
    }
}
