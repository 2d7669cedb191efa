//! Stored session snapshots in the cluster's PostgreSQL database (`crate::snapshots` in cluster
//! mode): one table, `weir_snapshots`, every node writes and reads, so a snapshot taken through
//! one node restores through any without a shared file system. Rows are the snapshot's record and
//! its bytes (stored as they are: they are zstd frames already). The limits are the store's
//! (`crate::snapshots`): this module only reads and writes.

use crate::cluster;
use crate::error::Error;
use deadpool_postgres::Pool;
use std::time::Duration;

/// Connections each node keeps for snapshots.
const POOL: usize = 4;
/// Longest a statement waits for a connection.
const TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS weir_snapshots (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        runtime TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created BIGINT NOT NULL,
        data BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS weir_snapshots_owner ON weir_snapshots (owner);
    ALTER TABLE weir_snapshots ALTER COLUMN data SET STORAGE EXTERNAL;
";
/// The transaction-level advisory lock the table is created under, and puts check the limits
/// under (so two puts at once cannot both pass them).
const LOCK: i64 = 0x7765_6972_0004;

fn db(e: impl std::fmt::Display) -> Error {
    Error::SnapshotDatabase(e.to_string())
}

/// A snapshot's record: `(id, owner, runtime, bytes, created)`.
pub type Row = (String, String, String, u64, u64);

/// What a put finds before it writes: the owner's count and every snapshot's bytes.
pub struct Held {
    pub owner_count: usize,
    pub total_bytes: u64,
}

/// The snapshots table, as one node reaches it.
pub struct PgSnapshots {
    pool: Pool,
}

impl PgSnapshots {
    /// Connects (a small pool of its own) and creates the table if it is missing.
    pub async fn connect(pg: tokio_postgres::Config) -> Result<Self, Error> {
        let pool = cluster::pool(pg, POOL).map_err(db)?;
        cluster::create_schema(&pool, TIMEOUT, LOCK, SCHEMA)
            .await
            .map_err(db)?;
        Ok(PgSnapshots { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        cluster::connection(&self.pool, TIMEOUT).await.map_err(db)
    }

    /// Writes `row` and `data` once `admit` accepts what is held (checked and written in one
    /// transaction, under a lock every node's puts take).
    pub async fn put(
        &self,
        row: &Row,
        data: &[u8],
        admit: impl FnOnce(Held) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
            .await
            .map_err(db)?;
        let held = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE owner = $1), coalesce(sum(bytes), 0)::BIGINT
                 FROM weir_snapshots",
                &[&row.1],
            )
            .await
            .map_err(db)?;
        admit(Held {
            owner_count: held.get::<_, i64>(0) as usize,
            total_bytes: held.get::<_, i64>(1) as u64,
        })?;
        tx.execute(
            "INSERT INTO weir_snapshots (id, owner, runtime, bytes, created, data)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &row.0,
                &row.1,
                &row.2,
                &(row.3 as i64),
                &(row.4 as i64),
                &data,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// `owner`'s snapshot `id`'s record, and its bytes when `with_data`.
    pub async fn get(
        &self,
        id: &str,
        owner: &str,
        with_data: bool,
    ) -> Result<Option<(Row, Vec<u8>)>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, owner, runtime, bytes, created,
                    CASE WHEN $3 THEN data ELSE ''::BYTEA END
                 FROM weir_snapshots WHERE id = $1 AND owner = $2",
                &[&id, &owner, &with_data],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| (record(&r), r.get(5))))
    }

    /// `owner`'s snapshots' records, newest first.
    pub async fn of(&self, owner: &str) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, owner, runtime, bytes, created FROM weir_snapshots
                 WHERE owner = $1 ORDER BY created DESC",
                &[&owner],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(record).collect())
    }

    /// Deletes `owner`'s snapshot `id`; whether there was one.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<bool, Error> {
        let client = self.client().await?;
        let gone = client
            .execute(
                "DELETE FROM weir_snapshots WHERE id = $1 AND owner = $2",
                &[&id, &owner],
            )
            .await
            .map_err(db)?;
        Ok(gone > 0)
    }

    /// Deletes the snapshots taken before `cutoff` (seconds since the Unix epoch).
    pub async fn prune(&self, cutoff: u64) -> Result<u64, Error> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM weir_snapshots WHERE created < $1",
                &[&(cutoff as i64)],
            )
            .await
            .map_err(db)
    }
}

fn record(r: &tokio_postgres::Row) -> Row {
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get::<_, i64>(3) as u64,
        r.get::<_, i64>(4) as u64,
    )
}
