//! What both stores of durable sessions hand back: a session's record, and what a takeover
//! found.

use weir_sandbox::Limits;

/// A durable session as the database knows it.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub user: String,
    pub runtime: String,
    pub limits: Limits,
    /// When the session was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// What `DurableStore::take` found.
pub enum Take {
    /// No such session of the user's.
    Missing,
    /// Taken over.
    Taken(Taken),
    /// Held by a live process: `node` names it, `key` is its node lock (0 for a process on
    /// this machine, which cannot be asked).
    Held { node: String, key: i64 },
}

/// A session taken over: its record, the sequence number of its last save, and its saves from
/// the last whole one, oldest first.
pub struct Taken {
    pub record: Record,
    pub seq: i64,
    pub saves: Vec<Vec<u8>>,
}

/// Now, ms since the Unix epoch, as the stores keep times.
pub(super) fn now_ms() -> i64 {
    crate::history::unix_ms(std::time::SystemTime::now()) as i64
}
