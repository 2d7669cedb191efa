//! The cluster's run history: one PostgreSQL table every node writes and reads, so
//! `GET /v1/runs/{id}` answers the same on every node.
//!
//! A run is written twice: as `running` when it starts (queued, never delaying the run's first
//! output) and when it ends (awaited: the session tells its client about the exit only once any
//! node can read it). One writer task per node stores its queue in batches, one transaction
//! each; a batch that fails is retried for [`RETRY_FOR`] before it is dropped with an error in
//! the log. A `running` row whose node no longer holds its node lock (`crate::cluster`) reads
//! `lost`.

use super::record::{unix_ms, HistoryConfig, Retention, RunRecord, BATCH, PRUNE_EVERY, QUEUE};
use crate::error::Error;
use deadpool_postgres::Pool;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use weir_sandbox::AbortOnDrop;

/// Connections each node keeps to the database for the history.
const POOL: usize = 8;
/// Longest a read or a batch waits for a connection or an answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a batch that cannot be stored is retried.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// How long `store` waits for its run to be written before it lets the session go on (a
/// healthy database commits in milliseconds; one that takes longer is failing, and the client
/// should have its answer meanwhile — the write is still retried).
const STORE_WAIT: Duration = Duration::from_secs(3);

/// Schema version 1. Created under a transaction-level advisory lock, so nodes starting together
/// do not race to create it.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS weir_schema (version INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS weir_runs (
        seq BIGSERIAL,
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        node TEXT NOT NULL,
        node_key BIGINT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        finished_at_ms BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        code INTEGER NOT NULL,
        message TEXT NOT NULL,
        output_bytes BIGINT NOT NULL,
        output_truncated BOOLEAN NOT NULL,
        transcript TEXT,
        runtime TEXT NOT NULL
    );
    ALTER TABLE weir_runs ADD COLUMN IF NOT EXISTS network TEXT NOT NULL DEFAULT '';
    CREATE INDEX IF NOT EXISTS weir_runs_started ON weir_runs (started_at_ms);
    CREATE INDEX IF NOT EXISTS weir_runs_seq ON weir_runs (seq);
";
const SCHEMA_VERSION: i32 = 1;
/// The transaction-level advisory lock the schema is created under (and retention runs under).
const SCHEMA_LOCK: i64 = 0x7765_6972_0001;
const PRUNE_LOCK: i64 = 0x7765_6972_0002;

enum Command {
    Started(Box<RunRecord>),
    Store(Box<(RunRecord, Option<String>)>, oneshot::Sender<()>),
    Flush(oneshot::Sender<()>),
}

/// The PostgreSQL history of one node.
pub struct PgHistory {
    pool: Pool,
    tx: mpsc::Sender<Command>,
    _writer: AbortOnDrop,
}

fn db(e: impl std::fmt::Display) -> Error {
    Error::HistoryDatabase(e.to_string())
}

