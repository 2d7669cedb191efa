//! A run's network egress, off by default: the guest has no socket; its HTTP requests
//! (`urllib.request`, `http.client`) reach the host as calls to the reserved function
//! [`weir_sandbox::NETWORK_FUNCTION`], and the host makes them, with `reqwest` over rustls,
//! after checking them:
//!
//! - the host and port against the operator's allowlist (`[network] allow`), narrowed by the
//!   run's own when it gives one, never widened ([`allow`]);
//! - each address the name resolves to: loopback, private, link-local (the metadata address
//!   169.254.169.254 among them) and other special addresses are refused unless the entry that
//!   allowed the request names that host exactly, with its port; the connection goes to the
//!   checked addresses only, so a name cannot resolve one way for the check and another for the
//!   connection;
//! - redirects are not followed by the host: the guest's library follows them with a new
//!   request, checked again;
//! - bounded per run: requests, bytes sent, bytes of each response (read no further), time of
//!   each request; an interrupt or the run's end drops a request in flight.
//!
//! Secrets ([`secrets`]: the operator's, and a run's own) reach only their hosts, in header
//! values, and never the guest. Every
//! request is kept in the run's log ([`RunNetwork::requests`]: method, host, port, status,
//! bytes) for the run history. docs/code-mode.md.

mod allow;
mod fetch;
mod secrets;

pub use allow::{Allowlist, Rule};
pub use fetch::{RequestRecord, RunNetwork};
pub use secrets::{SecretConfig, PREFIX as SECRET_PREFIX};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What goes wrong setting up egress.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot be used, and why.
    #[error("{0}")]
    Config(String),
}

/// `[network]`: the hosts runs may reach and the bounds on their requests. Off (no host) by
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `host[:port]` entries: `api.github.com`, `*.example.org:443`, `127.0.0.1:8000`, `*`.
    pub allow: Vec<String>,
    /// Requests per run (for a session, over all its cells); each redirect followed is one.
    pub max_requests: u32,
    /// Bytes of a request's body.
    pub max_request_bytes: usize,
    /// Bytes of a response's body; a longer one is not read on and fails the request.
    pub max_response_bytes: usize,
    /// One request's time limit (connecting, sending, reading the whole response), ms.
    pub timeout_ms: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            allow: Vec::new(),
            max_requests: 100,
            max_request_bytes: 1 << 20,
            max_response_bytes: 8 << 20,
            timeout_ms: 10_000,
        }
    }
}

/// The server's egress: its allowlist, secrets and bounds. Each run gets its own
/// [`RunNetwork`] from it.
#[derive(Debug)]
pub struct Network {
    allow: Allowlist,
    secrets: Vec<secrets::Secret>,
    config: NetworkConfig,
}

/// The most entries of an allowlist, the operator's or a run's.
pub const MAX_ENTRIES: usize = 256;

impl Network {
    /// Egress for `config` and `secrets`; `None` when `allow` is empty (egress off). Refused
    /// with the entry or secret at fault: a malformed entry, a secret without a value or hosts.
    pub fn new(
        config: &NetworkConfig,
        secrets: &BTreeMap<String, SecretConfig>,
    ) -> Result<Option<Arc<Network>>, Error> {
        let allow = Allowlist::parse(&config.allow).map_err(prefixed("network.allow"))?;
        if config.allow.len() > MAX_ENTRIES {
            return Err(Error::Config(format!(
                "network.allow: more than {MAX_ENTRIES} entries"
            )));
        }
        let secrets = secrets
            .iter()
            .map(|(name, config)| secrets::Secret::new(name, config))
            .collect::<Result<Vec<_>, _>>()?;
        if allow.is_empty() {
            if !secrets.is_empty() {
                tracing::warn!("secrets are set but [network] allows no host: they go nowhere");
            }
            return Ok(None);
        }
        if config.max_requests == 0 || config.timeout_ms == 0 {
            return Err(Error::Config(
                "network: max_requests and timeout_ms are at least 1".into(),
            ));
        }
        Ok(Some(Arc::new(Network {
            allow,
            secrets,
            config: config.clone(),
        })))
    }

    /// A run's egress: this server's, narrowed by `narrowed` when the run gives entries, with
    /// the run's own `secrets` beside the operator's. Refused: a run secret named as one of the
    /// operator's.
    pub fn for_run(
        self: &Arc<Self>,
        narrowed: Option<Allowlist>,
        secrets: RunSecrets,
    ) -> Result<Arc<RunNetwork>, Error> {
        if let Some(clash) =
            (secrets.0.iter()).find(|s| self.secrets.iter().any(|o| o.name == s.name))
        {
            return Err(Error::Config(format!(
                "secrets.{}: the server has a secret of that name",
                clash.name
            )));
        }
        Ok(Arc::new(RunNetwork::new(self.clone(), narrowed, secrets)))
    }
}

/// Secrets a run declares itself (`secrets` in its request): values it gives, for hosts the
/// server allows. At most [`MAX_RUN_SECRETS`].
#[derive(Debug, Clone, Default)]
pub struct RunSecrets(Vec<secrets::Secret>);

/// The most secrets one run declares.
pub const MAX_RUN_SECRETS: usize = 32;

impl RunSecrets {
    /// A run's `secrets`: each with a `value` (never `value_env`) and its hosts.
    pub fn new(declared: &BTreeMap<String, SecretConfig>) -> Result<RunSecrets, Error> {
        if declared.len() > MAX_RUN_SECRETS {
            return Err(Error::Config(format!(
                "secrets: more than {MAX_RUN_SECRETS}"
            )));
        }
        let secrets = declared
            .iter()
            .map(|(name, config)| secrets::Secret::for_run(name, config))
            .collect::<Result<_, _>>()?;
        Ok(RunSecrets(secrets))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A run's own entries (`network: [...]` in its request), read as the operator's are.
pub fn narrowing(entries: &[String]) -> Result<Allowlist, Error> {
    if entries.len() > MAX_ENTRIES {
        return Err(Error::Config(format!(
            "network: more than {MAX_ENTRIES} entries"
        )));
    }
    Allowlist::parse(entries).map_err(prefixed("network"))
}

fn prefixed(what: &'static str) -> impl Fn(Error) -> Error {
    move |Error::Config(why)| Error::Config(format!("{what}: {why}"))
}
