//! The output caps: the total a run (or a session's cell) may write, and the longest line kept.
//! Cut output gets a marker saying what was cut, and a cut never splits a UTF-8 sequence.

use crate::event::StreamKind;
use crate::limits::human_bytes;
use bytes::{Bytes, BytesMut};

/// Accounting shared by stdout and stderr: total bytes and per-stream line state.
#[derive(Debug)]
pub(super) struct OutputBudget {
    /// Bytes written in earlier cells of a session.
    earlier: u64,
    written: u64,
    cap: u64,
    line_cap: u64,
    line_len: [u64; 2],
    cutting_line: [bool; 2],
    truncated: bool,
}

/// What one guest write turns into.
pub(super) struct Charged {
    pub(super) data: Bytes,
    pub(super) over_cap: bool,
}

/// Cuts `data` to at most `max` bytes without splitting a UTF-8 sequence.
fn utf8_prefix(data: &[u8], max: usize) -> usize {
    if max >= data.len() {
        return data.len();
    }
    let mut end = max;
    while end > 0 && max - end < 3 && (data[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    if (data[end] & 0xC0) == 0x80 {
        max
    } else {
        end
    }
}

impl OutputBudget {
    pub(super) fn new(cap: u64, line_cap: u64) -> Self {
        OutputBudget {
            earlier: 0,
            written: 0,
            cap,
            line_cap,
            line_len: [0; 2],
            cutting_line: [false; 2],
            truncated: false,
        }
    }

    /// A new cell's budget: the cap applies to each cell of a session on its own.
    pub(super) fn begin_cell(&mut self) {
        self.earlier = self.earlier.saturating_add(self.written);
        self.written = 0;
        self.line_len = [0; 2];
        self.cutting_line = [false; 2];
    }

    /// Applies the total cap and the line cap to one write of `stream`.
    pub(super) fn charge(&mut self, stream: StreamKind, data: &[u8]) -> Charged {
        let remaining = self.cap.saturating_sub(self.written);
        let over_cap = data.len() as u64 > remaining;
        let kept = if over_cap {
            &data[..utf8_prefix(data, remaining as usize)]
        } else {
            data
        };
        self.written = self.written.saturating_add(data.len() as u64);
        let mut out = BytesMut::with_capacity(kept.len() + 64);
        for piece in kept.split_inclusive(|b| *b == b'\n') {
            self.charge_line_piece(stream as usize, piece, &mut out);
        }
        if over_cap {
            self.truncated = true;
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.extend_from_slice(b"\n");
            }
            let notice = format!(
                "[output truncated: the script wrote more than {}]\n",
                human_bytes(self.cap)
            );
            out.extend_from_slice(notice.as_bytes());
        }
        Charged {
            data: out.freeze(),
            over_cap,
        }
    }

    /// Counts an image of `n` bytes against the total cap; false (and the output marked cut)
    /// when it does not fit.
    pub(super) fn charge_image(&mut self, n: u64) -> bool {
        let over = n > self.cap.saturating_sub(self.written);
        self.written = self.written.saturating_add(n);
        if over {
            self.truncated = true;
        }
        !over
    }

    /// Whether any output was cut (line cap or total cap).
    pub(super) fn truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes written in all cells so far, before any cutting.
    pub(super) fn total_written(&self) -> u64 {
        self.earlier + self.written
    }

    /// `piece` holds at most one newline, at its end.
    fn charge_line_piece(&mut self, s: usize, piece: &[u8], out: &mut BytesMut) {
        let ends_line = piece.ends_with(b"\n");
        let body = if ends_line {
            &piece[..piece.len() - 1]
        } else {
            piece
        };
        if !self.cutting_line[s] {
            let room = self.line_cap.saturating_sub(self.line_len[s]) as usize;
            if body.len() <= room {
                out.extend_from_slice(body);
                self.line_len[s] += body.len() as u64;
            } else {
                out.extend_from_slice(&body[..utf8_prefix(body, room)]);
                let marker = format!(
                    " [truncated: line longer than {}]",
                    human_bytes(self.line_cap)
                );
                out.extend_from_slice(marker.as_bytes());
                self.cutting_line[s] = true;
                self.truncated = true;
            }
        }
        if ends_line {
            out.extend_from_slice(b"\n");
            self.line_len[s] = 0;
            self.cutting_line[s] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_all(budget: &mut OutputBudget, data: &[u8]) -> (String, bool) {
        let a = budget.charge(StreamKind::Stdout, data);
        (String::from_utf8_lossy(&a.data).into_owned(), a.over_cap)
    }

    #[test]
    fn passes_output_within_limits_unchanged() {
        let mut b = OutputBudget::new(1000, 100);
        assert_eq!(
            charge_all(&mut b, b"hello\nworld\n"),
            ("hello\nworld\n".into(), false)
        );
        assert!(!b.truncated);
    }

    #[test]
    fn cuts_long_lines_with_a_marker_and_resumes_after_newline() {
        let mut b = OutputBudget::new(1 << 20, 4);
        let (out, _) = charge_all(&mut b, b"abcdefgh");
        assert_eq!(out, "abcd [truncated: line longer than 4 B]");
        let (out, _) = charge_all(&mut b, b"ijk\nok\n");
        assert_eq!(out, "\nok\n");
    }

    #[test]
    fn stops_at_the_total_cap_with_a_notice() {
        let mut b = OutputBudget::new(10, 100);
        let (out, over) = charge_all(&mut b, b"0123456789abc");
        assert!(over);
        assert!(b.truncated);
        assert_eq!(
            out,
            "0123456789\n[output truncated: the script wrote more than 10 B]\n"
        );
    }

    #[test]
    fn never_splits_a_utf8_sequence() {
        let s = "ééé".as_bytes(); // 6 bytes, 2 per char
        assert_eq!(utf8_prefix(s, 3), 2);
        assert_eq!(utf8_prefix(s, 4), 4);
        assert_eq!(utf8_prefix(s, 10), 6);
    }

    #[test]
    fn line_cap_is_exact_across_chunks() {
        for chunk in [1usize, 7, 4096, 8192, 10_000] {
            let mut b = OutputBudget::new(1 << 30, 1000);
            let mut out = Vec::new();
            let line = vec![b'x'; 5000];
            for piece in line.chunks(chunk) {
                out.extend_from_slice(&b.charge(StreamKind::Stdout, piece).data);
            }
            let xs = out.iter().filter(|c| **c == b'x').count();
            assert_eq!(xs, 1000, "chunk size {chunk}");
        }
    }
}
