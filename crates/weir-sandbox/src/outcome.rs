//! How a run ended: one closed set of outcomes, each with a human message and a fixed exit code.

use crate::limits::{human_bytes, human_ms, Limits};
use serde::{Deserialize, Serialize};

/// The ways a run can end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The script ran to completion or called `sys.exit(code)`.
    Exited {
        /// The exit status.
        code: i32,
    },
    /// The script ended with an uncaught exception (traceback already on stderr).
    Error {
        /// The exception's type.
        exception: String,
        /// Its message.
        message: String,
    },
    /// The wall-time limit passed (paused time does not count).
    Timeout,
    /// The fuel (CPU) budget ran out.
    CpuLimit,
    /// The script asked for more memory than its limit.
    MemoryLimit,
    /// The script wrote more than its output limit.
    OutputLimit,
    /// The scratch directory grew past its size limit (or its file-count limit).
    DiskLimit,
    /// The guest's stack overflowed (C-level recursion CPython could not catch; JavaScript
    /// recursion too deep for QuickJS's stack).
    StackOverflow,
    /// The caller stopped the run.
    Stopped,
    /// The REPL or a paused run sat idle longer than the idle limit.
    Idle,
    /// The server shut down while the run was active.
    Shutdown,
    /// The guest trapped for a reason that is not one of the above (a weir or guest bug).
    Crashed {
        /// What happened, for the logs.
        detail: String,
    },
}

impl Outcome {
    /// The outcome's name as the protocol and CLI spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Exited { .. } => "exited",
            Outcome::Error { .. } => "error",
            Outcome::Timeout => "timeout",
            Outcome::CpuLimit => "cpu_limit",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputLimit => "output_limit",
            Outcome::DiskLimit => "disk_limit",
            Outcome::StackOverflow => "stack_overflow",
            Outcome::Stopped => "stopped",
            Outcome::Idle => "idle",
            Outcome::Shutdown => "shutdown",
            Outcome::Crashed { .. } => "crashed",
        }
    }

    /// The exit status `weir run` ends with (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited { code } => *code,
            Outcome::Error { .. } => 1,
            Outcome::Timeout | Outcome::CpuLimit | Outcome::Idle => 124,
            Outcome::MemoryLimit => 137,
            Outcome::OutputLimit => 141,
            Outcome::DiskLimit => 153,
            Outcome::StackOverflow => 134,
            Outcome::Stopped | Outcome::Shutdown => 130,
            Outcome::Crashed { .. } => 70,
        }
    }

    /// One line a person can read, naming the limit where one was hit.
    pub fn message(&self, limits: &Limits) -> String {
        match self {
            Outcome::Exited { code: 0 } => "Script finished".into(),
            Outcome::Exited { code } => format!("Script exited with code {code}"),
            Outcome::Error { exception, .. } => {
                format!("Script ended with an uncaught {exception}")
            }
            Outcome::Timeout => format!(
                "Script exceeded its {} time limit",
                human_ms(limits.wall_ms)
            ),
            Outcome::CpuLimit => match limits.cpu_fuel {
                Some(fuel) => format!("Script exceeded its CPU limit of {fuel} fuel units"),
                None => "Script exceeded its CPU limit".into(),
            },
            Outcome::MemoryLimit => format!(
                "Script exceeded its {} memory limit",
                human_bytes(limits.memory_bytes)
            ),
            Outcome::OutputLimit => format!(
                "Script exceeded its {} output limit",
                human_bytes(limits.output_bytes)
            ),
            Outcome::DiskLimit => format!(
                "Script exceeded its {} scratch-directory limit",
                human_bytes(limits.scratch_bytes)
            ),
            Outcome::StackOverflow => "Script overflowed the stack (recursion too deep)".into(),
            Outcome::Stopped => "Script was stopped".into(),
            Outcome::Idle => format!(
                "Session was idle for more than {}",
                human_ms(limits.idle_ms)
            ),
            Outcome::Shutdown => "Server is shutting down; the script was stopped".into(),
            Outcome::Crashed { detail } => format!("The sandbox crashed: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit() {
        let limits = Limits {
            wall_ms: 3000,
            memory_bytes: 64 << 20,
            ..Limits::default()
        };
        assert_eq!(
            Outcome::Timeout.message(&limits),
            "Script exceeded its 3 s time limit"
        );
        assert_eq!(
            Outcome::MemoryLimit.message(&limits),
            "Script exceeded its 64 MiB memory limit"
        );
        assert_eq!(Outcome::Timeout.exit_code(), 124);
        assert_eq!(Outcome::CpuLimit.exit_code(), 124);
        assert_eq!(Outcome::Exited { code: 3 }.exit_code(), 3);
    }

    #[test]
    fn serializes_with_a_kind_tag() {
        let json = serde_json::to_value(Outcome::Exited { code: 2 }).unwrap();
        assert_eq!(json["outcome"], "exited");
        assert_eq!(json["code"], 2);
    }
}
