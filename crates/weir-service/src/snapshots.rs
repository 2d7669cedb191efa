//! Stored session snapshots (`/v1/snapshots`, docs/sessions.md): each one a file in a
//! directory, `<id>.snap` (the bytes `weir_sandbox::Snapshot::to_bytes` wrote) beside
//! `<id>.json` (its owner, runtime, size and time), both written atomically. A snapshot belongs
//! to the user who took it: to anyone else it does not exist.
//!
//! Bounded: one snapshot's size (`max_bytes`), every snapshot together (`max_total_bytes`), a
//! user's count (`max_per_user`) and age (`max_age_days`, swept with the other limits every few
//! minutes and at start). Ids are 128 random bits, made here; nothing a client names is a path.

use crate::error::Error;
use crate::pg_snapshots::PgSnapshots;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `[snapshots]`: where snapshots are kept, and how many.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The directory (created when missing); default: `snapshots` beside the run history.
    pub dir: Option<PathBuf>,
    /// Largest snapshot kept, bytes.
    pub max_bytes: u64,
    /// All snapshots together, bytes.
    pub max_total_bytes: u64,
    /// Most snapshots one user keeps.
    pub max_per_user: usize,
    /// Snapshots older than this are deleted, days.
    pub max_age_days: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            dir: None,
            max_bytes: 512 << 20,
            max_total_bytes: 8 << 30,
            max_per_user: 100,
            max_age_days: 7,
        }
    }
}

/// What is known of a stored snapshot (`GET /v1/snapshots/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub snapshot_id: String,
    /// Who took it.
    #[serde(skip_serializing)]
    pub owner: String,
    /// The runtime it restores in.
    pub runtime: String,
    /// Its size as stored, bytes.
    pub bytes: u64,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
}

/// The snapshot store.
pub struct SnapshotStore {
    dir: PathBuf,
    config: SnapshotConfig,
    index: Mutex<HashMap<String, SnapshotMeta>>,
}

