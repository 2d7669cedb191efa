//! This kernel's history, as ipykernel answers `history_request`: the cells executed with
//! `store_history`, numbered by execution count, with their results' text; `tail`, `range` and
//! `search` (glob patterns, `unique`, the last `n`).

use jupyter_protocol::{HistoryEntry, HistoryRequest};

/// The session number this kernel's history is under (one kernel, one session).
pub const SESSION: usize = 1;
/// The most cells remembered; older ones are forgotten first.
const MAX_ENTRIES: usize = 10_000;
/// The most bytes of a cell's source or output remembered.
const MAX_TEXT_BYTES: usize = 64 << 10;

/// One executed cell.
struct Entry {
    line: usize,
    input: String,
    output: String,
}

/// The cells this kernel executed.
#[derive(Default)]
pub struct History {
    entries: std::collections::VecDeque<Entry>,
}

impl History {
    /// Remembers cell `line`.
    pub fn push(&mut self, line: usize, input: &str, output: Option<&str>) {
        if self.entries.len() == MAX_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            line,
            input: cut(input),
            output: output.map(cut).unwrap_or_default(),
        });
    }

    /// The answer to a request.
    pub fn answer(&self, request: &HistoryRequest) -> Vec<HistoryEntry> {
        match request {
            HistoryRequest::Tail { n, output, .. } => {
                let n = (*n).max(0) as usize;
                let skip = self.entries.len().saturating_sub(n);
                self.render(self.entries.iter().skip(skip), *output)
            }
            HistoryRequest::Range {
                session,
                start,
                stop,
                output,
                ..
            } => {
                let ours = session.is_none_or(|s| s == 0 || s == SESSION as i32 || s == -1);
                let (start, stop) = ((*start).max(0) as usize, *stop);
                let picked = self
                    .entries
                    .iter()
                    .filter(|e| ours && e.line >= start && (stop <= 0 || e.line < stop as usize));
                self.render(picked, *output)
            }
            HistoryRequest::Search {
                pattern,
                unique,
                output,
                n,
                ..
            } => {
                let Ok(glob) = glob::Pattern::new(pattern) else {
                    return Vec::new();
                };
                let mut found: Vec<&Entry> = self
                    .entries
                    .iter()
                    .filter(|e| glob.matches(&e.input))
                    .collect();
                if *unique {
                    // The latest of each input, in the order they were last run.
                    let mut seen = std::collections::HashSet::new();
                    found.reverse();
                    found.retain(|e| seen.insert(e.input.as_str()));
                    found.reverse();
                }
                if *n > 0 {
                    let skip = found.len().saturating_sub(*n as usize);
                    found.drain(..skip);
                }
                self.render(found.into_iter(), *output)
            }
        }
    }

    fn render<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
        output: bool,
    ) -> Vec<HistoryEntry> {
        entries
            .map(|e| match output {
                true => {
                    HistoryEntry::InputOutput(SESSION, e.line, (e.input.clone(), e.output.clone()))
                }
                false => HistoryEntry::Input(SESSION, e.line, e.input.clone()),
            })
            .collect()
    }
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(entries: &[HistoryEntry]) -> Vec<(usize, String)> {
        entries
            .iter()
            .map(|e| match e {
                HistoryEntry::Input(_, n, i) => (*n, i.clone()),
                HistoryEntry::InputOutput(_, n, (i, o)) => (*n, format!("{i} -> {o}")),
            })
            .collect()
    }

    #[test]
    fn tail_range_and_search_answer_as_ipykernel_does() {
        let mut h = History::default();
        for (n, code) in ["x = 1", "x + 1", "print(x)", "x + 1"].iter().enumerate() {
            h.push(n + 1, code, (code == &"x + 1").then_some("2"));
        }
        let tail = HistoryRequest::Tail {
            n: 2,
            output: true,
            raw: true,
        };
        assert_eq!(
            lines(&h.answer(&tail)),
            [(3, "print(x) -> ".into()), (4, "x + 1 -> 2".into())]
        );
        let range = HistoryRequest::Range {
            session: Some(SESSION as i32),
            start: 2,
            stop: 3,
            output: false,
            raw: true,
        };
        assert_eq!(lines(&h.answer(&range)), [(2, "x + 1".into())]);
        let search = |pattern: &str, unique, n| HistoryRequest::Search {
            pattern: pattern.into(),
            unique,
            output: false,
            raw: true,
            n,
        };
        assert_eq!(h.answer(&search("x*", false, 0)).len(), 3);
        assert_eq!(
            lines(&h.answer(&search("x*", true, 0))),
            [(1, "x = 1".into()), (4, "x + 1".into())]
        );
        assert_eq!(
            lines(&h.answer(&search("*", false, 1))),
            [(4, "x + 1".into())]
        );
        assert!(h.answer(&search("[", false, 0)).is_empty());
    }
}
