//! Run history: every run the server starts is kept, so nothing is lost on restart — in an
//! embedded SQLite database ([`sqlite`], the default), or in cluster mode in the PostgreSQL
//! database every node shares ([`postgres`]), where a run is readable from any node.
//!
//! Writes never wait on the database: a session hands a finished run to a bounded queue and one
//! writer stores the queue in batches (one transaction each) and applies retention. In cluster
//! mode a finished run's write is awaited (the client may ask another node for it as soon as it
//! sees the `exit`). A run is also written when it starts, as `running`, and reads `lost` once
//! the process or node running it is gone.

pub mod postgres;
pub mod record;
pub mod sqlite;

pub use record::{default_path, unix_ms, HistoryConfig, RunRecord};

use crate::error::Error;

enum Backend {
    Sqlite(sqlite::SqliteHistory),
    Postgres(postgres::PgHistory),
}

/// The history store: SQLite or PostgreSQL. Dropping it stores what is queued (SQLite) — call
/// [`History::flush`] first in cluster mode.
pub struct History {
    backend: Backend,
    /// Written into every record (`RunRecord::node`).
    node: String,
}

impl History {
    /// Opens (or creates) the SQLite database and starts its writer thread.
    pub fn open(config: &HistoryConfig) -> Result<Self, Error> {
        Ok(History {
            backend: Backend::Sqlite(sqlite::SqliteHistory::open(config)?),
            node: String::new(),
        })
    }

    /// Connects to the cluster's PostgreSQL database, creates or migrates its schema, and starts
    /// the writer. `node_key` is the advisory lock this node holds while it is alive
    /// (`crate::cluster::Node`): a run whose node no longer holds it reads `lost`.
    pub async fn connect(
        config: &HistoryConfig,
        pg: tokio_postgres::Config,
        node: &crate::cluster::Node,
    ) -> Result<Self, Error> {
        Ok(History {
            backend: Backend::Postgres(postgres::PgHistory::connect(config, pg, node.key).await?),
            node: node.id.clone(),
        })
    }

    /// Records `node` as the node of every run stored from now on.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = node.to_string();
        self
    }

    /// Records that a run has started: it reads `running`, or `lost` once the process (the
    /// node, in cluster mode) running it is gone.
    pub async fn started(&self, id: &str, user: &str, runtime: &str) {
        let mut record = RunRecord::running(id, user, runtime);
        record.node = self.node.clone();
        match &self.backend {
            Backend::Sqlite(s) => s.started(record).await,
            Backend::Postgres(pg) => pg.started(record).await,
        }
    }

    /// Stores a finished run (and its transcript): queued for the SQLite writer; in cluster mode
    /// written before this returns, so every node can read it once the client hears of the exit.
    pub async fn store(&self, mut record: RunRecord, transcript: Option<String>) {
        record.node = self.node.clone();
        match &self.backend {
            Backend::Sqlite(s) => s.store(record, transcript).await,
            Backend::Postgres(pg) => pg.store(record, transcript).await,
        }
    }

    /// Waits until everything queued so far is stored.
    pub async fn flush(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.flush().await,
            Backend::Postgres(pg) => pg.flush().await,
        }
    }

    /// The stored run `id`.
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.get(id).await,
            Backend::Postgres(pg) => pg.get(id).await,
        }
    }

    /// The owner and transcript of run `id` (`None` if there is no such run).
    pub async fn transcript(&self, id: &str) -> Result<Option<(String, Option<String>)>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.transcript(id).await,
            Backend::Postgres(pg) => pg.transcript(id).await,
        }
    }

    /// How many runs are stored.
    pub async fn count(&self) -> Result<u64, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.count().await,
            Backend::Postgres(pg) => pg.count().await,
        }
    }
}