impl SnapshotStore {
    /// Opens the store in `dir` (made if missing), indexing what is there; unreadable entries
    /// are removed. A directory that cannot be made or read leaves the store empty (logged):
    /// its writes then fail with the reason.
    pub fn open(dir: PathBuf, config: SnapshotConfig) -> Self {
        let mut index = HashMap::new();
        let listed = std::fs::create_dir_all(&dir).and_then(|()| std::fs::read_dir(&dir));
        match listed {
            Ok(entries) => {
                for path in entries.flatten().map(|e| e.path()) {
                    if path.extension().is_none_or(|e| e != "json") {
                        continue;
                    }
                    match read_meta(&path) {
                        Some(meta) if dir.join(data_name(&meta.snapshot_id)).is_file() => {
                            index.insert(meta.snapshot_id.clone(), meta);
                        }
                        _ => remove_pair(&dir, &path),
                    }
                }
            }
            Err(e) => tracing::error!(dir = %dir.display(), error = %e, "snapshot store unusable"),
        }
        let store = SnapshotStore {
            dir,
            config,
            index: Mutex::new(index),
        };
        store.sweep();
        store
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, SnapshotMeta>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `bytes` as a snapshot of `owner`'s in `runtime`. Blocking.
    pub fn put(&self, owner: &str, runtime: &str, bytes: &[u8]) -> Result<SnapshotMeta, Error> {
        let meta = new_meta(owner, runtime, bytes.len() as u64, &self.config)?;
        {
            let mut index = self.index();
            let held = index.values().filter(|m| m.owner == owner).count();
            let total: u64 = index.values().map(|m| m.bytes).sum();
            admit(&self.config, owner, held, total, meta.bytes)?;
            // Reserved now, so two writes at once cannot both pass the limits.
            index.insert(meta.snapshot_id.clone(), meta.clone());
        }
        let written = write_atomically(&self.dir.join(data_name(&meta.snapshot_id)), bytes)
            .and_then(|()| {
                let json = serde_json::to_vec(&StoredMeta::from(&meta)).map_err(|e| {
                    std::io::Error::other(format!("cannot encode the snapshot's record: {e}"))
                })?;
                write_atomically(&self.dir.join(meta_name(&meta.snapshot_id)), &json)
            });
        if let Err(e) = written {
            self.index().remove(&meta.snapshot_id);
            remove_pair(&self.dir, &self.dir.join(meta_name(&meta.snapshot_id)));
            return Err(Error::Io(e));
        }
        Ok(meta)
    }

    /// `owner`'s snapshot `id`: from the index, else from the directory (another node's, when
    /// the nodes of a cluster share it).
    pub fn meta(&self, id: &str, owner: &str) -> Result<SnapshotMeta, Error> {
        let known = self.index().get(id).cloned();
        let found = known.or_else(|| self.read_record(id));
        found
            .filter(|m| m.owner == owner)
            .ok_or_else(|| Error::NotFound(format!("no snapshot {id:?}")))
    }

    /// Snapshot `id`'s record as the directory has it, indexed once read.
    fn read_record(&self, id: &str) -> Option<SnapshotMeta> {
        if !valid_id(id) || !self.dir.join(data_name(id)).is_file() {
            return None;
        }
        let meta = read_meta(&self.dir.join(meta_name(id)))?;
        (meta.snapshot_id == id).then(|| {
            self.index().insert(meta.snapshot_id.clone(), meta.clone());
            meta
        })
    }

    /// `owner`'s snapshots, newest first.
    pub fn of(&self, owner: &str) -> Vec<SnapshotMeta> {
        let mut all: Vec<SnapshotMeta> = (self.index().values())
            .filter(|m| m.owner == owner)
            .cloned()
            .collect();
        all.sort_by_key(|m| std::cmp::Reverse(m.created));
        all
    }

    /// The bytes of `owner`'s snapshot `id`. Blocking.
    pub fn read(&self, id: &str, owner: &str) -> Result<(SnapshotMeta, Vec<u8>), Error> {
        let meta = self.meta(id, owner)?;
        let bytes = std::fs::read(self.dir.join(data_name(id)))
            .map_err(|_| Error::NotFound(format!("no snapshot {id:?}")))?;
        Ok((meta, bytes))
    }

    /// Deletes `owner`'s snapshot `id`. Blocking.
    pub fn delete(&self, id: &str, owner: &str) -> Result<(), Error> {
        self.meta(id, owner)?;
        self.index().remove(id);
        remove_pair(&self.dir, &self.dir.join(meta_name(id)));
        Ok(())
    }

    /// Deletes snapshots past `max_age_days`. Blocking.
    pub fn sweep(&self) {
        let max_age = Duration::from_secs(self.config.max_age_days.saturating_mul(86_400));
        let cutoff = now_secs().saturating_sub(max_age.as_secs());
        let old: Vec<String> = (self.index().values())
            .filter(|m| m.created < cutoff)
            .map(|m| m.snapshot_id.clone())
            .collect();
        for id in old {
            self.index().remove(&id);
            remove_pair(&self.dir, &self.dir.join(meta_name(&id)));
        }
    }
}

/// Stored snapshots as every route sees them: in a directory ([`SnapshotStore`]; on one node,
/// or nodes sharing it), or in cluster mode in the cluster's database
/// (`crate::pg_snapshots`), under the same limits.
pub struct Snapshots(Backend);

enum Backend {
    Dir(Arc<SnapshotStore>),
    Postgres(Box<(PgSnapshots, SnapshotConfig)>),
}

impl Snapshots {
    /// In `dir` (made if missing).
    pub fn dir(dir: PathBuf, config: SnapshotConfig) -> Self {
        Snapshots(Backend::Dir(Arc::new(SnapshotStore::open(dir, config))))
    }

    /// In the cluster's database.
    pub fn postgres(db: PgSnapshots, config: SnapshotConfig) -> Self {
        Snapshots(Backend::Postgres(Box::new((db, config))))
    }

    /// Keeps `bytes` as a snapshot of `owner`'s in `runtime`, within the limits.
    pub async fn put(
        &self,
        owner: &str,
        runtime: &str,
        bytes: Vec<u8>,
    ) -> Result<SnapshotMeta, Error> {
        match &self.0 {
            Backend::Dir(store) => {
                let (store, owner, runtime) =
                    (store.clone(), owner.to_string(), runtime.to_string());
                blocking(move || store.put(&owner, &runtime, &bytes)).await
            }
            Backend::Postgres(pg) => {
                let (db, config) = &**pg;
                let meta = new_meta(owner, runtime, bytes.len() as u64, config)?;
                let row = (
                    meta.snapshot_id.clone(),
                    meta.owner.clone(),
                    meta.runtime.clone(),
                    meta.bytes,
                    meta.created,
                );
                db.put(&row, &bytes, |held| {
                    admit(
                        config,
                        owner,
                        held.owner_count,
                        held.total_bytes,
                        meta.bytes,
                    )
                })
                .await?;
                Ok(meta)
            }
        }
    }

