//! The door: `host.call(ptr, len, out_ptr_ptr, out_len_ptr) -> i32`, the guest's one import
//! beyond WASI. weir's runner (`guests/python-sci/runner.py`) sends one JSON request through it
//! and reads one JSON answer: the launch, the compiled program, an uncaught exception, the REPL
//! starting, a session's cells, and figures to display. The answer is written into memory the
//! guest allocates (`host_alloc`); 0 means answered, -2 a request the host cannot read.

use crate::event::{CellEnd, CellException, Display};
use crate::launch::Uncaught;
use crate::runtime::python::host::{MAX_MESSAGE_BYTES, MAX_TYPE_NAME_BYTES, MAX_VALUE_BYTES};
use crate::store::{self, GuestState};
use base64::Engine as _;
use serde_json::{json, Value};
use wasmtime::{Caller, Extern, Linker, StoreContextMut};

/// The guest's answer codes.
const ANSWERED: i32 = 0;
const FAULT: i32 = -2;

/// Largest request the host reads, bytes: a display frame carries a PNG (base64), which the
/// output limit bounds again when it is delivered.
const MAX_REQUEST_BYTES: usize = 64 << 20;

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
                    let answer = answer(&mut caller.as_context_mut(), request).await?;
                    write(&mut caller, &answer, out_ptr, out_len).await
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}

use wasmtime::AsContextMut;

fn read(caller: &mut Caller<'_, GuestState>, ptr: i32, len: i32) -> Option<Value> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > MAX_REQUEST_BYTES {
        return None;
    }
    let bytes = memory.data(&*caller).get(ptr..ptr.checked_add(len)?)?;
    serde_json::from_slice(bytes).ok()
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

fn text(request: &Value, field: &str, max: usize) -> String {
    let text = request.get(field).and_then(Value::as_str).unwrap_or("");
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

async fn answer(
    store: &mut StoreContextMut<'_, GuestState>,
    request: Value,
) -> wasmtime::Result<Value> {
    let op = request.get("op").and_then(Value::as_str).unwrap_or("");
    Ok(match op {
        "launch" => launch(store::launch(store).await?),
        "compiled" => {
            let code = request.get("code").and_then(Value::as_str).unwrap_or("");
            let code = base64::engine::general_purpose::STANDARD
                .decode(code)
                .ok()
                .filter(|c| c.len() <= GuestState::MAX_COMPILED_BYTES)
                .unwrap_or_default();
            store.data_mut().offer_compiled(code);
            json!({})
        }
        "uncaught" => {
            let type_name = text(&request, "type", MAX_TYPE_NAME_BYTES);
            let message = text(&request, "message", MAX_MESSAGE_BYTES);
            store
                .data_mut()
                .report_uncaught(Uncaught { type_name, message });
            json!({})
        }
        "repl_started" => {
            store.data_mut().repl_started();
            json!({})
        }
        "next_cell" => json!({ "code": store::next_cell(store).await }),
        "cell_done" => {
            store.data_mut().cell_done(cell_end(&request));
            json!({})
        }
        "display" => match display(&request) {
            Some(image) => {
                store.data_mut().display(image)?;
                json!({ "accepted": true })
            }
            None => json!({ "accepted": false }),
        },
        _ => json!({ "error": format!("unknown request {op:?}") }),
    })
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

fn cell_end(request: &Value) -> CellEnd {
    let value = request.get("value").and_then(Value::as_str).map(|v| {
        let kept = text(request, "value", MAX_VALUE_BYTES);
        match kept.len() < v.len() {
            true => format!("{kept}… [truncated: longer than {MAX_VALUE_BYTES} bytes]"),
            false => kept,
        }
    });
    let exception = request
        .get("failure")
        .and_then(Value::as_array)
        .map(|pair| {
            let part = |i: usize, max: usize| {
                let t = pair.get(i).and_then(Value::as_str).unwrap_or("");
                let mut end = t.len().min(max);
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t[..end].to_owned()
            };
            CellException {
                type_name: part(0, MAX_TYPE_NAME_BYTES),
                message: part(1, MAX_MESSAGE_BYTES),
            }
        });
    CellEnd { value, exception }
}

fn display(request: &Value) -> Option<Display> {
    let mime = request.get("mime")?.as_str()?;
    if mime != "image/png" {
        return None;
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(request.get("data")?.as_str()?)
        .ok()?;
    if !data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return None;
    }
    let dim = |f: &str| u32::try_from(request.get(f)?.as_u64()?).ok();
    Some(Display {
        mime: mime.to_string(),
        data: data.into(),
        width: dim("width")?,
        height: dim("height")?,
    })
}