impl PgHistory {
    /// Connects, creates or migrates the schema, and starts the writer.
    pub async fn connect(
        config: &HistoryConfig,
        pg: tokio_postgres::Config,
        node_key: i64,
    ) -> Result<Self, Error> {
        let pool = crate::cluster::pool(pg, POOL).map_err(db)?;
        migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_loop(
            pool.clone(),
            rx,
            Retention::of(config),
            node_key,
        ));
        Ok(PgHistory {
            pool,
            tx,
            _writer: AbortOnDrop(writer),
        })
    }

    /// Queues the `running` row of a run that has started.
    pub async fn started(&self, record: RunRecord) {
        if self
            .tx
            .send(Command::Started(Box::new(record)))
            .await
            .is_err()
        {
            tracing::error!("run history writer has stopped; a run start was not stored");
        }
    }

    /// Writes a finished run; returns once it is stored (or after [`STORE_WAIT`]).
    pub async fn store(&self, record: RunRecord, transcript: Option<String>) {
        let id = record.id.clone();
        let (done, stored) = oneshot::channel();
        let queued = self
            .tx
            .send(Command::Store(Box::new((record, transcript)), done))
            .await;
        if queued.is_err() {
            tracing::error!(run_id = %id, "run history writer has stopped; a run was not stored");
            return;
        }
        if tokio::time::timeout(STORE_WAIT, stored).await.is_err() {
            tracing::warn!(run_id = %id, "run history: the run is not stored yet; going on");
        }
    }

    /// Waits until everything queued so far is stored (or dropped after its retries).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        match tokio::time::timeout(TIMEOUT, self.pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(db(e)),
            Err(_) => Err(db("no database connection within 5 s")),
        }
    }

    async fn query_opt(&self, sql: &str, id: &str) -> Result<Option<tokio_postgres::Row>, Error> {
        let client = self.client().await?;
        let run = async {
            let st = client.prepare_cached(sql).await?;
            client.query_opt(&st, &[&id]).await
        };
        match tokio::time::timeout(TIMEOUT, run).await {
            Ok(result) => result.map_err(db),
            Err(_) => Err(db("the database did not answer within 5 s")),
        }
    }

    /// The stored run `id`; a `running` run whose node is gone reads `lost`.
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>, Error> {
        let sql = format!(
            "SELECT id, user_name, started_at_ms, finished_at_ms, duration_ms, outcome, code,
                    message, output_bytes, output_truncated, transcript IS NOT NULL, runtime, node,
                    outcome = 'running' AND NOT {}, network
             FROM weir_runs r WHERE id = $1",
            crate::cluster::alive_sql("r.node_key")
        );
        let Some(r) = self.query_opt(&sql, id).await? else {
            return Ok(None);
        };
        let record = RunRecord {
            id: r.try_get(0).map_err(db)?,
            user: r.try_get(1).map_err(db)?,
            started_at_ms: r.try_get::<_, i64>(2).map_err(db)? as u64,
            finished_at_ms: r.try_get::<_, i64>(3).map_err(db)? as u64,
            duration_ms: r.try_get::<_, i64>(4).map_err(db)? as u64,
            outcome: r.try_get(5).map_err(db)?,
            code: r.try_get(6).map_err(db)?,
            message: r.try_get(7).map_err(db)?,
            output_bytes: r.try_get::<_, i64>(8).map_err(db)? as u64,
            output_truncated: r.try_get(9).map_err(db)?,
            recorded: r.try_get(10).map_err(db)?,
            runtime: r.try_get(11).map_err(db)?,
            node: r.try_get(12).map_err(db)?,
            network: super::record::network_from(&r.try_get::<_, String>(14).map_err(db)?),
            owner: String::new(),
        };
        let lost: bool = r.try_get(13).map_err(db)?;
        Ok(Some(if lost { lost_record(record) } else { record }))
    }

    /// The owner and transcript of run `id`.
    pub async fn transcript(&self, id: &str) -> Result<Option<(String, Option<String>)>, Error> {
        let sql = "SELECT user_name, transcript FROM weir_runs WHERE id = $1";
        match self.query_opt(sql, id).await? {
            Some(r) => Ok(Some((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?))),
            None => Ok(None),
        }
    }

    /// How many runs are stored (by every node).
    pub async fn count(&self) -> Result<u64, Error> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COUNT(*) FROM weir_runs", &[])
            .await
            .map_err(db)?;
        Ok(row.try_get::<_, i64>(0).map_err(db)? as u64)
    }
}

/// A run its node left `running` when it died.
fn lost_record(mut record: RunRecord) -> RunRecord {
    record.message = format!(
        "The node running it ({}) stopped before the run ended",
        record.node
    );
    record.outcome = "lost".into();
    record.code = weir_sandbox::Outcome::Stopped.exit_code();
    record
}

async fn migrate(pool: &Pool) -> Result<(), Error> {
    let mut client = crate::cluster::connection(pool, TIMEOUT)
        .await
        .map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute(SCHEMA).await.map_err(db)?;
    let version: Option<i32> = tx
        .query_opt("SELECT max(version) FROM weir_schema", &[])
        .await
        .map_err(db)?
        .and_then(|r| r.get(0));
    match version {
        None => {
            tx.execute(
                "INSERT INTO weir_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(db)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(db(format!(
                "the database's schema is version {v}, newer than this weir's \
                 {SCHEMA_VERSION}: upgrade this node"
            )))
        }
        Some(_) => {}
    }
    tx.commit().await.map_err(db)
}