    /// `owner`'s snapshot `id`.
    pub async fn meta(&self, id: &str, owner: &str) -> Result<SnapshotMeta, Error> {
        match &self.0 {
            Backend::Dir(store) => store.meta(id, owner),
            Backend::Postgres(pg) => {
                let found = pg.0.get(id, owner, false).await?;
                found
                    .map(|(row, _)| from_row(row))
                    .ok_or_else(|| missing(id))
            }
        }
    }

    /// `owner`'s snapshot `id` and its bytes.
    pub async fn read(&self, id: &str, owner: &str) -> Result<(SnapshotMeta, Vec<u8>), Error> {
        match &self.0 {
            Backend::Dir(store) => {
                let (store, id, owner) = (store.clone(), id.to_string(), owner.to_string());
                blocking(move || store.read(&id, &owner)).await
            }
            Backend::Postgres(pg) => {
                let found = pg.0.get(id, owner, true).await?;
                found
                    .map(|(row, data)| (from_row(row), data))
                    .ok_or_else(|| missing(id))
            }
        }
    }

    /// `owner`'s snapshots, newest first.
    pub async fn of(&self, owner: &str) -> Result<Vec<SnapshotMeta>, Error> {
        match &self.0 {
            Backend::Dir(store) => Ok(store.of(owner)),
            Backend::Postgres(pg) => Ok(pg.0.of(owner).await?.into_iter().map(from_row).collect()),
        }
    }

    /// Deletes `owner`'s snapshot `id`.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<(), Error> {
        match &self.0 {
            Backend::Dir(store) => {
                let (store, id, owner) = (store.clone(), id.to_string(), owner.to_string());
                blocking(move || store.delete(&id, &owner)).await
            }
            Backend::Postgres(pg) => match pg.0.delete(id, owner).await? {
                true => Ok(()),
                false => Err(missing(id)),
            },
        }
    }

