//! ES modules: `import` of node's built-in modules (`fs`, `node:readline`, …: the prelude's,
//! with their names exported) and of modules in the run's working directory (`./lib/util.js`,
//! `./data.json`), read by the host inside the directory. Anything else does not resolve.

use super::guest::Exports;
use crate::store::GuestState;
use wasmtime::Caller;

/// The built-in modules and the names each exports beside its default export.
const BUILTINS: &[(&str, &[&str])] = &[
    (
        "fs",
        &[
            "readFileSync",
            "writeFileSync",
            "appendFileSync",
            "existsSync",
            "writeSync",
            "readFile",
            "promises",
        ],
    ),
    ("readline", &["createInterface", "Interface"]),
    (
        "util",
        &[
            "inspect",
            "format",
            "isDeepStrictEqual",
            "promisify",
            "types",
            "TextEncoder",
            "TextDecoder",
        ],
    ),
    ("events", &["EventEmitter"]),
    (
        "assert",
        &[
            "ok",
            "equal",
            "strictEqual",
            "notStrictEqual",
            "deepStrictEqual",
            "deepEqual",
            "throws",
            "strict",
            "AssertionError",
        ],
    ),
    (
        "path",
        &[
            "sep",
            "delimiter",
            "basename",
            "dirname",
            "extname",
            "join",
            "resolve",
            "isAbsolute",
        ],
    ),
    (
        "os",
        &[
            "EOL", "platform", "arch", "cpus", "totalmem", "freemem", "homedir", "tmpdir",
            "hostname", "type",
        ],
    ),
    (
        "timers",
        &[
            "setTimeout",
            "setInterval",
            "setImmediate",
            "clearTimeout",
            "clearInterval",
            "clearImmediate",
        ],
    ),
    (
        "process",
        &[
            "argv", "env", "exit", "stdin", "stdout", "stderr", "nextTick", "hrtime",
        ],
    ),
];

/// Most bytes of a module read from the working directory.
const MAX_MODULE_BYTES: u64 = 16 << 20;

/// The canonical name `spec` names when imported from `base`: `node:NAME` for a built-in, a
/// path relative to the working directory for a file; `None` when it names neither.
pub(super) fn normalize(base: &str, spec: &str) -> Option<String> {
    let bare = spec.strip_prefix("node:").unwrap_or(spec);
    if BUILTINS.iter().any(|(name, _)| *name == bare) || spec.starts_with("node:") {
        return Some(format!("node:{bare}"));
    }
    let joined = if let Some(rest) = spec.strip_prefix("/sandbox/") {
        rest.to_owned()
    } else if spec.starts_with("./") || spec.starts_with("../") {
        let dir = base.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{spec}")
    } else {
        return None;
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The source of the module named `name` (as [`normalize`] names it).
fn source(caller: &Caller<'_, GuestState>, name: &str) -> Option<String> {
    if let Some(bare) = name.strip_prefix("node:") {
        let Some((_, names)) = BUILTINS.iter().find(|(n, _)| *n == bare) else {
            // `node:child_process` and the like: the prelude's `require` says why there is none.
            return Some(format!("export default require({bare:?});"));
        };
        return Some(format!(
            "const m = require({bare:?});\nexport default m;\nexport const {{ {} }} = m;\n",
            names.join(", ")
        ));
    }
    let dir = crate::scratch::LiveDir::new(caller.data().scratch()?);
    let candidates = [name.to_owned(), format!("{name}.js"), format!("{name}.mjs")];
    let (found, bytes) = candidates
        .iter()
        .find_map(|c| dir.read(c, MAX_MODULE_BYTES).ok().map(|b| (c.clone(), b)))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Some(match found.ends_with(".json") {
        true => format!("export default {};\n", text.trim()),
        false => text,
    })
}

/// Copies `text` into a fresh guest allocation and its length to `out_len`: its address, 0 when
/// it cannot.
async fn hand_over(
    caller: &mut Caller<'_, GuestState>,
    ex: &Exports,
    text: &str,
    out_len: i32,
) -> wasmtime::Result<i32> {
    let at = ex.alloc(&mut *caller, text.len().max(1)).await?;
    ex.memory
        .write(&mut *caller, at as u32 as usize, text.as_bytes())?;
    ex.memory.write(
        &mut *caller,
        out_len as u32 as usize,
        &(text.len() as u32).to_le_bytes(),
    )?;
    Ok(at)
}

fn read(caller: &Caller<'_, GuestState>, ex: &Exports, at: i32, len: i32) -> Option<String> {
    let mut bytes = vec![0u8; usize::try_from(len).ok()?.min(4096)];
    ex.memory
        .read(caller, at as u32 as usize, &mut bytes)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `env.host_module_normalize(base, spec, out_len)`: the canonical name's address, 0 when the
/// specifier resolves to nothing.
pub(super) async fn on_normalize(
    caller: &mut Caller<'_, GuestState>,
    (base, base_len, spec, spec_len, out_len): (i32, i32, i32, i32, i32),
) -> wasmtime::Result<i32> {
    let ex = Exports::of_caller(caller)?;
    let base = if base_len > 0 {
        read(caller, &ex, base, base_len).unwrap_or_default()
    } else {
        String::new()
    };
    let Some(spec) = read(caller, &ex, spec, spec_len) else {
        return Ok(0);
    };
    match normalize(&base, &spec) {
        Some(name) => hand_over(caller, &ex, &name, out_len).await,
        None => Ok(0),
    }
}

/// `env.host_module_load(name, out_len)`: the module's source's address, 0 when there is none.
pub(super) async fn on_load(
    caller: &mut Caller<'_, GuestState>,
    (name, name_len, out_len): (i32, i32, i32),
) -> wasmtime::Result<i32> {
    let ex = Exports::of_caller(caller)?;
    let Some(name) = read(caller, &ex, name, name_len) else {
        return Ok(0);
    };
    match source(caller, &name) {
        Some(text) => hand_over(caller, &ex, &text, out_len).await,
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn specifiers_resolve_to_builtins_or_files_inside_the_directory() {
        assert_eq!(normalize("main.js", "fs").as_deref(), Some("node:fs"));
        assert_eq!(
            normalize("main.js", "node:readline").as_deref(),
            Some("node:readline")
        );
        assert_eq!(
            normalize("main.js", "node:child_process").as_deref(),
            Some("node:child_process")
        );
        assert_eq!(
            normalize("main.js", "./lib/a.js").as_deref(),
            Some("lib/a.js")
        );
        assert_eq!(normalize("lib/a.js", "../b.js").as_deref(), Some("b.js"));
        assert_eq!(
            normalize("lib/a.js", "./c.mjs").as_deref(),
            Some("lib/c.mjs")
        );
        assert_eq!(
            normalize("main.js", "/sandbox/x.js").as_deref(),
            Some("x.js")
        );
        assert_eq!(normalize("main.js", "../../etc/passwd"), None);
        assert_eq!(normalize("main.js", "/etc/passwd"), None);
        assert_eq!(normalize("main.js", "lodash"), None);
    }
}
