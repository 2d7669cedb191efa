//! The guest's stdio: bounded output pipes with caps, and an interactive stdin fed by the caller.
//!
//! Output: stdout and stderr chunks go into the run's one bounded event channel, so their order is
//! kept and a slow consumer makes the guest wait (a write permit is only granted while the channel
//! has room). Nothing here buffers more than one chunk per stream.
//!
//! Input: the caller's bytes arrive through a bounded channel; while the guest waits for them the
//! stream tells the run driver, which reports `waiting_input` and switches to the idle clock.
//!
//! One file per part: `output` (the ordered output queue and the guest's stdout and stderr),
//! `budget` (the output caps and their markers), `stdin_queue` (the caller's bounded end of
//! stdin) and `stdin` (the guest's end: replayed reads, gated reads, waits and interrupts).

mod budget;
mod output;
mod stdin;
mod stdin_queue;

pub use output::{OutputLimitExceeded, OutputQueue};
pub use stdin::{GuestStatus, GuestStdin, StdinMode};
pub use stdin_queue::{stdin_channel, StdinSender};
