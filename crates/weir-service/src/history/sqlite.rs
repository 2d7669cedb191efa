//! The embedded run history: one SQLite file, a writer thread that stores runs in batches and
//! applies retention, and a reader connection used on a blocking thread.
//!
//! A run is stored `running` when it starts and replaced by its record when it ends. Each process
//! that opens the file is an *owner*: its runs carry its owner id, and it holds an exclusive lock
//! on a file of that name beside the database (`<db>.owners/<owner>.lock`, std's `File::lock`)
//! for as long as it lives. At open, every `running` run whose owner's lock can be taken (the
//! process died: killed, crashed, its host rebooted) is marked `lost`, so a run never reads
//! `running` for ever; runs of another live process sharing the file (`weir mcp` beside
//! `weir serve`) are left alone.

use super::record::{unix_ms, HistoryConfig, Retention, RunRecord, BATCH, PRUNE_EVERY, QUEUE};
use crate::error::Error;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

enum Command {
    Store(Box<(RunRecord, Option<String>)>),
    Flush(oneshot::Sender<()>),
}

/// The embedded history. Dropping it stores what is queued and joins its writer thread.
pub struct SqliteHistory {
    tx: Option<mpsc::Sender<Command>>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Arc<Mutex<rusqlite::Connection>>,
    /// This process's owner id, and the lock file held while it lives.
    owner: Owner,
}

/// This process as an owner of what it keeps in a SQLite file (runs here, durable sessions in
/// `crate::durable`): alive while it holds its lock file.
pub(crate) struct Owner {
    pub(crate) id: String,
    /// Locked exclusively while this process lives.
    _lock: std::fs::File,
    /// Where the lock file is: removed when the owner is dropped (a missing one reads as gone),
    /// so restarts leave no files behind.
    path: std::path::PathBuf,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The directory of the owners' lock files beside the database at `path`.
fn owners_dir(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".owners");
    path.with_file_name(name)
}

impl Owner {
    /// A new owner id for this process, its lock file created and locked.
    pub(crate) fn take(path: &Path) -> std::io::Result<Self> {
        let dir = owners_dir(path);
        std::fs::create_dir_all(&dir)?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            weir_sandbox::RunId::new().as_str()
        );
        let path = dir.join(format!("{id}.lock"));
        let file = std::fs::File::create(&path)?;
        file.try_lock().map_err(std::io::Error::other)?;
        Ok(Owner {
            id,
            _lock: file,
            path,
        })
    }

    /// Whether the process that owned runs as `id` is gone (its lock can be taken, or its lock
    /// file is missing); its lock file is then removed. A lock file that cannot be opened for
    /// another reason (no descriptors left, permissions) reads as alive.
    pub(crate) fn gone(path: &Path, id: &str) -> bool {
        // Owner ids are this module's own; anything else is treated as gone.
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return true;
        }
        let file = owners_dir(path).join(format!("{id}.lock"));
        let lock = match std::fs::File::open(&file) {
            Ok(lock) => lock,
            Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
        };
        match lock.try_lock() {
            Ok(()) => {
                let _ = std::fs::remove_file(&file);
                true
            }
            Err(_) => false,
        }
    }
}

/// Marks `running` the runs of owners that are gone `lost`.
fn mark_lost(conn: &rusqlite::Connection, path: &Path, me: &str) -> rusqlite::Result<()> {
    let owners: Vec<String> = conn
        .prepare("SELECT DISTINCT owner FROM runs WHERE outcome = 'running'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for owner in owners.iter().filter(|o| o.as_str() != me) {
        if Owner::gone(path, owner) {
            conn.execute(
                "UPDATE runs SET outcome = 'lost', finished_at_ms = started_at_ms,
                     message = 'The server running it stopped before the run ended'
                 WHERE outcome = 'running' AND owner = ?1",
                [owner],
            )?;
        }
    }
    Ok(())
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        code INTEGER NOT NULL,
        message TEXT NOT NULL,
        output_bytes INTEGER NOT NULL,
        output_truncated INTEGER NOT NULL,
        transcript TEXT,
        runtime TEXT NOT NULL DEFAULT '',
        node TEXT NOT NULL DEFAULT '',
        network TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_at_ms);
