//! Durable sessions in the cluster's PostgreSQL database: two tables, `weir_durable` (one row per
//! session: owner, runtime, limits, the node holding it — its id and node lock,
//! `crate::cluster` — the last save's sequence number and the first one still needed) and
//! `weir_durable_saves` (the saves). A save is one statement that writes only while the row names
//! this node. A session whose node's lock is not held is taken over by one conditional update; a
//! live node is asked to let a session go (`NOTIFY weir_durable`), and does once no cell runs in
//! it ([`super::HANDOFF`] bounds the wait).

use super::record::{now_ms, Record, Take, Taken};
use crate::cluster::{self, alive_sql, Node};
use crate::error::Error;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use weir_sandbox::AbortOnDrop;

/// Connections each node keeps for durable sessions.
const POOL: usize = 4;
/// Longest a statement waits for a connection.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The channel sessions are asked for on.
const CHANNEL: &str = "weir_durable";
/// Requests to let a session go, queued at most (more are dropped: the asker asks again).
const ASKED: usize = 256;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS weir_durable (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        runtime TEXT NOT NULL,
        limits TEXT NOT NULL,
        node TEXT NOT NULL,
        node_key BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        used_ms BIGINT NOT NULL,
        base_seq BIGINT NOT NULL,
        seq BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS weir_durable_saves (
        session_id TEXT NOT NULL REFERENCES weir_durable (id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    -- Saves are zstd frames already: stored as they are, not compressed again.
    ALTER TABLE weir_durable_saves ALTER COLUMN data SET STORAGE EXTERNAL;
";
/// A save: the session's row moved to the next number if this node holds it (and, for a save of
/// changes, its last save is the one the changes follow), the save inserted under that number
/// only then, and a whole save's predecessors deleted. `$1` id, `$2` the last save's number as
/// this node knows it, `$3` now, `$4` whole, `$5` node lock, `$6` bytes; the new number, or no
/// row when nothing was written.
const SAVE: &str = "
    WITH mine AS (
        UPDATE weir_durable SET seq = seq + 1, used_ms = $3,
            base_seq = CASE WHEN $4 THEN seq + 1 ELSE base_seq END
        WHERE id = $1 AND node_key = $5 AND ($4 OR seq = $2)
        RETURNING id, seq
    ), dropped AS (
        DELETE FROM weir_durable_saves
        WHERE session_id = $1 AND $4 AND seq < (SELECT seq FROM mine)
    ), stored AS (
        INSERT INTO weir_durable_saves (session_id, seq, data) SELECT id, seq, $6 FROM mine
    )
    SELECT seq FROM mine
";
/// The transaction-level advisory lock the tables are created under.
const SCHEMA_LOCK: i64 = 0x7765_6972_0003;

fn db(e: impl std::fmt::Display) -> Error {
    Error::DurableDatabase(e.to_string())
}

/// Durable sessions in the cluster's database, as one node sees them.
pub struct PgDurable {
    pool: Pool,
    node: Node,
    /// For the connection that listens for handoffs.
    pg: tokio_postgres::Config,
}

impl PgDurable {
    /// Connects (a small pool of its own) and creates the tables if they are missing.
    pub(super) async fn connect(pg: tokio_postgres::Config, node: &Node) -> Result<Self, Error> {
        let pool = cluster::pool(pg.clone(), POOL).map_err(db)?;
        cluster::create_schema(&pool, TIMEOUT, SCHEMA_LOCK, SCHEMA)
            .await
            .map_err(db)?;
        Ok(PgDurable {
            pool,
            node: node.clone(),
            pg,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        cluster::connection(&self.pool, TIMEOUT).await.map_err(db)
    }

    /// Records a new durable session held by this node, with its first (whole) save as number 1.
    pub(super) async fn create(&self, record: &Record, save: &[u8]) -> Result<(), Error> {
        let limits = serde_json::to_string(&record.limits).map_err(db)?;
        let now = now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute(
            "INSERT INTO weir_durable (id, user_name, runtime, limits, node, node_key,
                created_ms, used_ms, base_seq, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, 1)",
            &[
                &record.id,
                &record.user,
                &record.runtime,
                &limits,
                &self.node.id,
                &self.node.key,
                &(record.created_ms as i64),
                &now,
            ],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "INSERT INTO weir_durable_saves (session_id, seq, data) VALUES ($1, 1, $2)",
            &[&record.id, &save],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Writes save number `seq` of session `id` (`whole`: it replaces the saves before it).
    /// [`Error::SessionMoved`] when the session is no longer this node's: nothing is written.
    /// One statement (its parts commit together), prepared once per connection: a save costs
    /// the database one round trip.
    pub(super) async fn save(
        &self,
        id: &str,
        last: i64,
        whole: bool,
        save: &[u8],
    ) -> Result<i64, Error> {
        let client = self.client().await?;
        let statement = client.prepare_cached(SAVE).await.map_err(db)?;
        let written = client
            .query_opt(
                &statement,
                &[&id, &last, &now_ms(), &whole, &self.node.key, &save],
            )
            .await
            .map_err(db)?;
        if let Some(row) = written {
            return Ok(row.get(0));
        }
        let holder: Option<i64> = client
            .query_opt("SELECT node_key FROM weir_durable WHERE id = $1", &[&id])
            .await
            .map_err(db)?
            .map(|r| r.get(0));
        Err(match holder == Some(self.node.key) {
            true => Error::SavesOutOfStep,
            false => Error::SessionMoved(id.to_string()),
        })
    }

    /// Takes `user`'s durable session `id` over for this node, if its node is gone: its record
    /// and saves.
    pub(super) async fn take(&self, id: &str, user: &str) -> Result<Take, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT user_name, runtime, limits, node, node_key, created_ms,
                        {} AS alive
                     FROM weir_durable WHERE id = $1",
                    alive_sql("node_key")
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(Take::Missing);
        };
        let owner: String = row.get(0);
        if owner != user {
            return Ok(Take::Missing);
        }
        let (node, key, alive): (String, i64, bool) = (row.get(3), row.get(4), row.get(6));
        if key != self.node.key {
            if alive {
                return Ok(Take::Held { node, key });
            }
            let moved = client
                .execute(
                    "UPDATE weir_durable SET node = $2, node_key = $3, used_ms = $4
                     WHERE id = $1 AND node_key = $5",
                    &[&id, &self.node.id, &self.node.key, &now_ms(), &key],
                )
                .await
                .map_err(db)?;
            if moved == 0 {
                return Ok(Take::Held { node, key });
            }
        }
        let limits: String = row.get(2);
        let record = Record {
            id: id.to_string(),
            user: owner,
            runtime: row.get(1),
            limits: serde_json::from_str(&limits).map_err(db)?,
            created_ms: row.get::<_, i64>(5) as u64,
        };
        let saves = client
            .query(
                "SELECT s.seq, s.data FROM weir_durable_saves s JOIN weir_durable d
                    ON d.id = s.session_id
                 WHERE s.session_id = $1 AND s.seq >= d.base_seq ORDER BY s.seq",
                &[&id],
            )
            .await
            .map_err(db)?;
        let seq = saves.last().map_or(0, |r| r.get::<_, i64>(0));
        Ok(Take::Taken(Taken {
            record,
            seq,
            saves: saves.iter().map(|r| r.get(1)).collect(),
        }))
    }

    /// Asks the node holding session `id` (node lock `key`) to let it go.
    pub(super) async fn ask(&self, id: &str, key: i64) -> Result<(), Error> {
        let payload = serde_json::json!({ "id": id, "holder": key }).to_string();
        let client = self.client().await?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Lets session `id` go (its run here has ended): any node may take it over.
    pub(super) async fn release(&self, id: &str) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE weir_durable SET node_key = 0 WHERE id = $1 AND node_key = $2",
                &[&id, &self.node.key],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The ids of sessions other nodes ask this one for, as they are asked, from a connection
    /// of its own that `LISTEN`s (reconnected every second while it fails); the task that keeps
    /// it lives as long as the returned guard.
    pub(super) fn asked(&self) -> (mpsc::Receiver<String>, AbortOnDrop) {
        let (tx, rx) = mpsc::channel(ASKED);
        let (key, pg) = (self.node.key, self.pg.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = listen(&pg, key, &tx).await {
                    tracing::warn!(error = %e, "durable sessions: not listening for handoffs");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        (rx, AbortOnDrop(task))
    }

    /// Deletes durable session `id` (it ended), if this node holds it.
    pub(super) async fn remove(&self, id: &str) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM weir_durable WHERE id = $1 AND node_key = $2",
                &[&id, &self.node.key],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Deletes the durable sessions unused for `idle` whose node is gone (none will end them).
    pub(super) async fn prune(&self, idle: Duration) -> Result<u64, Error> {
        let before = now_ms() - idle.as_millis() as i64;
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "DELETE FROM weir_durable WHERE used_ms < $1 AND NOT {}",
                    alive_sql("node_key")
                ),
                &[&before],
            )
            .await
            .map_err(db)
    }
}

/// Listens on [`CHANNEL`] until the connection fails, forwarding the ids asked of node `key`.
async fn listen(
    pg: &tokio_postgres::Config,
    key: i64,
    tx: &mpsc::Sender<String>,
) -> Result<(), String> {
    let (client, mut connection) = tokio::time::timeout(TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| "no connection within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&sql);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done.map_err(|e| e.to_string())?;
                listened = true;
            }
            message = futures_util::StreamExt::next(&mut messages) => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(id) = asked_of(n.payload(), key) {
                        // Full: dropped; the asking node asks again.
                        let _ = tx.try_send(id);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the database closed the connection".into()),
            },
        }
    }
}

/// The session id a handoff request asks of node `key`, if it asks this node.
fn asked_of(payload: &str, key: i64) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let id = v["id"].as_str()?;
    (v["holder"].as_i64()? == key && id.len() <= 64).then(|| id.to_string())
}
