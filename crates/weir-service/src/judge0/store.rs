//! The submissions a node holds, by token, for their owners: bounded in number, bytes and age;
//! finished ones go first.

use super::submission::{Spec, State, View};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// `[judge0]`: how many submissions, of how many bytes, are kept how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Judge0Config {
    /// Seconds a submission's result stays readable.
    pub keep_secs: u64,
    /// Most submissions kept; past it, the oldest finished one goes.
    pub max_kept: usize,
    /// Most bytes of sources, inputs and outputs kept.
    pub max_kept_bytes: usize,
}

impl Default for Judge0Config {
    fn default() -> Self {
        Judge0Config {
            keep_secs: 86_400,
            max_kept: 10_000,
            max_kept_bytes: 256 << 20,
        }
    }
}

struct Entry {
    owner: String,
    spec: Arc<Spec>,
    state: State,
    created: SystemTime,
    finished: Option<SystemTime>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Tokens, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

/// The node's submissions.
#[derive(Default)]
pub struct Submissions {
    config: Judge0Config,
    inner: Mutex<Inner>,
}

/// Why a submission cannot be kept: every kept one is still running.
#[derive(Debug)]
pub struct Full;

impl Submissions {
    pub fn new(config: Judge0Config) -> Self {
        Submissions {
            config,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a new submission of `owner`'s, queued: its token. Old and surplus finished ones
    /// make room.
    pub fn add(&self, owner: &str, spec: Arc<Spec>) -> Result<String, Full> {
        let token = token();
        let bytes = spec.source.len()
            + spec.stdin.as_ref().map_or(0, Vec::len)
            + spec.expected.as_ref().map_or(0, Vec::len);
        let mut inner = self.lock();
        self.make_room(&mut inner, bytes)?;
        inner.bytes += bytes;
        inner.order.push_back(token.clone());
        let entry = Entry {
            owner: owner.to_string(),
            spec,
            state: State::Queued,
            created: SystemTime::now(),
            finished: None,
            bytes,
        };
        inner.entries.insert(token.clone(), entry);
        Ok(token)
    }

    /// Moves submission `token` on to `state`.
    pub fn set(&self, token: &str, state: State) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(token) else {
            return;
        };
        let grown = match &state {
            State::Done(v) => v.stdout.len() + v.stderr.as_ref().map_or(0, Vec::len),
            _ => 0,
        };
        if matches!(state, State::Done(_)) {
            entry.finished = Some(SystemTime::now());
        }
        entry.state = state;
        entry.bytes += grown;
        inner.bytes += grown;
    }

    /// What `show` makes of `owner`'s submission `token`; `None` when there is none (or it is
    /// another's).
    pub fn show<R>(&self, token: &str, owner: &str, show: impl FnOnce(&View) -> R) -> Option<R> {
        let inner = self.lock();
        let entry = inner.entries.get(token).filter(|e| e.owner == owner)?;
        let view = View {
            token,
            spec: &entry.spec,
            state: &entry.state,
            created: entry.created,
            finished: entry.finished,
        };
        Some(show(&view))
    }

    /// Drops expired submissions, then finished ones, oldest first, until one of `bytes` fits.
    fn make_room(&self, inner: &mut Inner, bytes: usize) -> Result<(), Full> {
        let keep = Duration::from_secs(self.config.keep_secs);
        let now = SystemTime::now();
        let expired = |e: &Entry| {
            e.finished
                .is_some_and(|f| now.duration_since(f).unwrap_or_default() > keep)
        };
        let fits = |inner: &Inner| {
            inner.entries.len() < self.config.max_kept
                && inner.bytes + bytes <= self.config.max_kept_bytes
        };
        let mut at = 0;
        while at < inner.order.len() {
            let token = inner.order[at].clone();
            let gone = match inner.entries.get(&token) {
                None => true,
                Some(e) if e.finished.is_some() => expired(e) || !fits(inner),
                Some(_) => false,
            };
            if !gone {
                at += 1;
                continue;
            }
            inner.order.remove(at);
            if let Some(entry) = inner.entries.remove(&token) {
                inner.bytes -= entry.bytes;
            }
        }
        match fits(inner) {
            true => Ok(()),
            false => Err(Full),
        }
    }
}

/// A fresh token: 128 random bits as a UUID is written.
fn token() -> String {
    let hex = weir_sandbox::RunId::new().as_str().to_string();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
