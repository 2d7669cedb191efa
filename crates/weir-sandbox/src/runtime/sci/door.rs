//! The door: `host.call(ptr, len, out_ptr_ptr, out_len_ptr) -> i32`, the guest's one import
//! beyond WASI. weir's runner (`guests/python-sci/runner.py`) sends one JSON request through it
//! and reads one JSON answer: the launch, the compiled program, an uncaught exception, the REPL
//! starting, a session's cells and how they end, and what the program displays. The answer is written
//! into memory the guest allocates (`host_alloc`); 0 means answered, -2 a request the host
//! cannot read.

use crate::display;
use crate::event::{CellEnd, CellException};
use crate::launch::Uncaught;
use crate::runtime::python::host::{cell_value, cut, MAX_MESSAGE_BYTES, MAX_TYPE_NAME_BYTES};
use crate::store::{self, GuestState};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use wasmtime::{Caller, Extern, Linker, StoreContextMut};

/// The guest's answer codes.
const ANSWERED: i32 = 0;
const FAULT: i32 = -2;

/// Largest request the host reads, bytes: a display carries a bundle of up to
/// [`display::MAX_BUNDLE_BYTES`] as JSON text inside the request's JSON (quotes escaped again),
/// which the output limit bounds again when it is delivered.
const MAX_REQUEST_BYTES: usize = 2 * display::MAX_BUNDLE_BYTES + (1 << 20);

/// Installs `host.call`.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            "host",
            "call",
            |mut caller: Caller<'_, GuestState>,
             (ptr, len, out_ptr, out_len): (i32, i32, i32, i32)| {
                Box::new(async move {
                    let Some(request) = read(&mut caller, ptr, len) else {
                        return Ok(FAULT);
                    };
                    let Some(answer) = answer(&mut caller.as_context_mut(), &request).await? else {
                        return Ok(FAULT);
                    };
                    write(&mut caller, &answer, out_ptr, out_len).await
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}

use wasmtime::AsContextMut;

/// The request's bytes, copied out of guest memory (at most [`MAX_REQUEST_BYTES`]).
fn read(caller: &mut Caller<'_, GuestState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > MAX_REQUEST_BYTES {
        return None;
    }
    Some(
        memory
            .data(&*caller)
            .get(ptr..ptr.checked_add(len)?)?
            .to_vec(),
    )
}

async fn write(
    caller: &mut Caller<'_, GuestState>,
    answer: &Value,
    out_ptr: i32,
    out_len: i32,
) -> wasmtime::Result<i32> {
    let bytes = answer.to_string().into_bytes();
    let Ok(len) = i32::try_from(bytes.len()) else {
        return Ok(FAULT);
    };
    let Some(Extern::Func(alloc)) = caller.get_export("host_alloc") else {
        return Ok(FAULT);
    };
    let alloc = alloc.typed::<i32, i32>(&*caller)?;
    let at = alloc.call_async(&mut *caller, len).await?;
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(FAULT);
    };
    let fits = |at: i32, n: usize| (at as u32 as usize).checked_add(n);
    if at == 0 || fits(at, bytes.len()).is_none_or(|end| end > memory.data_size(&*caller)) {
        return Ok(FAULT);
    }
    memory.write(&mut *caller, at as u32 as usize, &bytes)?;
    memory.write(
        &mut *caller,
        out_ptr as u32 as usize,
        &(at as u32).to_le_bytes(),
    )?;
    memory.write(
        &mut *caller,
        out_len as u32 as usize,
        &(len as u32).to_le_bytes(),
    )?;
    Ok(ANSWERED)
}

fn launch(launch: crate::launch::Launch) -> Value {
    let b64 = |b: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    json!({
        "script": launch.script,
        "code": launch.code,
        // Bytes that are not UTF-8 are read from the script's file instead.
        "source": launch.source.and_then(|s| String::from_utf8(s).ok()),
        "compiled": launch.compiled.as_ref().map(b64),
        "cache_compiled": launch.cache_compiled,
        "repl": launch.repl,
        "cells": launch.cells,
        "args": launch.args,
        "env": launch.env,
        "cwd": launch.cwd,
        "path": launch.path,
    })
}

/// The request's kind: read first, every other field skipped unread.
#[derive(Deserialize)]
struct Op<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
}

/// `compiled`: the program as the guest compiled it (marshal, base64).
#[derive(Deserialize)]
struct Compiled<'a> {
    #[serde(borrow, default)]
    code: Cow<'a, str>,
}

/// `uncaught`: the exception a program did not catch.
#[derive(Deserialize)]
struct UncaughtRequest<'a> {
    #[serde(borrow, rename = "type", default)]
    type_name: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
}

/// `cell_code`: a cell's own code starts or has returned.
#[derive(Deserialize)]
struct CellCode {
    running: bool,
}

