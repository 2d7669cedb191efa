//! Server configuration: embedded defaults, an optional TOML file, then flags / env vars.

use crate::callbacks::CallbackConfig;
use crate::history::HistoryConfig;
use crate::snapshots::SnapshotConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weir_sandbox::EngineSettings;
use weir_sandbox::Limits;

/// Everything `weir serve` can be told. Every field has a default (see `docs/protocol.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Most WebSocket sessions at once; more are refused with 503 and Retry-After.
    pub max_sessions: usize,
    /// Most sessions and runs one signed-in user holds at once, over every entry point; more are
    /// refused with 429. Anonymous callers (no secret) cannot be told apart and are bounded by
    /// `max_sessions` alone. 0: a quarter of `max_sessions`.
    pub max_sessions_per_user: usize,
    /// The host's memory budget for guests, bytes: what all runs together may grow their memory
    /// beyond their guest's image (`weir_sandbox::MemoryBudget`); a run whose memory
    /// limit the budget left cannot cover is refused with 503. Absent: three quarters of the
    /// host's memory; 0: no budget.
    pub memory_budget_bytes: Option<u64>,
    /// Longest a client may take to send a request's headers (also an idle keep-alive
    /// connection's next request), and its body once the headers are in, seconds: slow or
    /// silent connections are closed, a body that does not arrive gets 408.
    pub request_timeout_secs: u64,
    /// Most TCP connections served at once (sessions, HTTP requests, idle keep-alive ones);
    /// more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Largest WebSocket message accepted; larger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Most `run` requests per session per minute.
    pub runs_per_minute: u32,
    /// A session with no run and no message for this long is closed with 4002, seconds.
    pub session_idle_secs: u64,
    /// A stateful session idle this long is hibernated: saved to disk and its instance freed,
    /// woken by its next use; off when absent (`crate::lifecycle::session::hibernate`).
    pub hibernate_after_secs: Option<u64>,
    /// Most sessions hibernated at once on this node; past it idle sessions stay live.
    pub max_hibernated_sessions: usize,
    /// Most sessions of one user hibernated at once.
    pub max_hibernated_per_user: usize,
    /// The server pings every this many seconds; a peer silent for three periods is dropped.
    pub heartbeat_secs: u64,
    /// On SIGTERM/SIGINT, active runs may finish for this long, seconds.
    pub shutdown_grace_secs: u64,
    /// With a secret, connections need a token (`weir token`); without one they are anonymous.
    pub secret: Option<String>,
    /// Origins allowed besides the server's own host and localhost.
    pub allowed_origins: Vec<String>,
    /// Host names (the `Host` header, without its port) a server without a secret answers
    /// besides `localhost` and IP addresses; any other name is refused with 421, so a web page
    /// cannot reach the server through a DNS name rebound to it.
    pub allowed_hosts: Vec<String>,
    /// Log JSON lines instead of human-readable text.
    pub log_json: bool,
    /// Limits a run gets when the client asks for none.
    pub limits: Limits,
    /// Per runtime, by name or alias (`[runtimes.python-sci] memory_mb = 2048`): settings over
    /// the runtime's own policy.
    pub runtimes: BTreeMap<String, RuntimeSettings>,
    /// Deprecated: `[runtimes.python-sci] memory_mb` (which wins when both are set). The memory
    /// limit of a `python-sci` run whose client asks for none, bytes.
    pub sci_memory_bytes: Option<u64>,
    /// The most a client may ask for.
    pub max_limits: Limits,
    /// Pooling-allocator slots (most guest instances alive at once).
    pub max_instances: u32,
    /// Guest instances kept instantiated ahead of demand, so a run starts without waiting for
    /// instantiation (0 turns the warm pool off).
    pub warm_instances: usize,
    /// Threads that fill the warm pool.
    pub warm_fillers: usize,
    /// Bytes of compiled programs kept so re-running an unchanged script skips compiling it
    /// (`weir_sandbox::CompileScope`; 0 turns the cache off).
    pub compile_cache_bytes: usize,
    /// Where the operator's package sites are (`weir packages`, `<dir>/<runtime>`); runs see
    /// their runtime's read-only. Default: `$XDG_DATA_HOME/weir/packages`.
    pub packages_dir: Option<PathBuf>,
    /// Packages the server installs into the default runtime's site at start if they are
    /// missing (`NAME==VERSION` or a wheel file, as `weir packages add` takes them).
    pub packages: Vec<String>,
    /// Load the runtimes that are not loaded at start (`python-sci`) in the background as soon
    /// as the server listens, rather than on their first run. The first time on a machine this
    /// takes minutes (fetch, pre-initialize, compile); `GET /v1/runtimes` says `preparing`
    /// until it is done. Default: true.
    pub prepare_runtimes: bool,
    /// Run history: database path and retention.
    pub history: HistoryConfig,
    /// Session snapshots: where they are kept, and how many (`crate::snapshots`).
    pub snapshots: SnapshotConfig,
    /// Cluster mode: nodes sharing one PostgreSQL database (off without `database_url`).
    pub cluster: ClusterConfig,
    /// Signed HTTP callbacks answering one-shot runs' functions (off without `allow` and a key).
    pub callbacks: CallbackConfig,
    /// The hosts runs may reach through the host, and the bounds on their requests (off
    /// without `allow`): `weir_egress`.
    pub network: weir_egress::NetworkConfig,
    /// Secrets runs' requests carry to their hosts, never seen by the runs: `NAME = { value |
    /// value_env, hosts }`.
    pub secrets: BTreeMap<String, weir_egress::SecretConfig>,
    /// Judge0's API: how long and how many submissions are kept (`crate::judge0`).
    pub judge0: crate::judge0::store::Judge0Config,
}

