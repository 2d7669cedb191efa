//! The submissions a node holds, by token, for their owners: bounded in number (in all, and per
//! owner), bytes and age. A submission counts its largest possible size from the moment it is
//! taken; judged ones make room, oldest judged first, the owner's own first.

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
    /// Most submissions kept; past it, the oldest judged one goes.
    pub max_kept: usize,
    /// Most submissions one owner holds; past it, their oldest judged one goes.
    pub max_kept_per_user: usize,
    /// Most bytes of sources, inputs and outputs kept (an unjudged submission counts its
    /// output limit).
    pub max_kept_bytes: usize,
}

impl Default for Judge0Config {
    fn default() -> Self {
        Judge0Config {
            keep_secs: 86_400,
            max_kept: 10_000,
            max_kept_per_user: 2_500,
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
    /// Judged tokens, oldest judged first (a token already gone is skipped).
    judged: VecDeque<String>,
    /// Submissions per owner.
    owners: HashMap<String, usize>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, token: &str) {
        let Some(entry) = self.entries.remove(token) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        if let Some(n) = self.owners.get_mut(&entry.owner) {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(&entry.owner);
            }
        }
    }
}

/// The node's submissions.
#[derive(Default)]
pub struct Submissions {
    config: Judge0Config,
    inner: Mutex<Inner>,
}

/// Why a submission cannot be kept: every one that could make room is still being judged.
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

    /// Keeps a new submission of `owner`'s, queued: its token.
    pub fn add(&self, owner: &str, spec: Arc<Spec>) -> Result<String, Full> {
        let token = token();
        let bytes = spec.most_bytes();
        let mut inner = self.lock();
        self.make_room(&mut inner, owner, bytes)?;
        inner.bytes += bytes;
        *inner.owners.entry(owner.to_string()).or_default() += 1;
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

    /// Moves submission `token` on to `state`; once judged it counts its actual size.
    pub fn set(&self, token: &str, state: State) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(token) else {
            return;
        };
        let judged = matches!(state, State::Done(_));
        entry.state = state;
        if !judged {
            return;
        }
        entry.finished = Some(SystemTime::now());
        let was = entry.bytes;
        entry.bytes = entry.spec.input_bytes()
            + match &entry.state {
                State::Done(v) => v.stdout.len() + v.stderr.as_ref().map_or(0, Vec::len),
                _ => 0,
            };
        let now = entry.bytes;
        inner.bytes = inner.bytes.saturating_sub(was) + now;
        inner.judged.push_back(token.to_string());
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

    /// Drops expired judged submissions, then (while one of `bytes` from `owner` does not fit)
    /// the owner's oldest judged one when they hold their share, else the oldest judged one.
    fn make_room(&self, inner: &mut Inner, owner: &str, bytes: usize) -> Result<(), Full> {
        let keep = Duration::from_secs(self.config.keep_secs);
        let now = SystemTime::now();
        while let Some(token) = inner.judged.front().cloned() {
            let expired = match inner.entries.get(&token) {
                None => true,
                Some(e) => e
                    .finished
                    .is_some_and(|f| now.duration_since(f).unwrap_or_default() > keep),
            };
            if !expired {
                break;
            }
            inner.judged.pop_front();
            inner.remove(&token);
        }
        let config = &self.config;
        while inner.owners.get(owner).copied().unwrap_or(0) >= config.max_kept_per_user {
            let theirs = inner
                .judged
                .iter()
                .position(|t| inner.entries.get(t).is_some_and(|e| e.owner == owner));
            let Some(at) = theirs else {
                return Err(Full);
            };
            if let Some(token) = inner.judged.remove(at) {
                inner.remove(&token);
            }
        }
        while inner.entries.len() >= config.max_kept || inner.bytes + bytes > config.max_kept_bytes
        {
            let Some(token) = inner.judged.pop_front() else {
                return Err(Full);
            };
            inner.remove(&token);
        }
        Ok(())
    }
}

/// A fresh token: 128 bits, written as a UUID is. (`RunId`: SipHash, a keyed pseudo-random
/// function, under keys the standard library draws from the operating system.)
fn token() -> String {
    let hex = weir_sandbox::RunId::new().as_str().to_string();
    match (
        hex.get(..8),
        hex.get(8..12),
        hex.get(12..16),
        hex.get(16..20),
        hex.get(20..),
    ) {
        (Some(a), Some(b), Some(c), Some(d), Some(e)) => format!("{a}-{b}-{c}-{d}-{e}"),
        _ => hex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge0::submission::{Params, Verdict};

    fn spec(output_kb: f64) -> Arc<Spec> {
        let params = Params {
            source_code: Some("print(1)".into()),
            language_id: Some(serde_json::json!(71)),
            max_file_size: Some(output_kb),
            ..Default::default()
        };
        let max = weir_sandbox::Limits::default();
        Arc::new(Spec::read(params, false, &max, |_| true).expect("a valid submission"))
    }

    fn judged() -> State {
        State::Done(Box::new(Verdict {
            status: 3,
            stdout: b"1\n".to_vec(),
            stderr: None,
            message: None,
            exit_code: Some(0),
            exit_signal: None,
            time: 0.0,
            wall_time: 0.0,
            memory: 0,
            run_id: String::new(),
        }))
    }

    fn kept(store: &Submissions, token: &str, owner: &str) -> bool {
        store.show(token, owner, |_| ()).is_some()
    }

    #[test]
    fn an_owner_holds_their_share_and_makes_room_with_their_own_judged_ones() {
        let store = Submissions::new(Judge0Config {
            max_kept: 4,
            max_kept_per_user: 2,
            ..Default::default()
        });
        let a1 = store.add("a", spec(1.0)).unwrap();
        let a2 = store.add("a", spec(1.0)).unwrap();
        assert!(store.add("a", spec(1.0)).is_err(), "a's share, none judged");
        let b1 = store.add("b", spec(1.0)).unwrap();
        store.set(&b1, judged());
        store.set(&a1, judged());
        let a3 = store.add("a", spec(1.0)).unwrap();
        assert!(!kept(&store, &a1, "a"), "a's oldest judged one made room");
        assert!(kept(&store, &a2, "a") && kept(&store, &a3, "a"));
        assert!(kept(&store, &b1, "b"), "b's result stays");
        assert!(!kept(&store, &b1, "a"), "another's token is not found");
    }

    #[test]
    fn a_submission_counts_its_output_limit_until_judged() {
        let store = Submissions::new(Judge0Config {
            max_kept_bytes: 3 << 20,
            ..Default::default()
        });
        let first = store.add("a", spec(1024.0)).unwrap();
        store.add("a", spec(1024.0)).unwrap();
        assert!(
            store.add("a", spec(1024.0)).is_err(),
            "3 MiB of output limits"
        );
        store.set(&first, judged());
        store
            .add("a", spec(1024.0))
            .expect("the judged one shrank to its output");
    }
}
