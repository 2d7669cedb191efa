//! The kernel's one sandboxed session: a run in cell mode that each `execute_request` sends a
//! cell, and that the kernel also asks, with cells of its own, what a notebook asks a kernel
//! beyond running code (completions, documentation, whether code is complete, a failed cell's
//! traceback: `guests/shared/weir_display.py`, `_kernel_call`).

use crate::error::{Error, Result};
use serde_json::Value;
use weir_sandbox::{Cell, Event, Limits, RunControl, RunHandle, RunRequest, Sandbox, StreamKind};

/// The line a helper answers on (`weir_display._KERNEL_MARK`).
const MARK: &str = "WEIR-KERNEL ";
/// The most a helper's answer may be: completions of a large namespace, a long docstring.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The most cells whose names a traceback maps to `In[n]`; older ones keep the session's.
const MAX_NAMED_CELLS: usize = 10_000;

/// The session.
pub struct Guest {
    handle: RunHandle,
    /// Cells sent so far: the session numbers them 1, 2, … (`<cell N>` in tracebacks), the
    /// kernel's own helper cells included.
    sent: usize,
    /// Which of them were a notebook's, by execution count: `(N, n)`, oldest first.
    named: std::collections::VecDeque<(usize, usize)>,
}

impl Guest {
    /// Starts a session in `runtime` with `limits`, in kernel mode: a failed cell's traceback
    /// is kept for [`Guest::traceback`] instead of printed.
    pub async fn start(sandbox: &Sandbox, runtime: &str, limits: Limits) -> Result<Guest> {
        let mut req = RunRequest::script(Vec::new());
        req.program = weir_sandbox::Program::Code(String::new());
        req.cells = true;
        req.runtime = Some(runtime.to_owned());
        req.limits = limits;
        let handle = sandbox.start(req).await.map_err(Error::Sandbox)?;
        let mut guest = Guest {
            handle,
            sent: 0,
            named: Default::default(),
        };
        guest.helper("start", serde_json::json!({})).await?;
        Ok(guest)
    }

    /// What controls the run: interrupts, stdin, stop.
    pub fn control(&self) -> RunControl {
        self.handle.control()
    }

    /// Sends a cell; its events follow from [`Guest::next_event`].
    pub fn send(&mut self, code: &str, interactive: bool) -> Result<()> {
        self.handle
            .control()
            .send_cell(Cell {
                code: code.to_owned(),
                interactive,
                ..Default::default()
            })
            .map_err(Error::Sandbox)?;
        self.sent += 1;
        Ok(())
    }

    /// Sends a notebook's cell with execution count `count`: its tracebacks name it
    /// `Cell In[count]`, as IPython's do.
    pub fn send_cell(&mut self, code: &str, interactive: bool, count: usize) -> Result<()> {
        self.send(code, interactive)?;
        if self.named.len() == MAX_NAMED_CELLS {
            self.named.pop_front();
        }
        self.named.push_back((self.sent, count));
        Ok(())
    }

    /// `File "<cell N>"` as `Cell In[n]` for the notebook's cells.
    fn rename_cells(&self, line: &str) -> String {
        const OPEN: &str = "File \"<cell ";
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        while let Some(at) = rest.find(OPEN) {
            out.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len()..];
            let end = after.find(">\"");
            let number = end.and_then(|end| after[..end].parse::<usize>().ok());
            let count = number.and_then(|n| self.named.iter().find(|(sent, _)| *sent == n));
            match (end, count) {
                (Some(end), Some((_, count))) => {
                    out.push_str(&format!("Cell In[{count}]"));
                    rest = &after[end + 2..];
                }
                _ => {
                    out.push_str(OPEN);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The session's next event; `None` once it has ended and said so.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.handle.next_event().await
    }

    /// Asks the session's kernel helper `op` with `args` (a cell of the kernel's own, whose
    /// output no one else sees); its JSON answer.
    pub async fn helper(&mut self, op: &str, args: Value) -> Result<Value> {
        let code = format!(
            "__import__('weir_display')._kernel_call({}, __import__('json').loads({}))",
            Value::from(op),
            Value::from(args.to_string()),
        );
        self.send(&code, false)?;
        let mut out = Vec::new();
        loop {
            match self.next_event().await {
                Some(Event::Output {
                    stream: StreamKind::Stdout,
                    data,
                }) if out.len() + data.len() <= MAX_ANSWER_BYTES => out.extend_from_slice(&data),
                Some(Event::Cell(_)) => break,
                Some(Event::Exit(result)) => return Err(Error::Ended(result.message)),
                None => return Err(Error::Ended("the session vanished".into())),
                Some(_) => {}
            }
        }
        let text = String::from_utf8_lossy(&out);
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(MARK))
            .ok_or_else(|| Error::Helper(format!("{op}: no answer")))?;
        let answer: Value =
            serde_json::from_str(line).map_err(|e| Error::Helper(format!("{op}: {e}")))?;
        match answer.get("error").and_then(Value::as_str) {
            Some(why) => Err(Error::Helper(format!("{op}: {why}"))),
            None => Ok(answer),
        }
    }

    /// The traceback of the cell that just failed, as lines (what ipykernel's `error` carries).
    pub async fn traceback(&mut self) -> Vec<String> {
        match self.helper("traceback", serde_json::json!({})).await {
            Ok(answer) => answer["traceback"]
                .as_array()
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l.as_str())
                        .map(|l| self.rename_cells(l.trim_end_matches('\n')))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Ends the session.
    pub fn stop(&self) {
        self.handle.control().stop();
    }
}