";

fn open(path: &Path) -> Result<rusqlite::Connection, Error> {
    let err = |reason: String| Error::HistoryOpen {
        path: path.display().to_string(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let conn = rusqlite::Connection::open(path).map_err(|e| err(e.to_string()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| err(e.to_string()))?;
    conn.execute_batch(SCHEMA).map_err(|e| err(e.to_string()))?;
    for column in ["runtime", "node", "owner", "network"] {
        add_column(&conn, column).map_err(|e| err(e.to_string()))?;
    }
    Ok(conn)
}

/// Databases made before runs recorded their runtime (or node) get the text column `name`,
/// empty for their runs.
fn add_column(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<()> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = ?1")?
        .exists([name])?;
    if !has {
        conn.execute_batch(&format!(
            "ALTER TABLE runs ADD COLUMN {name} TEXT NOT NULL DEFAULT ''"
        ))?;
    }
    Ok(())
}

impl SqliteHistory {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(config: &HistoryConfig) -> Result<Self, Error> {
        let writer_conn = open(&config.path)?;
        let reader = open(&config.path)?;
        let failed = |reason: String| Error::HistoryOpen {
            path: config.path.display().to_string(),
            reason,
        };
        let owner = Owner::take(&config.path)
            .map_err(|e| failed(format!("cannot lock its owner file: {e}")))?;
        mark_lost(&writer_conn, &config.path, &owner.id).map_err(|e| failed(e.to_string()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let retention = Retention::of(config);
        let writer = std::thread::Builder::new()
            .name("weir-history".into())
            .spawn(move || write_loop(writer_conn, rx, retention))
            .map_err(|e| Error::HistoryOpen {
                path: config.path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(SqliteHistory {
            tx: Some(tx),
            writer: Some(writer),
            reader: Arc::new(Mutex::new(reader)),
            owner,
        })
    }

    /// Queues a started run, stored `running` until its end replaces it.
    pub async fn started(&self, record: RunRecord) {
        self.store(record, None).await;
    }

    /// Queues a finished run (and its transcript) for storage.
    pub async fn store(&self, mut record: RunRecord, transcript: Option<String>) {
        record.owner = self.owner.id.clone();
        if let Some(tx) = &self.tx {
            if tx
                .send(Command::Store(Box::new((record, transcript))))
                .await
                .is_err()
            {
                tracing::error!("run history writer has stopped; a run was not stored");
            }
        }
    }

    /// Waits until everything queued so far is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Command::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// The stored run `id`.
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>, Error> {
        let id = id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, user, started_at_ms, finished_at_ms, duration_ms, outcome, code,
                        message, output_bytes, output_truncated, transcript IS NOT NULL, runtime,
                        node, network
                 FROM runs WHERE id = ?1",
            )?;
            let mut rows = st.query([&id])?;
            let Some(r) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(RunRecord {
                id: r.get(0)?,
                user: r.get(1)?,
                started_at_ms: r.get::<_, i64>(2)? as u64,
                finished_at_ms: r.get::<_, i64>(3)? as u64,
                duration_ms: r.get::<_, i64>(4)? as u64,
                outcome: r.get(5)?,
                code: r.get(6)?,
                message: r.get(7)?,
                output_bytes: r.get::<_, i64>(8)? as u64,
                output_truncated: r.get(9)?,
                recorded: r.get(10)?,
                runtime: r.get(11)?,
                node: r.get(12)?,
                network: super::record::network_from(&r.get::<_, String>(13)?),
                owner: String::new(),
            }))
        })
        .await
    }

    /// The owner and transcript of run `id` (`None` if there is no such run).
    pub async fn transcript(&self, id: &str) -> Result<Option<(String, Option<String>)>, Error> {
        let id = id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT user, transcript FROM runs WHERE id = ?1")?;
            let mut rows = st.query([&id])?;
            match rows.next()? {
                Some(r) => Ok(Some((r.get(0)?, r.get(1)?))),
                None => Ok(None),
            }
        })
        .await
    }

    /// How many runs are stored.
    pub async fn count(&self) -> Result<u64, Error> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
        .await
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    ) -> Result<R, Error> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| Error::HistoryClosed)?;
            f(&conn).map_err(Error::from)
        })
        .await
        .map_err(|_| Error::HistoryClosed)?
    }
}