/// `cell_done`: how a cell ended, and whether it ended the session (`exit`: its status).
#[derive(Deserialize)]
struct CellDone<'a> {
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    failure: Option<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(default)]
    exit: Option<i32>,
    /// The value's bundle when it has more than its `repr`: `(data, metadata)` JSON text.
    #[serde(borrow, default)]
    rich: Option<(Cow<'a, str>, Cow<'a, str>)>,
}

/// `display`: a MIME bundle the program shows (`data` and `metadata` as JSON objects in text,
/// as `guests/shared/weir_display.py` sends them).
#[derive(Deserialize)]
struct DisplayRequest<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    metadata: Cow<'a, str>,
    #[serde(borrow, default)]
    display_id: Option<Cow<'a, str>>,
    #[serde(default)]
    update: bool,
}

/// `clear_output`.
#[derive(Deserialize)]
struct ClearRequest {
    #[serde(default)]
    wait: bool,
}

/// `tool`: a host-function call (`crate::tools`), its keyword arguments a JSON object in text.
#[derive(Deserialize)]
struct ToolRequest<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    args: Cow<'a, str>,
}

/// Parses a request as `T`, whatever else it holds (fields `T` does not name are skipped
/// without being built).
fn parse<'a, T: Deserialize<'a>>(request: &'a [u8]) -> Option<T> {
    serde_json::from_slice(request).ok()
}

/// Answers one request, parsed into the structure its kind has and nothing more (no tree of
/// whatever the guest sent is built); `None` for a request that does not parse, which the
/// guest reads as a fault.
async fn answer(
    store: &mut StoreContextMut<'_, GuestState>,
    request: &[u8],
) -> wasmtime::Result<Option<Value>> {
    let Some(Op { op }) = parse(request) else {
        return Ok(None);
    };
    Ok(Some(match op.as_ref() {
        "launch" => launch(store::launch(store).await?),
        "compiled" => {
            let Some(Compiled { code }) = parse(request) else {
                return Ok(None);
            };
            let code = base64::engine::general_purpose::STANDARD
                .decode(code.as_bytes())
                .ok()
                .filter(|c| c.len() <= GuestState::MAX_COMPILED_BYTES)
                .unwrap_or_default();
            store.data_mut().offer_compiled(code);
            json!({})
        }
        "uncaught" => {
            let Some(u) = parse::<UncaughtRequest>(request) else {
                return Ok(None);
            };
            store.data_mut().report_uncaught(Uncaught {
                type_name: cut(&u.type_name, MAX_TYPE_NAME_BYTES),
                message: cut(&u.message, MAX_MESSAGE_BYTES),
            });
            json!({})
        }
        "repl_started" => {
            store.data_mut().repl_started();
            json!({})
        }
        "cell" => json!({ "code": store.data().cell_source() }),
        "cell_code" => {
            let Some(CellCode { running }) = parse(request) else {
                return Ok(None);
            };
            store.data_mut().cell_code(running);
            json!({})
        }
        "cell_done" => {
            let Some(done) = parse::<CellDone>(request) else {
                return Ok(None);
            };
            let exit = done.exit;
            store.data_mut().cell_done(cell_end(done));
            store.data_mut().cell_exit(exit);
            json!({})
        }
        "display" => {
            let Some(r) = parse::<DisplayRequest>(request) else {
                return Ok(None);
            };
            match display::from_guest(&r.data, &r.metadata, r.display_id.as_deref(), r.update) {
                Ok(shown) => {
                    store.data_mut().display(shown)?;
                    json!({})
                }
                Err(why) => json!({ "refused": why }),
            }
        }
        "clear_output" => {
            let Some(ClearRequest { wait }) = parse(request) else {
                return Ok(None);
            };
            store.data_mut().clear_output(wait)?;
            json!({})
        }
        "tool" => {
            let Some(ToolRequest { name, args }) = parse(request) else {
                return Ok(None);
            };
            match store::call_tool(store, &name, &args).await {
                Ok(value) => json!({ "value": value }),
                Err(Some(why)) => json!({ "failed": why }),
                Err(None) => json!({ "interrupted": true }),
            }
        }
        _ => json!({ "error": format!("unknown request {:?}", cut(&op, 64)) }),
    }))
}

fn cell_end(done: CellDone<'_>) -> CellEnd {
    let value = done.value.map(|v| cell_value(&v));
    let exception = done.failure.map(|(type_name, message)| CellException {
        type_name: cut(&type_name, MAX_TYPE_NAME_BYTES),
        message: cut(&message, MAX_MESSAGE_BYTES),
    });
    let rich = done
        .rich
        .and_then(|(data, metadata)| display::cell_result(&data, &metadata));
    CellEnd {
        value,
        rich,
        exception,
    }
}