    /// Deletes the snapshots past `max_age_days`.
    pub async fn sweep(&self) -> Result<(), Error> {
        match &self.0 {
            Backend::Dir(store) => {
                let store = store.clone();
                blocking(move || {
                    store.sweep();
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                let max_age = pg.1.max_age_days.saturating_mul(86_400);
                pg.0.prune(now_secs().saturating_sub(max_age))
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// Runs `op` on a blocking thread.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

fn missing(id: &str) -> Error {
    Error::NotFound(format!("no snapshot {id:?}"))
}

fn from_row(
    (snapshot_id, owner, runtime, bytes, created): crate::pg_snapshots::Row,
) -> SnapshotMeta {
    SnapshotMeta {
        snapshot_id,
        owner,
        runtime,
        bytes,
        created,
    }
}

/// A new snapshot's record, once its size is within `max_bytes`.
fn new_meta(
    owner: &str,
    runtime: &str,
    size: u64,
    config: &SnapshotConfig,
) -> Result<SnapshotMeta, Error> {
    if size > config.max_bytes {
        return Err(Error::SnapshotTooLarge {
            size,
            limit: weir_sandbox::human_bytes(config.max_bytes),
        });
    }
    Ok(SnapshotMeta {
        snapshot_id: new_id(),
        owner: owner.to_string(),
        runtime: runtime.to_string(),
        bytes: size,
        created: now_secs(),
    })
}

/// Whether `owner` may keep one more snapshot of `size` bytes: they hold `held`, all snapshots
/// together `total` bytes.
fn admit(
    config: &SnapshotConfig,
    owner: &str,
    held: usize,
    total: u64,
    size: u64,
) -> Result<(), Error> {
    if held >= config.max_per_user {
        return Err(Error::SnapshotsFull(format!(
            "user {owner:?} keeps {held} snapshots, the most one user may \
             (snapshots.max_per_user); delete one first"
        )));
    }
    if total + size > config.max_total_bytes {
        return Err(Error::SnapshotsFull(format!(
            "the snapshot store is full ({} of snapshots.max_total_bytes {}); delete \
             snapshots or retry later",
            weir_sandbox::human_bytes(total),
            weir_sandbox::human_bytes(config.max_total_bytes)
        )));
    }
    Ok(())
}

/// The record kept beside a snapshot's bytes (with its owner, which answers never show).
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    snapshot_id: String,
    owner: String,
    runtime: String,
    bytes: u64,
    created: u64,
}

impl From<&SnapshotMeta> for StoredMeta {
    fn from(m: &SnapshotMeta) -> Self {
        StoredMeta {
            snapshot_id: m.snapshot_id.clone(),
            owner: m.owner.clone(),
            runtime: m.runtime.clone(),
            bytes: m.bytes,
            created: m.created,
        }
    }
}

fn read_meta(path: &Path) -> Option<SnapshotMeta> {
    let stored: StoredMeta = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    valid_id(&stored.snapshot_id).then_some(SnapshotMeta {
        snapshot_id: stored.snapshot_id,
        owner: stored.owner,
        runtime: stored.runtime,
        bytes: stored.bytes,
        created: stored.created,
    })
}

fn data_name(id: &str) -> String {
    format!("{id}.snap")
}

fn meta_name(id: &str) -> String {
    format!("{id}.json")
}

/// Removes a snapshot's record at `meta` and its bytes beside it.
fn remove_pair(dir: &Path, meta: &Path) {
    if let Some(id) = meta.file_stem().and_then(|s| s.to_str()) {
        let _ = std::fs::remove_file(dir.join(data_name(id)));
    }
    let _ = std::fs::remove_file(meta);
}

/// 128 random bits, hex: made as a run's id is.
fn new_id() -> String {
    weir_sandbox::RunId::new().as_str().to_string()
}

/// Whether `id` is one this store could have made.
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(config: SnapshotConfig) -> (tempfile::TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("s"), config);
        (dir, store)
    }

    #[test]
    fn a_snapshot_is_its_owners_alone_and_survives_a_reopen() {
        let (dir, s) = store(SnapshotConfig::default());
        let meta = s.put("ann", "python", b"bytes").unwrap();
        assert_eq!(s.read(&meta.snapshot_id, "ann").unwrap().1, b"bytes");
        assert!(matches!(
            s.read(&meta.snapshot_id, "bob"),
            Err(Error::NotFound(_))
        ));
        assert!(s.of("bob").is_empty());
        let again = SnapshotStore::open(dir.path().join("s"), SnapshotConfig::default());
        assert_eq!(again.meta(&meta.snapshot_id, "ann").unwrap(), meta);
        again.delete(&meta.snapshot_id, "ann").unwrap();
        assert!(again.meta(&meta.snapshot_id, "ann").is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("s")).unwrap().count(), 0);
    }

    #[test]
    fn nodes_sharing_the_directory_read_each_others_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let one = SnapshotStore::open(dir.path().to_path_buf(), SnapshotConfig::default());
        let two = SnapshotStore::open(dir.path().to_path_buf(), SnapshotConfig::default());
        let meta = one.put("ann", "python", b"shared").unwrap();
        assert_eq!(two.read(&meta.snapshot_id, "ann").unwrap().1, b"shared");
        assert!(two.meta(&meta.snapshot_id, "bob").is_err());
        assert!(two.meta("../../etc/passwd", "ann").is_err());
        two.delete(&meta.snapshot_id, "ann").unwrap();
        assert!(one.read(&meta.snapshot_id, "ann").is_err());
    }

    #[test]
    fn the_limits_refuse_with_their_setting() {
        let (_dir, s) = store(SnapshotConfig {
            max_bytes: 10,
            max_total_bytes: 15,
            max_per_user: 2,
            ..SnapshotConfig::default()
        });
        assert!(matches!(
            s.put("ann", "python", &[0; 11]),
            Err(Error::SnapshotTooLarge { .. })
        ));
        s.put("ann", "python", &[0; 5]).unwrap();
        s.put("ann", "python", &[0; 5]).unwrap();
        let e = s.put("ann", "python", &[0; 1]).unwrap_err().to_string();
        assert!(e.contains("max_per_user"), "{e}");
        let e = s.put("bob", "python", &[0; 6]).unwrap_err().to_string();
        assert!(e.contains("max_total_bytes"), "{e}");
    }

    #[test]
    fn old_snapshots_are_swept() {
        let (dir, s) = store(SnapshotConfig::default());
        let meta = s.put("ann", "python", b"x").unwrap();
        let mut stored = StoredMeta::from(&meta);
        stored.created = 0;
        let path = dir.path().join("s").join(meta_name(&meta.snapshot_id));
        std::fs::write(&path, serde_json::to_vec(&stored).unwrap()).unwrap();
        let again = SnapshotStore::open(dir.path().join("s"), SnapshotConfig::default());
        assert!(again.meta(&meta.snapshot_id, "ann").is_err());
        assert!(!path.exists());
    }
}
