//! Durable sessions (docs/sessions.md#durable-sessions): a session started with `durable: true`
//! is saved after every cell — in the cluster's PostgreSQL database (`postgres`), or on a single
//! node in a SQLite file beside its snapshots (`sqlite`) — so it outlives the process running it. When
//! that process dies (killed, crashed, its machine lost), the session's next request — on any
//! node, or on this one restarted — takes it over and restores it from its last save.
//!
//! Both stores keep one row per session — owner, runtime, limits, which process holds it, the
//! last save's sequence number and the first one still needed — and its saves
//! (`weir_sandbox::Snapshot` bytes: the first needed whole, each later one the changes since the
//! one before, `weir_sandbox::RunControl::save`). The store numbers the saves; a save of
//! changes is written only when it follows the store's last save, and any save only while the
//! row names this process: one that lost the session (taken over while it was cut off) writes
//! nothing. A whole save drops the saves before it.
//!
//! Taking a session over: its row names a process that is gone (a cluster node whose node lock
//! is not held; on one node, an owner whose lock file is free, `crate::history::sqlite`), so the
//! taking process names itself in the row (one conditional update: of two trying at once, one
//! wins) and reads the saves from the last whole one. In a cluster, a session whose node is
//! alive is asked for (`NOTIFY weir_durable`): that node lets it go between cells, its last
//! cell saved ([`DurableStore::release`]), and the asking node takes it over — as a load
//! balancer's hashing moves a user to a node that came back. A node that does not let go within [`HANDOFF`] leaves
//! the request a 503 naming it.
//!
//! Bounded: a save above `[snapshots] max_bytes` is not written (the cell says so); saves of
//! changes are followed by a whole one once they outweigh it, so a session keeps at most about
//! twice its size; rows of sessions idle past `session_idle_secs` whose process is gone are
//! deleted by the reaper of any process using the store.

mod postgres;
mod record;
mod sqlite;

pub use record::{Record, Take, Taken};

use crate::cluster::Node;
use crate::error::Error;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use weir_sandbox::AbortOnDrop;

/// How long a node asking for a session another node holds waits for it.
pub const HANDOFF: Duration = Duration::from_secs(3);

/// Where durable sessions are kept.
enum Backend {
    Postgres(Box<postgres::PgDurable>),
    Sqlite(sqlite::SqliteDurable),
}

/// Durable sessions, as this process sees them: in the cluster's database, or in a file of its
/// own on a single node.
pub struct DurableStore(Backend);

impl DurableStore {
    /// A cluster node's: connects (a small pool of its own) and creates the tables if missing.
    pub async fn connect(pg: tokio_postgres::Config, node: &Node) -> Result<Self, Error> {
        Ok(DurableStore(Backend::Postgres(Box::new(
            postgres::PgDurable::connect(pg, node).await?,
        ))))
    }

    /// A single node's: the SQLite file at `path` (made if missing), this process one of its
    /// owners.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Ok(DurableStore(Backend::Sqlite(sqlite::SqliteDurable::open(
            path,
        )?)))
    }

    /// Records a new durable session held here, with its first (whole) save as number 1.
    pub async fn create(&self, record: &Record, save: &[u8]) -> Result<(), Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.create(record, save).await,
            Backend::Sqlite(db) => db.create(record.clone(), save.to_vec()).await,
        }
    }

    /// Writes the save of session `id` that follows save number `last` (`whole`: it replaces
    /// the saves before it, whatever they are); returns its number. The store numbers saves, so
    /// a save written while its writer saw an error (a reply lost after the commit) only moves
    /// the numbers on. Nothing is written, and: [`Error::SessionMoved`] when the session is no
    /// longer this process's; [`Error::SavesOutOfStep`] for changes that do not follow the
    /// store's last save (the writer's next save is whole).
    pub async fn save(&self, id: &str, last: i64, whole: bool, save: &[u8]) -> Result<i64, Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.save(id, last, whole, save).await,
            Backend::Sqlite(db) => db.save(id, last, whole, save.to_vec()).await,
        }
    }

    /// Takes `user`'s durable session `id` over for this process, if the process holding it
    /// is gone: its record and saves.
    pub async fn take(&self, id: &str, user: &str) -> Result<Take, Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.take(id, user).await,
            Backend::Sqlite(db) => db.take(id, user).await,
        }
    }

    /// Asks the node holding session `id` (node lock `key`) to let it go (nothing on one node).
    pub async fn ask(&self, id: &str, key: i64) -> Result<(), Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.ask(id, key).await,
            Backend::Sqlite(_) => Ok(()),
        }
    }

    /// Lets session `id` go (its run here has ended): another process may take it over.
    pub async fn release(&self, id: &str) -> Result<(), Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.release(id).await,
            Backend::Sqlite(db) => db.release(id).await,
        }
    }

    /// Deletes durable session `id` (it ended), if this process holds it.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.remove(id).await,
            Backend::Sqlite(db) => db.remove(id).await,
        }
    }

    /// Deletes the durable sessions unused for `idle` whose process is gone.
    pub async fn prune(&self, idle: Duration) -> Result<u64, Error> {
        match &self.0 {
            Backend::Postgres(pg) => pg.prune(idle).await,
            Backend::Sqlite(db) => db.prune(idle).await,
        }
    }

    /// The ids of sessions other nodes ask this one for, as they are asked (never, on one
    /// node), while the returned guard lives.
    pub fn asked(&self) -> (mpsc::Receiver<String>, Option<AbortOnDrop>) {
        match &self.0 {
            Backend::Postgres(pg) => {
                let (rx, guard) = pg.asked();
                (rx, Some(guard))
            }
            Backend::Sqlite(_) => (mpsc::channel(1).1, None),
        }
    }
}