/// `[runtimes.NAME]`: one runtime's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// The memory limit of a run of this runtime whose client asks for none, MiB (capped by
    /// `max_limits.memory_bytes`). Absent: the runtime's own default (`python-sci`: 1024), else
    /// `limits.memory_bytes`.
    pub memory_mb: Option<u64>,
}

/// The runtime the deprecated top-level `sci_memory_bytes` setting configures.
const SCI_MEMORY_RUNTIME: &str = "python-sci";

/// `[cluster]`: with a `database_url`, the run history and the one-session-per-user registry
/// live in PostgreSQL, shared by every node that names the same database (docs/cluster.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// A PostgreSQL connection string (`postgresql://user:password@host:port/db`, or key=value
    /// pairs); env `WEIR_DATABASE_URL`. Without one the node is alone: SQLite history, sessions
    /// registered in memory.
    pub database_url: Option<String>,
    /// This node's name in history rows, logs and the `X-Weir-Node` response header; env
    /// `WEIR_NODE_ID`. Default: `node-` and 12 hex digits of a hash of the host name.
    pub node_id: Option<String>,
    /// On SIGTERM, how long the node keeps serving while `/readyz` already answers 503, so the
    /// load balancer stops sending it work before it drains, seconds. Default: 3 with a
    /// `database_url` (HAProxy in `deploy/` marks a node down after 2 failed checks 1 s apart),
    /// 0 without.
    pub drain_delay_secs: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_sessions: 1000,
            max_sessions_per_user: 0,
            memory_budget_bytes: None,
            max_connections: 1500,
            request_timeout_secs: 10,
            max_message_bytes: 1 << 20,
            runs_per_minute: 120,
            session_idle_secs: 600,
            hibernate_after_secs: None,
            max_hibernated_sessions: 100_000,
            max_hibernated_per_user: 1_000,
            heartbeat_secs: 20,
            shutdown_grace_secs: 10,
            secret: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            log_json: false,
            limits: Limits {
                wall_ms: 5_000,
                ..Limits::default()
            },
            runtimes: BTreeMap::new(),
            sci_memory_bytes: None,
            max_limits: Limits {
                wall_ms: 60_000,
                memory_bytes: 1 << 30,
                output_bytes: 16 << 20,
                cpu_fuel: Some(500_000_000_000),
                ..Limits::default()
            },
            max_instances: 1100,
            warm_instances: EngineSettings::default().warm_instances,
            warm_fillers: EngineSettings::default().warm_fillers,
            compile_cache_bytes: EngineSettings::default().compile_cache_bytes,
            packages_dir: crate::packages::default_root(),
            packages: Vec::new(),
            prepare_runtimes: true,
            history: HistoryConfig::default(),
            snapshots: SnapshotConfig::default(),
            cluster: ClusterConfig::default(),
            callbacks: CallbackConfig::default(),
            network: weir_egress::NetworkConfig::default(),
            secrets: Default::default(),
            judge0: Default::default(),
        }
    }
}

