//! Compiled programs kept between runs, so re-running an unchanged script skips compiling it —
//! what `__pycache__` does for imported modules, for the script CPython always compiles afresh.
//!
//! The guest compiles the program, and if that warned nothing it hands the code over (marshal
//! format) before any of the program's own code has run: what enters the cache is the work of a
//! pristine instance, never of user code. A later run of the same bytes under the same file name
//! and scope loads it instead of compiling. Keys are SHA-256 digests, so a crafted program cannot
//! collide with another's entry; scopes keep one tenant's entries from another (the server scopes
//! by user, or by connection for anonymous ones), so a run's start time says nothing about what
//! other tenants ran. Metered and deterministic runs never use the cache: their fuel, and the
//! virtual clock driven by it, must not depend on what ran before.
//!
//! Bounded: entries above [`MAX_ENTRY_BYTES`] are not kept, and the least recently used entries
//! go once the total passes the configured budget.

use hashlink::LinkedHashMap;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Compiled code larger than this is not cached (a 1 MiB script compiles to about that much).
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// Identifies one program: scope, file name and source bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// The key of `source` named `filename`, compiled by `runtime` for runs in `scope`: a
    /// program compiled by one runtime is never handed to another.
    pub fn new(runtime: &str, scope: &str, filename: &str, source: &[u8]) -> Self {
        let mut h = Sha256::new();
        for part in [runtime.as_bytes(), scope.as_bytes(), filename.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(source);
        Key(h.finalize().into())
    }
}

/// The cache: least recently used order, bounded by total bytes.
pub struct CompileCache {
    budget: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache holds and how it has served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Programs cached.
    pub entries: usize,
    /// Bytes they take.
    pub bytes: usize,
    /// Runs that loaded their program from the cache.
    pub hits: u64,
    /// Runs that compiled their program (and offered it to the cache).
    pub misses: u64,
}

#[derive(Default)]
struct Entries {
    map: LinkedHashMap<Key, Arc<[u8]>>,
    bytes: usize,
}