impl Drop for SqliteHistory {
    fn drop(&mut self) {
        self.tx = None; // the writer stores what is queued, then ends
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_loop(
    mut conn: rusqlite::Connection,
    mut rx: mpsc::Receiver<Command>,
    retention: Retention,
) {
    let mut last_prune: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let mut flushed = Vec::new();
        let records: Vec<_> = batch
            .into_iter()
            .filter_map(|cmd| match cmd {
                Command::Store(r) => Some(r),
                Command::Flush(done) => {
                    flushed.push(done);
                    None
                }
            })
            .collect();
        if let Err(e) = store_batch(&mut conn, &records) {
            tracing::error!(error = %e, runs = records.len(), "run history: cannot store runs");
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            if let Err(e) = prune(&conn, &retention) {
                tracing::error!(error = %e, "run history: retention failed");
            }
            last_prune = Some(std::time::Instant::now());
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn store_batch(
    conn: &mut rusqlite::Connection,
    records: &[Box<(RunRecord, Option<String>)>],
) -> Result<(), rusqlite::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        // A finished run replaces its `running` row; a `running` row replaces only another
        // process's row (a durable session resumed after a restart), never this process's own
        // (its run may have finished and been stored first).
        let columns = "(id, user, started_at_ms, finished_at_ms, duration_ms, outcome, code,
                 message, output_bytes, output_truncated, transcript, runtime, node, owner,
                 network)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";
        let mut finished = tx.prepare_cached(&format!("INSERT OR REPLACE INTO runs {columns}"))?;
        let mut running = tx.prepare_cached(&format!(
            "INSERT INTO runs {columns} ON CONFLICT (id) DO UPDATE SET
                 finished_at_ms = excluded.finished_at_ms, duration_ms = excluded.duration_ms,
                 outcome = excluded.outcome, code = excluded.code, message = excluded.message,
                 node = excluded.node, owner = excluded.owner
             WHERE runs.owner <> excluded.owner"
        ))?;
        for entry in records {
            let (r, transcript) = entry.as_ref();
            let st = match r.outcome.as_str() {
                "running" => &mut running,
                _ => &mut finished,
            };
            st.execute(rusqlite::params![
                r.id,
                r.user,
                r.started_at_ms as i64,
                r.finished_at_ms as i64,
                r.duration_ms as i64,
                r.outcome,
                r.code,
                r.message,
                r.output_bytes as i64,
                r.output_truncated,
                transcript,
                r.runtime,
                r.node,
                r.owner,
                super::record::network_text(&r.network),
            ])?;
        }
    }
    tx.commit()
}

/// Deletes runs past the age limit, then the oldest beyond the count limit, then the oldest
/// beyond the size limit (a run's size: its message and transcript, plus a little for the rest).
fn prune(conn: &rusqlite::Connection, retention: &Retention) -> rusqlite::Result<()> {
    let cutoff = unix_ms(SystemTime::now()).saturating_sub(retention.max_age.as_millis() as u64);
    conn.execute(
        "DELETE FROM runs WHERE outcome <> 'running' AND finished_at_ms < ?1",
        [cutoff as i64],
    )?;
    conn.execute(
        "DELETE FROM runs WHERE seq <= (SELECT seq FROM runs ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
        [retention.max_runs.min(i64::MAX as u64) as i64],
    )?;
    conn.execute(
        "DELETE FROM runs WHERE seq <= (
             SELECT seq FROM (
                 SELECT seq, SUM(length(message) + coalesce(length(transcript), 0) + 128)
                     OVER (ORDER BY seq DESC) AS kept
                 FROM runs)
             WHERE kept > ?1 ORDER BY seq DESC LIMIT 1)",
        [retention.max_bytes.min(i64::MAX as u64) as i64],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, finished_at_ms: u64) -> RunRecord {
        RunRecord {
            id: id.into(),
            user: "ann".into(),
            started_at_ms: finished_at_ms.saturating_sub(5),
            finished_at_ms,
            duration_ms: 5,
            outcome: "exited".into(),
            code: 0,
            message: "Script finished".into(),
            output_bytes: 6,
            output_truncated: false,
            recorded: false,
            runtime: "python".into(),
            node: String::new(),
            network: Vec::new(),
            owner: String::new(),
        }
    }