impl ServerConfig {
    /// The sandbox's engine settings this configuration asks for (the rest at their defaults).
    pub fn engine_settings(&self) -> weir_sandbox::EngineSettings {
        weir_sandbox::EngineSettings {
            max_instances: self.max_instances,
            warm_instances: self.warm_instances,
            warm_fillers: self.warm_fillers,
            compile_cache_bytes: self.compile_cache_bytes,
            packages: self.packages_dir.clone(),
            memory_budget_bytes: match self.memory_budget_bytes {
                Some(0) => None,
                Some(bytes) => Some(bytes),
                None => weir_sandbox::EngineSettings::default().memory_budget_bytes,
            },
            ..weir_sandbox::EngineSettings::default()
        }
    }

    /// Where snapshots are kept: `snapshots.dir`, else `snapshots` beside the run history.
    pub fn snapshot_dir(&self) -> std::path::PathBuf {
        match &self.snapshots.dir {
            Some(dir) => dir.clone(),
            None => (self.history.path.parent())
                .unwrap_or(std::path::Path::new("."))
                .join("snapshots"),
        }
    }

    /// `max_sessions_per_user`, or a quarter of `max_sessions` (at least one) when it is 0.
    pub fn sessions_per_user(&self) -> usize {
        match self.max_sessions_per_user {
            0 => (self.max_sessions / 4).max(1),
            n => n,
        }
    }

    /// The memory limit configured for runs of `runtime` whose client asks for none: its
    /// `[runtimes.NAME] memory_mb` (NAME its name or an alias), else the deprecated
    /// `sci_memory_bytes` for `python-sci`; `None`: not configured here.
    pub fn runtime_memory(&self, runtime: &weir_sandbox::RuntimeInfo) -> Option<u64> {
        let configured = self
            .runtimes
            .iter()
            .filter(|(name, _)| runtime.answers_to(name))
            .find_map(|(_, settings)| settings.memory_mb);
        match configured {
            Some(mb) => Some(mb.saturating_mul(1 << 20)),
            None => self
                .sci_memory_bytes
                .filter(|_| runtime.answers_to(SCI_MEMORY_RUNTIME)),
        }
    }

    /// Reads a TOML file; fields it does not name keep their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let config: ServerConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        config
            .network()
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        Ok(config)
    }

    /// The egress `[network]` and `[secrets]` describe; `None` when no host is allowed.
    pub fn network(&self) -> Result<Option<Arc<weir_egress::Network>>, weir_egress::Error> {
        weir_egress::Network::new(&self.network, &self.secrets)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_secs.max(1))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    /// This node's id (`[cluster] node_id`, or one derived from the host name that does not
    /// reveal it: `crate::cluster::default_node_id`).
    pub fn node_id(&self) -> String {
        self.cluster
            .node_id
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::cluster::default_node_id)
    }

    /// How long a SIGTERM'd node stays up reporting not-ready before it drains.
    pub fn drain_delay(&self) -> Duration {
        let default = if self.cluster.database_url.is_some() {
            3
        } else {
            0
        };
        Duration::from_secs(self.cluster.drain_delay_secs.unwrap_or(default))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtimes_memory_is_configured_by_name_or_alias_and_the_old_key_still_reads() {
        let sci = weir_sandbox::runtime::sci::info();
        let lean = weir_sandbox::runtime::python::info();
        let config: ServerConfig = toml::from_str("[runtimes.sci]\nmemory_mb = 300\n").unwrap();
        assert_eq!(config.runtime_memory(sci), Some(300 << 20));
        assert_eq!(config.runtime_memory(lean), None);
        let old: ServerConfig = toml::from_str("sci_memory_bytes = 1000\n").unwrap();
        assert_eq!(old.runtime_memory(sci), Some(1000));
        assert_eq!(old.runtime_memory(lean), None);
        let both: ServerConfig =
            toml::from_str("sci_memory_bytes = 1000\n[runtimes.python-sci]\nmemory_mb = 2\n")
                .unwrap();
        assert_eq!(both.runtime_memory(sci), Some(2 << 20));
        let unknown = toml::from_str::<ServerConfig>("[runtimes.sci]\nmemroy_mb = 3\n");
        assert!(unknown.is_err(), "a misspelt setting is refused");
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\n[limits]\nwall_ms = 2000\n",
        )
        .unwrap();
        let c = ServerConfig::from_file(&path).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.wall_ms, 2000);
        assert_eq!(c.limits.memory_bytes, Limits::default().memory_bytes);
        assert_eq!(c.max_sessions, 1000);
        std::fs::write(&path, "listen_on = 1\n").unwrap();
        assert!(ServerConfig::from_file(&path).is_err());
    }
}