async fn write_loop(
    pool: Pool,
    mut rx: mpsc::Receiver<Command>,
    retention: Retention,
    node_key: i64,
) {
    let mut last_prune: Option<std::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let mut waiting = Vec::new();
        let mut rows = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Started(r) => rows.push((*r, None, false)),
                Command::Store(entry, done) => {
                    let (r, transcript) = *entry;
                    rows.push((r, transcript, true));
                    waiting.push(done);
                }
                Command::Flush(done) => waiting.push(done),
            }
        }
        store_with_retries(&pool, &rows, node_key).await;
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            if let Err(e) = prune(&pool, &retention).await {
                tracing::warn!(error = %e, "run history: retention failed");
            }
            last_prune = Some(std::time::Instant::now());
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

type Row = (RunRecord, Option<String>, bool);

async fn store_with_retries(pool: &Pool, rows: &[Row], node_key: i64) {
    if rows.is_empty() {
        return;
    }
    let give_up = std::time::Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = tokio::time::timeout(TIMEOUT, store_batch(pool, rows, node_key)).await;
        let error = match attempt {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the database did not answer within 5 s".into(),
        };
        if std::time::Instant::now() >= give_up {
            tracing::error!(error = %error, runs = rows.len(), "run history: cannot store runs; dropped");
            return;
        }
        tracing::warn!(error = %error, runs = rows.len(), "run history: cannot store runs; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

const INSERT: &str = "INSERT INTO weir_runs (id, user_name, node, node_key, started_at_ms,
        finished_at_ms, duration_ms, outcome, code, message, output_bytes, output_truncated,
        transcript, runtime, network)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

async fn store_batch(pool: &Pool, rows: &[Row], node_key: i64) -> Result<(), Error> {
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let started = tx
        // A row already there is a durable session's, taken over by this node: running here.
        .prepare_cached(&format!(
            "{INSERT} ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node,
                node_key = EXCLUDED.node_key, finished_at_ms = EXCLUDED.finished_at_ms,
                duration_ms = EXCLUDED.duration_ms, outcome = EXCLUDED.outcome,
                code = EXCLUDED.code, message = EXCLUDED.message
             WHERE weir_runs.node_key <> EXCLUDED.node_key"
        ))
        .await
        .map_err(db)?;
    let finished = tx
        .prepare_cached(&format!(
            "{INSERT} ON CONFLICT (id) DO UPDATE SET finished_at_ms = EXCLUDED.finished_at_ms,
                duration_ms = EXCLUDED.duration_ms, outcome = EXCLUDED.outcome,
                code = EXCLUDED.code, message = EXCLUDED.message,
                output_bytes = EXCLUDED.output_bytes,
                output_truncated = EXCLUDED.output_truncated,
                transcript = EXCLUDED.transcript, runtime = EXCLUDED.runtime,
                network = EXCLUDED.network"
        ))
        .await
        .map_err(db)?;
    for (r, transcript, done) in rows {
        let st = if *done { &finished } else { &started };
        tx.execute(
            st,
            &[
                &r.id,
                &r.user,
                &r.node,
                &node_key,
                &(r.started_at_ms as i64),
                &(r.finished_at_ms as i64),
                &(r.duration_ms as i64),
                &r.outcome,
                &r.code,
                &r.message,
                &(r.output_bytes as i64),
                &r.output_truncated,
                transcript,
                &r.runtime,
                &super::record::network_text(&r.network),
            ],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// Retention, as in the embedded history, run by one node at a time (the others skip it).
async fn prune(pool: &Pool, retention: &Retention) -> Result<(), Error> {
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let mine: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
        .await
        .map_err(db)?
        .get(0);
    if !mine {
        return Ok(());
    }
    let cutoff = unix_ms(SystemTime::now()).saturating_sub(retention.max_age.as_millis() as u64);
    tx.execute(
        "DELETE FROM weir_runs WHERE started_at_ms < $1",
        &[&(cutoff as i64)],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "DELETE FROM weir_runs WHERE seq <= (SELECT seq FROM weir_runs ORDER BY seq DESC
             LIMIT 1 OFFSET $1)",
        &[&(retention.max_runs.min(i64::MAX as u64) as i64)],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "DELETE FROM weir_runs WHERE seq <= (
             SELECT seq FROM (
                 SELECT seq, SUM(length(message) + coalesce(length(transcript), 0) + 128)
                     OVER (ORDER BY seq DESC) AS kept
                 FROM weir_runs) sizes
             WHERE kept > $1 ORDER BY seq DESC LIMIT 1)",
        &[&(retention.max_bytes.min(i64::MAX as u64) as i64)],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}