    #[tokio::test]
    async fn a_database_from_before_runtimes_were_recorded_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        {
            let old = rusqlite::Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                 user TEXT NOT NULL, started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER NOT NULL,
                 duration_ms INTEGER NOT NULL, outcome TEXT NOT NULL, code INTEGER NOT NULL,
                 message TEXT NOT NULL, output_bytes INTEGER NOT NULL,
                 output_truncated INTEGER NOT NULL, transcript TEXT);
                 INSERT INTO runs (id, user, started_at_ms, finished_at_ms, duration_ms, outcome,
                 code, message, output_bytes, output_truncated)
                 VALUES ('before', 'ann', 1, 2, 1, 'exited', 0, 'Script finished', 0, 0);",
            )
            .unwrap();
        }
        let config = HistoryConfig {
            path,
            max_runs: 1000,
            max_age_days: 3650,
            max_bytes: 1 << 20,
        };
        let h = SqliteHistory::open(&config).unwrap();
        let before = h.get("before").await.unwrap().expect("the old run is kept");
        assert_eq!(before.runtime, "");
        h.store(record("after", unix_ms(SystemTime::now())), None)
            .await;
        h.flush().await;
        let after = h
            .get("after")
            .await
            .unwrap()
            .expect("the new run is stored");
        assert_eq!(after.runtime, "python");
    }

    #[tokio::test]
    async fn keeps_runs_across_reopen_and_applies_retention() {
        let dir = tempfile::tempdir().unwrap();
        let config = HistoryConfig {
            path: dir.path().join("h.sqlite3"),
            max_runs: 3,
            max_age_days: 1,
            max_bytes: 1 << 20,
        };
        let now = unix_ms(SystemTime::now());
        {
            let h = SqliteHistory::open(&config).unwrap();
            h.store(record("old", now - 3 * 86_400_000), None).await;
            for i in 0..5 {
                h.store(record(&format!("r{i}"), now), Some("{}".into()))
                    .await;
            }
            h.flush().await;
        }
        let h = SqliteHistory::open(&config).unwrap();
        // The writer prunes on its first batch after opening: store one more to trigger it.
        h.store(record("r5", now), None).await;
        h.flush().await;
        assert_eq!(h.count().await.unwrap(), 3);
        assert!(h.get("old").await.unwrap().is_none());
        assert!(h.get("r0").await.unwrap().is_none());
        let r4 = h.get("r4").await.unwrap().unwrap();
        assert_eq!(r4.user, "ann");
        assert!(r4.recorded);
        let (owner, transcript) = h.transcript("r4").await.unwrap().unwrap();
        assert_eq!((owner.as_str(), transcript.as_deref()), ("ann", Some("{}")));
    }

    #[tokio::test]
    async fn large_runs_are_pruned_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let config = HistoryConfig {
            path: dir.path().join("h.sqlite3"),
            max_runs: 1000,
            max_age_days: 1,
            max_bytes: 10_000,
        };
        let now = unix_ms(SystemTime::now());
        {
            let h = SqliteHistory::open(&config).unwrap();
            for i in 0..5 {
                h.store(record(&format!("big{i}"), now), Some("x".repeat(4_000)))
                    .await;
            }
            h.flush().await;
        }
        let h = SqliteHistory::open(&config).unwrap();
        h.store(record("small", now), None).await;
        h.flush().await;
        // 10,000 bytes hold the newest two transcripts (and the small run), not a third.
        assert!(h.get("small").await.unwrap().is_some());
        assert!(h.get("big4").await.unwrap().is_some());
        assert!(h.get("big3").await.unwrap().is_some());
        assert!(h.get("big2").await.unwrap().is_none());
        assert!(h.get("big0").await.unwrap().is_none());
    }
}
