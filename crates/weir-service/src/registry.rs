//! Who holds what: each admitted session's or run's [`Slot`] (one of `max_sessions`, and for a
//! signed-in user one of `max_sessions_per_user`, counted in [`UserSlots`], on this node), and
//! one `/ws` session per signed-in user: a new login closes the user's previous session with
//! 4001. Alone, a node keeps the rule in memory ([`Users`]). In cluster mode it also holds, per
//! signed-in session, a PostgreSQL advisory lock on the user ([`crate::cluster::user_key`]), on
//! the node's one *presence* connection, which also holds the node lock and `LISTEN`s on
//! `weir_sessions`:
//!
//! 1. A login on node B sends `NOTIFY weir_sessions` naming the user, then tries the user's
//!    lock every 25 ms for up to [`CLAIM_WAIT`].
//! 2. Node A hears the notification and closes the user's session there with 4001; the session's
//!    end releases the lock; B takes it and admits the login (a second login on B waits at most
//!    the time A takes to close).
//! 3. Locks belong to the connection: when a node dies its locks go with it. A node whose
//!    presence connection fails (or does not answer a ping within [`PING`]) closes every
//!    signed-in session, since another node may now admit those users, and admits nothing until
//!    it is back ([`Registry::health`]); it reconnects every second.

use crate::cluster::{user_key, Node, CONNECT_TIMEOUT};
use crate::error::Error;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use weir_sandbox::AbortOnDrop;

/// The channel logins are announced on.
const CHANNEL: &str = "weir_sessions";
/// Longest a login waits for the user's session elsewhere to close.
pub const CLAIM_WAIT: Duration = Duration::from_secs(3);
/// How often the presence connection is pinged, and how long an answer may take.
pub const PING: Duration = Duration::from_secs(2);
/// Pause between attempts to reconnect.
const RECONNECT: Duration = Duration::from_secs(1);

/// Why a session's registration ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginEnd {
    /// Still open.
    Open,
    /// The user logged in again (here or on another node): close with 4001.
    Replaced,
    /// The node lost its database, so it can no longer keep the rule: close with 1013.
    DatabaseLost,
}

/// The signed-in sessions on this node: one entry per open authenticated session, so bounded by
/// `max_sessions`.
#[derive(Default)]
pub struct Users {
    map: Mutex<HashMap<String, (u64, watch::Sender<LoginEnd>)>>,
}

impl Users {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, watch::Sender<LoginEnd>)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `user`'s session `session_no`, closing the user's previous one.
    fn insert(&self, user: &str, session_no: u64) -> watch::Receiver<LoginEnd> {
        let (tx, rx) = watch::channel(LoginEnd::Open);
        if let Some((_, previous)) = self.lock().insert(user.to_string(), (session_no, tx)) {
            let _ = previous.send(LoginEnd::Replaced);
        }
        rx
    }

    fn remove(&self, user: &str, session_no: u64) {
        let mut map = self.lock();
        if map.get(user).is_some_and(|(n, _)| *n == session_no) {
            map.remove(user);
        }
    }

    /// Ends `user`'s session here, if there is one.
    fn end(&self, user: &str, why: LoginEnd) {
        if let Some((_, tx)) = self.lock().remove(user) {
            let _ = tx.send(why);
        }
    }

    /// Ends every signed-in session here.
    fn end_all(&self, why: LoginEnd) {
        for (_, (_, tx)) in self.lock().drain() {
            let _ = tx.send(why);
        }
    }
}

/// One of the server's `max_sessions` slots, and for a signed-in user one of their
/// `max_sessions_per_user`: held for as long as the session or run it admitted lives.
pub struct Slot {
    _global: tokio::sync::OwnedSemaphorePermit,
    _user: Option<UserSlot>,
}

impl Slot {
    /// A slot of the server's and, for a signed-in user, theirs.
    pub fn new(global: tokio::sync::OwnedSemaphorePermit, user: Option<UserSlot>) -> Self {
        Slot {
            _global: global,
            _user: user,
        }
    }
}

/// How many slots each signed-in user holds on this node, and (cluster mode) which of their
/// slot locks this node holds. An entry exists only while its user holds a slot, so the map is
/// bounded by `max_sessions`.
#[derive(Default)]
pub struct UserSlots {
    held: Mutex<HashMap<String, Held>>,
}