impl CompileCache {
    /// A cache holding at most `budget` bytes of compiled code (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        CompileCache {
            budget,
            entries: Mutex::new(Entries::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Whether the cache keeps anything (a budget of 0 turns it off).
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The compiled code for `key`, marking it recently used; counts a hit or a miss.
    pub fn get(&self, key: &Key) -> Option<Arc<[u8]>> {
        let found = self
            .entries
            .lock()
            .ok()
            .and_then(|mut e| e.map.to_back(key).cloned());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    /// Keeps `code` for `key`, dropping the least recently used entries past the budget.
    pub fn insert(&self, key: Key, code: Vec<u8>) {
        if code.len() > MAX_ENTRY_BYTES.min(self.budget) {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.bytes += code.len();
        if let Some(old) = entries.map.insert(key, code.into()) {
            entries.bytes -= old.len();
        }
        while entries.bytes > self.budget {
            match entries.map.pop_front() {
                Some((_, old)) => entries.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        self.entries
            .lock()
            .map_or((0, 0), |e| (e.map.len(), e.bytes))
    }

    /// What the cache holds and how it has served.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.usage();
        CacheStats {
            entries,
            bytes,
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
        }
    }
}

/// Which runs share compiled programs: those of one scope, never those of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileScope {
    /// Runs of this scope share entries (an embedder's default: the empty scope).
    Named(String),
    /// The run neither reads nor fills the cache.
    Off,
}

impl CompileScope {
    /// The scope's name; `None` when the run uses no cache.
    pub fn name(&self) -> Option<&str> {
        match self {
            CompileScope::Named(name) => Some(name),
            CompileScope::Off => None,
        }
    }
}

impl Default for CompileScope {
    fn default() -> Self {
        CompileScope::Named(String::new())
    }
}

impl From<&str> for CompileScope {
    fn from(name: &str) -> Self {
        CompileScope::Named(name.to_owned())
    }
}

impl From<String> for CompileScope {
    fn from(name: String) -> Self {
        CompileScope::Named(name)
    }
}

impl CompileScope {
    /// The scope of a run's entries: its signed-in user's, else its connection's. One-shot
    /// requests without a user (a server without a secret) use no cache: two such callers are
    /// strangers to each other, and neither may meet the other's entries nor learn from a start
    /// time what the other ran.
    pub fn of(user: Option<&str>, connection: Option<u64>) -> CompileScope {
        match (user, connection) {
            (Some(user), _) => CompileScope::Named(format!("user:{user}")),
            (None, Some(n)) => CompileScope::Named(format!("connection:{n}")),
            (None, None) => CompileScope::Off,
        }
    }
}

/// What a run hands the cache when the guest reports its compiled program.
pub struct CachePut {
    /// The cache to fill.
    pub cache: Arc<CompileCache>,
    /// The entry the run may fill.
    pub key: Key,
}

impl std::fmt::Debug for CachePut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachePut").finish_non_exhaustive()
    }
}

impl CachePut {
    /// Stores `code` under the key (empty code is not kept).
    pub fn put(self, code: Vec<u8>) {
        self.cache.insert(self.key, code);
    }
}

/// A run's one chance to fill the cache: taken by the guest's first `program-compiled` call,
/// which the runner makes (with the code, or empty to decline) before any of the user's code
/// runs. Whatever the guest sends later is user code's and is ignored.
#[derive(Debug, Default)]
pub enum CacheSlot {
    /// The run compiles and may hand its code over, once.
    Open(CachePut),
    /// Used, declined, or never offered.
    #[default]
    Closed,
}

impl CacheSlot {
    /// The guest's `program-compiled`: stores `code` if the slot is open and `code` is not empty,
    /// and closes the slot either way.
    pub fn offer(&mut self, code: Vec<u8>) {
        if let CacheSlot::Open(put) = std::mem::take(self) {
            if !code.is_empty() {
                put.put(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_scope_name_and_source() {
        let k = Key::new("py", "a", "/s/main.py", b"print(1)");
        assert_eq!(k, Key::new("py", "a", "/s/main.py", b"print(1)"));
        assert_ne!(k, Key::new("py", "b", "/s/main.py", b"print(1)"));
        assert_ne!(k, Key::new("py", "a", "/s/other.py", b"print(1)"));
        assert_ne!(k, Key::new("py", "a", "/s/main.py", b"print(2)"));
        // Lengths are hashed, so moving bytes between the parts changes the key.
        assert_ne!(
            Key::new("py", "ab", "c", b""),
            Key::new("py", "a", "bc", b"")
        );
        assert_ne!(k, Key::new("py-sci", "a", "/s/main.py", b"print(1)"));
    }

    #[test]
    fn evicts_least_recently_used_past_the_budget() {
        let cache = CompileCache::new(10);
        let (a, b, c) = (
            Key::new("py", "", "a", b""),
            Key::new("py", "", "b", b""),
            Key::new("py", "", "c", b""),
        );
        cache.insert(a, vec![1; 4]);
        cache.insert(b, vec![2; 4]);
        assert!(cache.get(&a).is_some()); // a is now the most recently used
        cache.insert(c, vec![3; 4]);
        assert!(cache.get(&b).is_none(), "b was least recently used");
        assert_eq!(cache.get(&a).as_deref(), Some(&[1u8; 4][..]));
        assert_eq!(cache.usage(), (2, 8));
        cache.insert(a, vec![9; 2]); // replacing counts the new size only
        assert_eq!(cache.usage(), (2, 6));
    }

    #[test]
    fn a_slot_takes_one_offer_and_ignores_later_ones() {
        let cache = Arc::new(CompileCache::new(1 << 10));
        let key = Key::new("py", "", "a", b"");
        let put = |cache: &Arc<CompileCache>| {
            CacheSlot::Open(CachePut {
                cache: cache.clone(),
                key,
            })
        };
        let mut slot = put(&cache);
        slot.offer(vec![1, 2]);
        slot.offer(vec![6, 6, 6]); // user code, after the runner's offer
        assert_eq!(cache.get(&key).as_deref(), Some(&[1u8, 2][..]));
        // Declined (compiling warned): nothing stored, and a later offer cannot fill it.
        let other = Arc::new(CompileCache::new(1 << 10));
        let mut slot = put(&other);
        slot.offer(Vec::new());
        slot.offer(vec![6, 6, 6]);
        assert_eq!(other.usage(), (0, 0));
    }

    #[test]
    fn anonymous_one_shot_callers_share_no_scope() {
        assert_eq!(CompileScope::of(None, None), CompileScope::Off);
        assert_ne!(
            CompileScope::of(None, Some(1)),
            CompileScope::of(None, Some(2))
        );
        assert_ne!(
            CompileScope::of(Some("a"), None),
            CompileScope::of(Some("b"), None)
        );
    }

    #[test]
    fn keeps_nothing_too_large_or_when_disabled() {
        let cache = CompileCache::new(8);
        cache.insert(Key::new("py", "", "a", b""), vec![0; 9]);
        assert_eq!(cache.usage(), (0, 0));
        let off = CompileCache::new(0);
        assert!(!off.enabled());
        off.insert(Key::new("py", "", "a", b""), vec![0; 1]);
        assert_eq!(off.usage(), (0, 0));
    }
}
