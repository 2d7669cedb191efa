//! Finds, in the built component's interpreter snapshot, the guest addresses a host writes to
//! interrupt the running Python code with `KeyboardInterrupt`.
//!
//! CPython raises an asynchronous exception (`PyThreadState_SetAsyncExc`) when the thread's
//! `async_exc` holds an exception type and its `eval_breaker` has `_PY_ASYNC_EXCEPTION_BIT` set:
//! the interpreter checks that word at every backward jump, call and return from a builtin
//! (`time.sleep`, `input`), so the exception reaches a busy loop within one iteration. On wasm32
//! both are plain words in linear memory, at fixed addresses in the snapshot: the main thread
//! state is part of `_PyRuntime`, which starts with `_Py_DebugOffsets` (PEP 768's table for
//! out-of-process debuggers, cookie `xdebugpy`), and that table gives the offsets to follow. The
//! guest lists `KeyboardInterrupt`'s address in a marked table (`runner.py`,
//! `_interrupt_table`), which this pass reads and then zeroes.

use crate::image::{marked_segments, Image};

/// The marker the guest's table starts with (built at run time, so no constant holds it).
const MARKER: &[u8] = b"WEIR-INTERRUPT-TABLE-V1";
const COOKIE: &[u8] = b"xdebugpy";
/// `_Py_DebugOffsets` field offsets, CPython 3.14.0 (`Include/internal/pycore_debug_offsets.h`):
/// `version`, `free_threaded`, `runtime_state.interpreters_head`,
/// `interpreter_state.threads_head`, `thread_state.interp` and `thread_state.thread_id`.
const VERSION: u32 = 8;
const FREE_THREADED: u32 = 16;
const INTERPRETERS_HEAD: u32 = 40;
const THREADS_HEAD: u32 = 72;
const THREAD_INTERP: u32 = 200;
const THREAD_ID: u32 = 216;
/// In `PyThreadState` (`Include/cpython/pystate.h`), `eval_breaker` directly follows `interp`
/// and `async_exc` directly precedes `thread_id`: one wasm32 word each.
const WORD: u32 = 4;

/// Guest addresses of the words an interrupt writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptSite {
    /// The main thread state's `eval_breaker`.
    pub eval_breaker: u32,
    /// The main thread state's `async_exc`.
    pub async_exc: u32,
    /// `KeyboardInterrupt`'s type object.
    pub exception: u32,
}

impl InterruptSite {
    /// Reads the form [`std::fmt::Display`] writes: three decimal addresses.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace().map(|w| w.parse::<u32>().ok());
        let site = InterruptSite {
            eval_breaker: words.next()??,
            async_exc: words.next()??,
            exception: words.next()??,
        };
        words.next().is_none().then_some(site)
    }
}

impl std::fmt::Display for InterruptSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.eval_breaker, self.async_exc, self.exception
        )
    }
}

/// Locates the interrupt site in `component` and zeroes the guest's table. Fails if the
/// snapshot is not a CPython 3.14 whose layout matches what this pass knows.
pub fn find(component: &mut [u8]) -> Result<InterruptSite, String> {
    let (segments, table) = marked_segments(component, MARKER, "interrupt table")?;
    let image = Image {
        bytes: component,
        segments,
    };
    let exception = image.read_u32(table + MARKER.len() as u32);
    for k in 0..(MARKER.len() as u32 + 4) {
        if let Some(at) = image.locate(table + k) {
            image.bytes[at] = 0;
        }
    }
    let runtime = find_runtime(&image)?;
    let read64 = |at: u32| u64::from(image.read_u32(at)) | u64::from(image.read_u32(at + 4)) << 32;
    let word = |field: u32| -> Result<u32, String> {
        u32::try_from(read64(runtime + field))
            .map_err(|_| format!("debug offset {field} is not a wasm32 offset"))
    };
    let interp = image.read_u32(runtime + word(INTERPRETERS_HEAD)?);
    let tstate = image.read_u32(interp + word(THREADS_HEAD)?);
    let (interp_at, thread_id_at) = (word(THREAD_INTERP)?, word(THREAD_ID)?);
    if interp == 0 || tstate == 0 || image.read_u32(tstate + interp_at) != interp {
        return Err(format!(
            "unexpected thread state layout (interpreter {interp:#x}, thread {tstate:#x}, its interp at +{interp_at})"
        ));
    }
    let eval_breaker = tstate + interp_at + WORD;
    let async_exc = tstate + thread_id_at - WORD;
    if image.read_u32(async_exc) != 0 || exception == 0 {
        return Err(
            "the snapshot's thread has an exception pending, or KeyboardInterrupt is missing"
                .into(),
        );
    }
    Ok(InterruptSite {
        eval_breaker,
        async_exc,
        exception,
    })
}

/// `_PyRuntime`: the debug cookie followed by a 3.14 version and a GIL build.
fn find_runtime(image: &Image<'_>) -> Result<u32, String> {
    for seg in &image.segments {
        let data = image.data(seg);
        let mut from = 0;
        while let Some(pos) = data[from..].windows(COOKIE.len()).position(|w| w == COOKIE) {
            let at = seg.address + (from + pos) as u32;
            // PY_VERSION_HEX: 0x030E00F0 for 3.14.0 final (later 3.14 releases keep the layout).
            let major_minor = image.read_u32(at + VERSION) >> 16;
            if major_minor == 0x030E && image.read_u32(at + FREE_THREADED) == 0 {
                return Ok(at);
            }
            from += pos + 1;
        }
    }
    Err("CPython 3.14's _PyRuntime (debug cookie) is not in the snapshot".into())
}
