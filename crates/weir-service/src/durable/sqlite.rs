//! Durable sessions on a single node: one SQLite file (`durable.sqlite3` in the snapshot
//! directory), the same two tables as in PostgreSQL. Each process that opens it is an owner
//! (`crate::history::sqlite::Owner`: a lock file held while the process lives); a session whose
//! owner's lock is free — the process was killed, crashed, or its machine restarted — is taken
//! over by the next request for it, in the process now serving. Write-ahead logging with
//! `synchronous = NORMAL`: a save outlives the process the moment it is answered (a power loss
//! may take the last ones). Statements run on a blocking thread, one at a time.

use super::record::{now_ms, Record, Take, Taken};
use crate::error::Error;
use crate::history::sqlite::Owner;
use rusqlite::{params, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    PRAGMA foreign_keys = ON;
    CREATE TABLE IF NOT EXISTS weir_durable (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        runtime TEXT NOT NULL,
        limits TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        used_ms INTEGER NOT NULL,
        base_seq INTEGER NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS weir_durable_saves (
        session_id TEXT NOT NULL REFERENCES weir_durable (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
";

fn db(e: impl std::fmt::Display) -> Error {
    Error::DurableDatabase(e.to_string())
}

/// The file, and this process as one of its owners.
pub(super) struct SqliteDurable {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<rusqlite::Connection>,
    path: PathBuf,
    owner: Owner,
}

impl SqliteDurable {
    pub(super) fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(db)?;
        }
        let conn = rusqlite::Connection::open(path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        let owner =
            Owner::take(path).map_err(|e| db(format!("cannot lock its owner file: {e}")))?;
        Ok(SqliteDurable {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: path.to_path_buf(),
                owner,
            }),
        })
    }

    /// Runs `op` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut rusqlite::Connection, &Inner) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            op(&mut conn, &inner)
        })
        .await
        .map_err(db)?
    }

    pub(super) async fn create(&self, record: Record, save: Vec<u8>) -> Result<(), Error> {
        let limits = serde_json::to_string(&record.limits).map_err(db)?;
        self.with(move |conn, inner| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO weir_durable (id, user_name, runtime, limits, owner, created_ms,
                    used_ms, base_seq, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, 1)",
                params![
                    record.id,
                    record.user,
                    record.runtime,
                    limits,
                    inner.owner.id,
                    record.created_ms as i64,
                    now_ms()
                ],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO weir_durable_saves (session_id, seq, data) VALUES (?1, 1, ?2)",
                params![record.id, save],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    pub(super) async fn save(
        &self,
        id: &str,
        last: i64,
        whole: bool,
        save: Vec<u8>,
    ) -> Result<i64, Error> {
        let id = id.to_string();
        self.with(move |conn, inner| {
            let tx = conn.transaction().map_err(db)?;
            let held: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, seq FROM weir_durable WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let Some((_, now)) = held.filter(|(holder, _)| *holder == inner.owner.id) else {
                return Err(Error::SessionMoved(id));
            };
            if !whole && now != last {
                return Err(Error::SavesOutOfStep);
            }
            let seq = now + 1;
            tx.execute(
                "UPDATE weir_durable SET seq = ?2, used_ms = ?3,
                    base_seq = CASE WHEN ?4 THEN ?2 ELSE base_seq END
                 WHERE id = ?1",
                params![id, seq, now_ms(), whole],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO weir_durable_saves (session_id, seq, data) VALUES (?1, ?2, ?3)",
                params![id, seq, save],
            )
            .map_err(db)?;
            if whole {
                tx.execute(
                    "DELETE FROM weir_durable_saves WHERE session_id = ?1 AND seq < ?2",
                    params![id, seq],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)?;
            Ok(seq)
        })
        .await
    }

    pub(super) async fn take(&self, id: &str, user: &str) -> Result<Take, Error> {
        let (id, user) = (id.to_string(), user.to_string());
        self.with(move |conn, inner| {
            let row = conn
                .query_row(
                    "SELECT user_name, runtime, limits, owner, created_ms FROM weir_durable
                     WHERE id = ?1",
                    params![id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)?;
            let Some((owner, runtime, limits, holder, created_ms)) = row else {
                return Ok(Take::Missing);
            };
            if owner != user {
                return Ok(Take::Missing);
            }
            let tx = conn.transaction().map_err(db)?;
            if holder != inner.owner.id {
                if !Owner::gone(&inner.path, &holder) {
                    return Ok(Take::Held {
                        node: "another weir process on this machine".into(),
                        key: 0,
                    });
                }
                let moved = tx
                    .execute(
                        "UPDATE weir_durable SET owner = ?2, used_ms = ?3
                         WHERE id = ?1 AND owner = ?4",
                        params![id, inner.owner.id, now_ms(), holder],
                    )
                    .map_err(db)?;
                if moved == 0 {
                    return Ok(Take::Held {
                        node: "another weir process on this machine".into(),
                        key: 0,
                    });
                }
            }
            let saves = {
                let mut st = tx
                    .prepare(
                        "SELECT s.seq, s.data FROM weir_durable_saves s JOIN weir_durable d
                            ON d.id = s.session_id
                         WHERE s.session_id = ?1 AND s.seq >= d.base_seq ORDER BY s.seq",
                    )
                    .map_err(db)?;
                let rows = st
                    .query_map(params![id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .map_err(db)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db)?
            };
            tx.commit().map_err(db)?;
            let record = Record {
                id,
                user: owner,
                runtime,
                limits: serde_json::from_str(&limits).map_err(db)?,
                created_ms: created_ms as u64,
            };
            Ok(Take::Taken(Taken {
                record,
                seq: saves.last().map_or(0, |(seq, _)| *seq),
                saves: saves.into_iter().map(|(_, data)| data).collect(),
            }))
        })
        .await
    }

    pub(super) async fn release(&self, id: &str) -> Result<(), Error> {
        let id = id.to_string();
        self.with(move |conn, inner| {
            conn.execute(
                "UPDATE weir_durable SET owner = '' WHERE id = ?1 AND owner = ?2",
                params![id, inner.owner.id],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn remove(&self, id: &str) -> Result<(), Error> {
        let id = id.to_string();
        self.with(move |conn, inner| {
            conn.execute(
                "DELETE FROM weir_durable WHERE id = ?1 AND owner = ?2",
                params![id, inner.owner.id],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn prune(&self, idle: Duration) -> Result<u64, Error> {
        let before = now_ms() - idle.as_millis() as i64;
        self.with(move |conn, inner| {
            let holders: Vec<String> = {
                let mut st = conn
                    .prepare("SELECT DISTINCT owner FROM weir_durable WHERE used_ms < ?1")
                    .map_err(db)?;
                let rows = st
                    .query_map(params![before], |r| r.get::<_, String>(0))
                    .map_err(db)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db)?
            };
            let mut deleted = 0;
            for holder in holders {
                if holder == inner.owner.id || !Owner::gone(&inner.path, &holder) {
                    continue;
                }
                deleted += conn
                    .execute(
                        "DELETE FROM weir_durable WHERE owner = ?1 AND used_ms < ?2",
                        params![holder, before],
                    )
                    .map_err(db)? as u64;
            }
            Ok(deleted)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sandbox::Limits;

    fn record(user: &str) -> Record {
        Record {
            id: "s0123".into(),
            user: user.into(),
            runtime: "python".into(),
            limits: Limits::default(),
            created_ms: 1,
        }
    }

    #[tokio::test]
    async fn the_store_numbers_saves_and_refuses_changes_out_of_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteDurable::open(&dir.path().join("d.sqlite3")).unwrap();
        store
            .create(record("ann"), b"whole".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.save("s0123", 1, false, b"c2".to_vec()).await.unwrap(),
            2
        );
        // Its writer believed save 2 failed (a reply lost after the commit): changes that
        // follow save 1 are refused, and a whole save moves the numbers on.
        assert!(matches!(
            store.save("s0123", 1, false, b"c2'".to_vec()).await,
            Err(Error::SavesOutOfStep)
        ));
        assert_eq!(
            store.save("s0123", 1, true, b"w3".to_vec()).await.unwrap(),
            3
        );
        assert_eq!(
            store.save("s0123", 3, false, b"c4".to_vec()).await.unwrap(),
            4
        );
        // This process holds it: another user sees nothing, its owner gets the chain from the
        // last whole save.
        assert!(matches!(
            store.take("s0123", "bob").await.unwrap(),
            Take::Missing
        ));
        let Take::Taken(taken) = store.take("s0123", "ann").await.unwrap() else {
            panic!("its own session");
        };
        assert_eq!(taken.seq, 4);
        assert_eq!(taken.saves, vec![b"w3".to_vec(), b"c4".to_vec()]);
    }

    #[tokio::test]
    async fn a_session_of_a_live_process_is_held_and_of_a_gone_one_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite3");
        let first = SqliteDurable::open(&path).unwrap();
        first
            .create(record("ann"), b"whole".to_vec())
            .await
            .unwrap();
        let second = SqliteDurable::open(&path).unwrap();
        assert!(matches!(
            second.take("s0123", "ann").await.unwrap(),
            Take::Held { key: 0, .. }
        ));
        drop(first);
        let Take::Taken(taken) = second.take("s0123", "ann").await.unwrap() else {
            panic!("its process is gone");
        };
        assert_eq!(taken.saves, vec![b"whole".to_vec()]);
        // The old holder's saves are refused from now on.
        let third = SqliteDurable::open(&path).unwrap();
        assert!(matches!(
            third.save("s0123", 1, true, b"late".to_vec()).await,
            Err(Error::SessionMoved(_))
        ));
    }
}