/// One user's slots on this node.
#[derive(Default)]
struct Held {
    count: usize,
    /// The user's slot locks this node holds (cluster mode).
    keys: Vec<i64>,
}

impl UserSlots {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more slot for `user`, if they hold fewer than `cap` here.
    fn take(self: &Arc<Self>, user: &str, cap: usize) -> Option<UserSlot> {
        let mut held = self.held();
        if held.get(user).map_or(0, |h| h.count) >= cap {
            return None;
        }
        held.entry(user.to_string()).or_default().count += 1;
        Some(UserSlot {
            users: self.clone(),
            user: user.to_string(),
            lock: None,
        })
    }

    /// The slot locks of `user` this node holds.
    fn keys(&self, user: &str) -> Vec<i64> {
        self.held()
            .get(user)
            .map(|h| h.keys.clone())
            .unwrap_or_default()
    }

    fn add_key(&self, user: &str, key: i64) {
        if let Some(h) = self.held().get_mut(user) {
            h.keys.push(key);
        }
    }
}

/// A user's share of [`UserSlots`] (and in cluster mode, of the user's slot locks), given back
/// when dropped.
pub struct UserSlot {
    users: Arc<UserSlots>,
    user: String,
    lock: Option<UserLock>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut held = self.users.held();
        if let Some(h) = held.get_mut(&self.user) {
            h.count = h.count.saturating_sub(1);
            if let Some(lock) = &self.lock {
                h.keys.retain(|k| *k != lock.key);
            }
            if h.count == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// A registered session: what ends it, and (cluster mode) the user's lock, released when this
/// is dropped.
pub struct Registration {
    pub ended: watch::Receiver<LoginEnd>,
    _lock: Option<UserLock>,
}

/// The user's advisory lock, held on the presence connection; dropping it asks the presence
/// task to release it.
struct UserLock {
    key: i64,
    release: mpsc::Sender<i64>,
}

impl Drop for UserLock {
    fn drop(&mut self) {
        if self.release.try_send(self.key).is_err() {
            // Only when the presence task is gone or far behind: the lock then goes with the
            // connection.
            tracing::warn!("cannot queue a session lock's release");
        }
    }
}

/// The node's session registry.
pub struct Registry {
    users: Arc<Users>,
    /// Each signed-in user's slots (`max_sessions_per_user`).
    slots: Arc<UserSlots>,
    presence: Option<Presence>,
}

impl Registry {
    /// A node alone: the rule holds within this process.
    pub fn local() -> Self {
        Registry {
            users: Arc::default(),
            slots: Arc::default(),
            presence: None,
        }
    }

    /// A cluster node: connects its presence connection (failing if the database cannot be
    /// reached now), takes the node lock and starts the task that keeps it.
    pub async fn clustered(
        node: &Node,
        pg: tokio_postgres::Config,
        max_sessions: usize,
    ) -> Result<Self, Error> {
        let users: Arc<Users> = Arc::default();
        let shared = Arc::new(Shared::default());
        let first = connect(&pg, node.key)
            .await
            .map_err(Error::ClusterConnect)?;
        let (release, releases) = mpsc::channel(max_sessions.saturating_add(64));
        let task = tokio::spawn(maintain(
            pg,
            node.key,
            shared.clone(),
            users.clone(),
            releases,
            first,
        ));
        Ok(Registry {
            users,
            slots: Arc::default(),
            presence: Some(Presence {
                node_key: node.key,
                shared,
                release,
                _task: AbortOnDrop(task),
            }),
        })
    }

    /// `Err(reason)` while this cluster node has lost its database.
    pub fn health(&self) -> Result<(), String> {
        match &self.presence {
            Some(p) => p.shared.health(),
            None => Ok(()),
        }
    }

    /// Registers session `session_no`; a signed-in user's previous session (on any node) is
    /// closed first.
    pub async fn register(
        &self,
        user: Option<&str>,
        session_no: u64,
    ) -> Result<Registration, Error> {
        let Some(user) = user else {
            // Anonymous sessions are never replaced: the sender is dropped at once.
            let (_, ended) = watch::channel(LoginEnd::Open);
            return Ok(Registration { ended, _lock: None });
        };
        let lock = match &self.presence {
            Some(p) => Some(p.claim(user).await?),
            None => None,
        };
        Ok(Registration {
            ended: self.users.insert(user, session_no),
            _lock: lock,
        })
    }

    /// One more of `user`'s at most `cap` slots: counted on this node and, in cluster mode,
    /// across every node (one of the user's slot locks, taken in one round trip; a node that
    /// dies gives its locks back with its connection).
    pub async fn user_slot(&self, user: &str, cap: usize) -> Result<UserSlot, Error> {
        let cap = cap.min(crate::cluster::MAX_USER_SLOT_KEYS);
        let full = || Error::UserAtCapacity {
            user: user.to_string(),
            cap,
        };
        let mut slot = self.slots.take(user, cap).ok_or_else(full)?;
        if let Some(presence) = &self.presence {
            let mine = self.slots.keys(user);
            let lock = presence
                .slot_lock(user, cap, &mine)
                .await?
                .ok_or_else(full)?;
            self.slots.add_key(user, lock.key);
            slot.lock = Some(lock);
        }
        Ok(slot)
    }

    /// Forgets session `session_no` (its registration, and with it the user's lock, is dropped
    /// by the caller).
    pub fn unregister(&self, user: Option<&str>, session_no: u64) {
        if let Some(user) = user {
            self.users.remove(user, session_no);
        }
    }
}

/// The presence connection's state, shared with its task.
#[derive(Default)]
struct Shared {
    /// The connection while it is up.
    client: Mutex<Option<Arc<Client>>>,
    /// Why it is down (`None` while up).
    down: Mutex<Option<String>>,
}

impl Shared {
    fn health(&self) -> Result<(), String> {
        match &*self.down.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn client(&self) -> Result<Arc<Client>, Error> {
        self.health().map_err(Error::ClusterUnavailable)?;
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::ClusterUnavailable("not connected".into()))
    }

    fn set_up(&self, client: Arc<Client>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Marks the connection down; returns whether it was up.
    fn set_down(&self, reason: String) -> bool {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(reason)
            .is_none()
    }
}

struct Presence {
    node_key: i64,
    shared: Arc<Shared>,
    release: mpsc::Sender<i64>,
    _task: AbortOnDrop,
}

impl Presence {
    /// Takes one of `user`'s `cap` slot locks that no node holds (skipping `mine`, which this
    /// connection holds already and would take again), in one statement; `None` when all are
    /// held.
    async fn slot_lock(
        &self,
        user: &str,
        cap: usize,
        mine: &[i64],
    ) -> Result<Option<UserLock>, Error> {
        let client = self.shared.client()?;
        let unavailable = |e: tokio_postgres::Error| Error::ClusterUnavailable(e.to_string());
        let base = crate::cluster::user_slot_base(user);
        let row = client
            .query_opt(
                "SELECT k FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS k \
                 WHERE CASE WHEN k = ANY($3::bigint[]) THEN false ELSE pg_try_advisory_lock(k) END \
                 LIMIT 1",
                &[&base, &(cap as i64), &mine],
            )
            .await
            .map_err(unavailable)?;
        Ok(row
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()
            .map_err(unavailable)?
            .map(|key| UserLock {
                key,
                release: self.release.clone(),
            }))
    }

    /// Announces `user`'s login and waits for the user's lock.
    async fn claim(&self, user: &str) -> Result<UserLock, Error> {
        let client = self.shared.client()?;
        let unavailable = |e: tokio_postgres::Error| Error::ClusterUnavailable(e.to_string());
        let payload = json!({ "user": user, "node": self.node_key }).to_string();
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await
            .map_err(unavailable)?;
        let key = user_key(user);
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(unavailable)?;
            if row.try_get::<_, bool>(0).map_err(unavailable)? {
                return Ok(UserLock {
                    key,
                    release: self.release.clone(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::LoginBusy);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A live presence connection: the client, and what its driver task hears.
struct Connected {
    client: Arc<Client>,
    heard: mpsc::Receiver<Result<tokio_postgres::Notification, String>>,
    _driver: AbortOnDrop,
}

/// Connects, starts the connection's driver, takes the node lock and listens for logins.
async fn connect(pg: &tokio_postgres::Config, node_key: i64) -> Result<Connected, String> {
    let (client, mut connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| "no connection within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let (tx, heard) = mpsc::channel(1024);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            let forward = match message {
                Ok(AsyncMessage::Notification(n)) => Ok(n),
                Ok(_) => continue, // notices
                Err(e) => Err(e.to_string()),
            };
            let failed = forward.is_err();
            if tx.send(forward).await.is_err() || failed {
                return;
            }
        }
        let _ = tx
            .send(Err("the database closed the connection".into()))
            .await;
    });
    let connected = Connected {
        client: Arc::new(client),
        heard,
        _driver: AbortOnDrop(driver),
    };
    let setup = async {
        connected
            .client
            .execute("SELECT pg_advisory_lock($1)", &[&node_key])
            .await?;
        connected
            .client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
    };
    tokio::time::timeout(PING, setup)
        .await
        .map_err(|_| "the database did not answer within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(connected)
}

/// Keeps the presence connection: serves it while it is up; when it fails, closes every
/// signed-in session here and reconnects.
async fn maintain(
    pg: tokio_postgres::Config,
    node_key: i64,
    shared: Arc<Shared>,
    users: Arc<Users>,
    mut releases: mpsc::Receiver<i64>,
    first: Connected,
) {
    let mut next = Some(first);
    loop {
        let connected = match next.take() {
            Some(c) => Ok(c),
            None => connect(&pg, node_key).await,
        };
        let reason = match connected {
            Ok(c) => {
                shared.set_up(c.client.clone());
                tracing::info!("cluster database connected");
                serve(c, node_key, &users, &mut releases).await
            }
            Err(e) => e,
        };
        if shared.set_down(reason.clone()) {
            tracing::error!(reason = %reason, "cluster database lost: closing signed-in sessions, admitting nothing");
            users.end_all(LoginEnd::DatabaseLost);
        }
        // The connection's locks are gone with it.
        while releases.try_recv().is_ok() {}
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Serves a presence connection until it fails; returns why.
async fn serve(
    mut c: Connected,
    node_key: i64,
    users: &Users,
    releases: &mut mpsc::Receiver<i64>,
) -> String {
    let mut ping = tokio::time::interval(PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            heard = c.heard.recv() => match heard {
                Some(Ok(n)) => replaced_elsewhere(n.payload(), node_key, users),
                Some(Err(e)) => return e,
                None => return "the database connection ended".into(),
            },
            Some(key) = releases.recv() => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
                let unlock = c.client.execute("SELECT pg_advisory_unlock($1)", &params);
                match tokio::time::timeout(PING, unlock).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "the database did not answer within 2 s".into(),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING, c.client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "the database did not answer within 2 s".into(),
                }
            }
        }
    }
}

/// A login announced by another node closes the user's session here.
fn replaced_elsewhere(payload: &str, node_key: i64, users: &Users) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return;
    };
    let (Some(user), Some(node)) = (v["user"].as_str(), v["node"].as_i64()) else {
        return;
    };
    if node != node_key {
        tracing::info!(user, "logged in on another node: closing the session here");
        users.end(user, LoginEnd::Replaced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_login_here_replaces_the_old_and_anonymous_sessions_are_never_replaced() {
        let registry = Registry::local();
        let first = registry.register(Some("ann"), 1).await.unwrap();
        let second = registry.register(Some("ann"), 2).await.unwrap();
        assert_eq!(*first.ended.borrow(), LoginEnd::Replaced);
        assert_eq!(*second.ended.borrow(), LoginEnd::Open);
        // The first session's end does not forget the second.
        registry.unregister(Some("ann"), 1);
        assert!(registry.users.lock().contains_key("ann"));
        let anon = registry.register(None, 3).await.unwrap();
        assert_eq!(*anon.ended.borrow(), LoginEnd::Open);
        assert!(registry.health().is_ok());
    }

    #[test]
    fn a_notification_from_another_node_ends_the_users_session_here() {
        let users = Users::default();
        let rx = users.insert("ann", 1);
        replaced_elsewhere(r#"{"user":"ann","node":7}"#, 7, &users);
        assert_eq!(
            *rx.borrow(),
            LoginEnd::Open,
            "its own login is not a replacement"
        );
        replaced_elsewhere("not json", 8, &users);
        replaced_elsewhere(r#"{"user":"ann","node":8}"#, 7, &users);
        assert_eq!(*rx.borrow(), LoginEnd::Replaced);
    }
}
