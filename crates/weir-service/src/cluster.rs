//! Cluster mode's shared parts: this node's identity, and how it reaches the PostgreSQL database
//! every node shares (`[cluster] database_url`). What is kept there: the run history
//! (`crate::history::postgres`) and the session registry (`crate::registry`).
//!
//! A node is alive for the others while it holds its *node lock*: a PostgreSQL session-level
//! advisory lock on [`Node::key`], taken on the node's presence connection. PostgreSQL frees it
//! when that connection ends — the node stopped, was killed, or lost the network — so a run
//! stored as `running` by a node that no longer holds its lock reads `lost`.

use crate::error::Error;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long connecting to the database may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// This process as a cluster node.
#[derive(Debug, Clone)]
pub struct Node {
    /// `[cluster] node_id` (default: derived from the host name, `default_node_id`): in history
    /// rows, logs and the
    /// `X-Weir-Node` response header.
    pub id: String,
    /// This process's node lock (62 random bits, positive). A new one per process: a node
    /// restarted under the same id does not revive the runs its previous process left `running`.
    pub key: i64,
}

impl Node {
    /// This process, named `id`.
    pub fn new(id: &str) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Node {
            id: id.to_string(),
            key: (h.finish() & ((1 << 62) - 1)) as i64,
        }
    }
}

/// A node's default id: `node-` and 12 hex digits of a SHA-256 of the machine's host name, the
/// same on every start of the machine and distinct between machines, without telling clients
/// (who see it in `X-Weir-Node`) the host's name.
pub fn default_node_id() -> String {
    let digest = Sha256::digest(format!("weir-node:{}", hostname()).as_bytes());
    format!("node-{}", &hex::encode(digest)[..12])
}

/// The machine's host name, or "weir" if it has none.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "weir".into())
}

/// The advisory-lock key of `user`'s session (the first 62 bits of a SHA-256 of the name, so
/// two users never share a lock in practice).
pub fn user_key(user: &str) -> i64 {
    let digest = Sha256::digest(format!("weir-user:{user}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) & ((1 << 62) - 1)) as i64
}

/// Most slots one user's cluster-wide count can name ([`user_slot_base`]).
pub const MAX_USER_SLOT_KEYS: usize = 1 << 16;

/// The first of `user`'s slot locks: in cluster mode a signed-in user's `n`-th concurrent session
/// or run holds the advisory lock `user_slot_base(user) + i` for a free `i < n`, on its node's
/// presence connection (62 bits of a SHA-256 of the name, the low 16 zero: room for
/// [`MAX_USER_SLOT_KEYS`]).
pub fn user_slot_base(user: &str) -> i64 {
    let digest = Sha256::digest(format!("weir-user-slots:{user}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) & ((1 << 62) - 1) & !0xffff) as i64
}

/// The connection settings for `database_url` (`[cluster]`; `None` without one): a connect
/// timeout, TCP keepalives so a vanished database is noticed, and the node in
/// `application_name`.
pub fn pg_config(
    database_url: Option<&str>,
    node: &Node,
) -> Result<Option<tokio_postgres::Config>, Error> {
    let Some(url) = database_url else {
        return Ok(None);
    };
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::ClusterUrl(e.to_string()))?;
    pg.connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    if pg.get_application_name().is_none() {
        pg.application_name(format!("weir {}", node.id));
    }
    Ok(Some(pg))
}

/// A pool of at most `size` connections to the cluster's database (each store keeps its own, so
/// one store's load never starves another's). Its errors are the reason, for the store to name.
pub fn pool(pg: tokio_postgres::Config, size: usize) -> Result<deadpool_postgres::Pool, String> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| e.to_string())
}

/// A connection from `pool`, waited for at most `wait`.
pub async fn connection(
    pool: &deadpool_postgres::Pool,
    wait: Duration,
) -> Result<deadpool_postgres::Object, String> {
    match tokio::time::timeout(wait, pool.get()).await {
        Ok(client) => client.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no database connection within {} s",
            wait.as_secs()
        )),
    }
}

/// Runs `schema` (statements that create what is missing) in one transaction under the
/// transaction-level advisory lock `lock`, so nodes starting together do not race.
pub async fn create_schema(
    pool: &deadpool_postgres::Pool,
    wait: Duration,
    lock: i64,
    schema: &str,
) -> Result<(), String> {
    let mut client = connection(pool, wait).await?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(|e| e.to_string())?;
    tx.batch_execute(schema).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// The SQL condition "the node whose lock key is in column `column` is alive": its lock is held
/// (bigint advisory locks show in `pg_locks` as `classid` = high half, `objid` = low half,
/// `objsubid` = 1).
pub fn alive_sql(column: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
             AND l.objsubid = 1 AND l.classid::bigint = ({column} >> 32)
             AND l.objid::bigint = ({column} & 4294967295))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_positive_and_distinct() {
        let a = user_key("ann");
        assert!(a > 0 && user_key("bob") > 0);
        assert_ne!(a, user_key("bob"));
        assert_eq!(a, user_key("ann"));
        let (n, m) = (Node::new("x"), Node::new("x"));
        assert!(n.key > 0);
        assert_ne!(n.key, m.key, "two processes never share a node lock");
    }

    #[test]
    fn a_bad_url_is_named() {
        let err = pg_config(Some("postgresql://[::1"), &Node::new("n")).unwrap_err();
        assert!(err.to_string().contains("database_url"), "{err}");
        assert!(pg_config(None, &Node::new("n")).unwrap().is_none());
        let ok = pg_config(
            Some("postgresql://weir@127.0.0.1:5432/weir"),
            &Node::new("n"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.get_application_name(), Some("weir n"));
    }
}
