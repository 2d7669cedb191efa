//! One run's requests: checked, made, bounded and logged.

use crate::allow::{self, Allowlist, Rule};
use crate::secrets::{self, Secret};
use crate::{Network, RunSecrets};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_sandbox::{RunRequest, ToolResult, Tools};

/// One request as the run's history keeps it: never its path, headers or body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    pub host: String,
    pub port: u16,
    /// The response's status; `None` when there was no response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes of the response's body read.
    pub bytes: u64,
    /// Why the request failed, as the guest was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run's egress: the server's, maybe narrowed, with the run's secrets and request log. (The
/// run's requests are counted against `max_requests` by the sandbox, as `NetworkBounds`, before
/// they reach it.)
#[derive(Debug)]
pub struct RunNetwork {
    network: Arc<Network>,
    narrowed: Option<Allowlist>,
    /// The run's own secrets (a fork declares them again).
    own: RunSecrets,
    /// The operator's secrets and the run's own.
    secrets: Vec<Secret>,
    log: Mutex<Vec<RequestRecord>>,
}

/// Headers the host sets itself (from the URL and the body), whatever the guest sent.
const HOST_SET: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "upgrade",
];

impl RunNetwork {
    pub(crate) fn new(network: Arc<Network>, narrowed: Option<Allowlist>, own: RunSecrets) -> Self {
        let secrets = (network.secrets.iter().cloned())
            .chain(own.0.iter().cloned())
            .collect();
        RunNetwork {
            network,
            narrowed,
            own,
            secrets,
            log: Mutex::new(Vec::new()),
        }
    }

    /// The run's own entries, when it narrowed the server's (a fork of its session keeps them).
    pub fn narrowed(&self) -> Option<&Allowlist> {
        self.narrowed.as_ref()
    }

    /// The secrets the run declared itself (a fork of its session keeps them).
    pub fn own_secrets(&self) -> &RunSecrets {
        &self.own
    }

    /// Gives `req` this network: its requests come here, and its environment holds
    /// `NAME=weir-secret:NAME` for each secret (unless the run sets `NAME` itself).
    pub fn give(self: &Arc<Self>, req: &mut RunRequest) {
        req.tools = Some(self.install(req.tools.take()));
        for secret in &self.secrets {
            if !req.env.iter().any(|(n, _)| *n == secret.name) {
                req.env.push((secret.name.clone(), secret.placeholder()));
            }
        }
    }

    /// The requests made so far, in order (at most the run's `max_requests`).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `tools` (or none) with this network (a run going on in a new instance, its environment
    /// its own already): the guest's requests come to [`RunNetwork::fetch`].
    pub fn install(self: &Arc<Self>, tools: Option<Tools>) -> Tools {
        let network = self.clone();
        let config = &self.network.config;
        let bounds = weir_sandbox::NetworkBounds {
            max_requests: config.max_requests,
            // The body in base64 (4 bytes for 3), and room for the URL and headers.
            max_request_bytes: config.max_request_bytes / 3 * 4 + (256 << 10),
        };
        tools
            .unwrap_or_default()
            .with_network(bounds, move |request| {
                let network = network.clone();
                async move { network.fetch(request).await }
            })
    }

    /// Makes the guest's request (`{method, url, headers: [[name, value]], body: base64}`),
    /// counted already: `{status, reason, headers, body}`, or why not, as the guest is told.
    async fn fetch(&self, request: Value) -> ToolResult {
        let config = &self.network.config;
        let mut record = RequestRecord::default();
        let limit = Duration::from_millis(config.timeout_ms);
        let result = match tokio::time::timeout(limit, self.exchange(&request, &mut record)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{}: no whole response within {} ms",
                record.host, config.timeout_ms
            )),
        };
        if let Err(why) = &result {
            record.error = Some(why.clone());
        }
        tracing::info!(
            method = %record.method,
            host = %record.host,
            port = record.port,
            status = ?record.status,
            bytes = record.bytes,
            error = ?record.error,
            "network request"
        );
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
        result
    }

    async fn exchange(&self, request: &Value, record: &mut RequestRecord) -> ToolResult {
        let config = &self.network.config;
        let asked = Asked::read(request, config.max_request_bytes)?;
        record.method = asked.method.to_string();
        let host = asked.url.host_str().unwrap_or_default().to_string();
        let port = asked.url.port_or_known_default().unwrap_or(0);
        record.host = host.clone();
        record.port = port;
        let exact = self.allowed(&host, port)?;
        let addrs = resolve(&host, port, exact).await?;
        let headers = self.headers(&asked.headers, (asked.url.scheme(), &host, port))?;
        let client = client(&asked.url, &host, &addrs)?;
        let mut response = client
            .request(asked.method, asked.url.clone())
            .headers(headers)
            .body(asked.body)
            .send()
            .await
            .map_err(|e| failed(&host, port, e))?;
        let status = response.status();
        record.status = Some(status.as_u16());
        let head = response_headers(response.headers(), &self.secrets);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(&host, port, e))? {
            if body.len() + chunk.len() > config.max_response_bytes {
                record.bytes = (body.len() + chunk.len()) as u64;
                return Err(format!(
                    "{host}: a response over the run's {}-byte limit",
                    config.max_response_bytes
                ));
            }
            body.extend_from_slice(&chunk);
        }
        record.bytes = body.len() as u64;
        let body = secrets::redact(body, &self.secrets);
        Ok(json!({
            "status": status.as_u16(),
            "reason": status.canonical_reason().unwrap_or(""),
            "headers": head,
            "body": base64::engine::general_purpose::STANDARD.encode(body),
        }))
    }

    /// Whether the operator's entries allow `host`:`port`, and the run's own too when it gave
    /// any: `Ok(exact)`, `exact` when every entry that allows it names it exactly with its port
    /// (only then may it resolve to a special address).
    fn allowed(&self, host: &str, port: u16) -> Result<bool, String> {
        let refused = || format!("{host}:{port} is not on this run's network allowlist");
        let rule = self.network.allow.find(host, port).ok_or_else(refused)?;
        let narrowed = match &self.narrowed {
            Some(narrowed) => Some(narrowed.find(host, port).ok_or_else(refused)?),
            None => None,
        };
        Ok(rule.names_exactly() && narrowed.is_none_or(Rule::names_exactly))
    }

    /// The guest's headers with the secrets they may carry filled in. A request to a host some
    /// secret goes to asks for its response unencoded and whole (no `Accept-Encoding`, no
    /// `Range`), so that a value it echoes is found and taken out.
    fn headers(
        &self,
        asked: &[(String, String)],
        (scheme, host, port): (&str, &str, u16),
    ) -> Result<reqwest::header::HeaderMap, String> {
        let mut map = reqwest::header::HeaderMap::new();
        let guarded = (self.secrets.iter()).any(|s| s.hosts.find(host, port).is_some());
        for (name, value) in asked {
            let lower = name.to_ascii_lowercase();
            if HOST_SET.contains(&lower.as_str())
                || (guarded && matches!(lower.as_str(), "accept-encoding" | "range" | "if-range"))
            {
                continue;
            }
            let filled = secrets::fill(value, &self.secrets, (scheme, host, port));
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header {:?}: not a header name", shorten(name)))?;
            let value = reqwest::header::HeaderValue::from_str(&filled)
                .map_err(|_| format!("header {name}: not a header value"))?;
            map.append(name, value);
        }
        if guarded {
            map.insert(
                reqwest::header::ACCEPT_ENCODING,
                reqwest::header::HeaderValue::from_static("identity"),
            );
        }
        Ok(map)
    }
}

/// A request as the guest sent it.
struct Asked {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

impl Asked {
    fn read(request: &Value, max_body: usize) -> Result<Asked, String> {
        let wire = Wire::deserialize(request).map_err(|e| format!("a network request: {e}"))?;
        let method = reqwest::Method::from_bytes(wire.method.as_bytes())
            .map_err(|_| format!("{:?} is not an HTTP method", shorten(&wire.method)))?;
        let shown = shorten(&wire.url);
        let url = reqwest::Url::parse(&wire.url).map_err(|e| format!("{shown:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("{shown:?}: only http and https URLs"));
        }
        if url.host_str().is_some_and(|h| h.len() > 253) {
            return Err(format!("{shown:?}: a host name over 253 bytes"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("a URL with credentials in it: send them in a header".into());
        }
        // Base64 is 4 bytes for each 3.
        if wire.body.len() / 4 * 3 > max_body + 3 {
            return Err(format!("a request body over the {max_body}-byte limit"));
        }
        let body = base64::engine::general_purpose::STANDARD
            .decode(wire.body.as_bytes())
            .map_err(|e| format!("a network request's body: {e}"))?;
        if body.len() > max_body {
            return Err(format!("a request body over the {max_body}-byte limit"));
        }
        Ok(Asked {
            method,
            url,
            headers: wire.headers,
            body,
        })
    }
}

/// The addresses the request may go to: `host`'s (resolved here, or the address it spells),
/// those that are not special unless the entries allowing it name it `exact`ly.
async fn resolve(host: &str, port: u16, exact: bool) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> = match allow::literal(host) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("{host}: cannot resolve ({e})"))?
            .collect(),
    };
    if exact {
        return Ok(found);
    }
    let mut refused = None;
    let public: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| match allow::special(a.ip()) {
            None => true,
            Some(why) => {
                refused.get_or_insert((a.ip(), why));
                false
            }
        })
        .collect();
    match (public.is_empty(), refused) {
        (false, _) => Ok(public),
        (true, Some((ip, why))) => Err(format!(
            "{host} is {ip}, {why}: reachable only through an allowlist entry naming \
             {host}:{port} exactly"
        )),
        (true, None) => Err(format!("{host}: no address")),
    }
}

/// A client that reaches `host` at `addrs` only, follows no redirect and uses no proxy. (The
/// request's time limit is [`RunNetwork::fetch`]'s, over resolving, connecting and reading.)
fn client(url: &reqwest::Url, host: &str, addrs: &[SocketAddr]) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0);
    if url.domain().is_some() {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    builder
        .build()
        .map_err(|e| format!("{host}: no HTTP client ({e})"))
}

/// The response's headers as the guest gets them, with the secrets sent taken out again.
fn response_headers(headers: &reqwest::header::HeaderMap, secrets: &[Secret]) -> Vec<Value> {
    headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "transfer-encoding" | "connection"))
        .map(|(name, value)| {
            let value = secrets::redact(value.as_bytes().to_vec(), secrets);
            // Header bytes are Latin-1 where they are not ASCII.
            let value: String = value.iter().map(|&b| b as char).collect();
            json!([name.as_str(), value])
        })
        .collect()
}

/// The start of a URL, for an error message.
fn shorten(url: &str) -> String {
    match url.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &url[..at]),
        None => url.to_string(),
    }
}

/// A failed exchange, said without the request's details.
fn failed(host: &str, port: u16, e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the response broke off"
    } else {
        "the request failed"
    };
    let mut source: &dyn std::error::Error = &e;
    while let Some(next) = source.source() {
        source = next;
    }
    format!("{host}:{port}: {what} ({source})")
}

#[cfg(test)]
mod tests {
    use crate::{narrowing, Network, NetworkConfig};

    #[test]
    fn a_special_address_needs_every_allowing_entry_to_name_it_exactly() {
        let config = NetworkConfig {
            allow: vec!["*".into(), "localhost:8000".into()],
            ..Default::default()
        };
        let network = Network::new(&config, &Default::default()).unwrap().unwrap();
        let server = network.for_run(None, Default::default()).unwrap();
        assert_eq!(server.allowed("localhost", 8000), Ok(true));
        assert_eq!(server.allowed("localhost", 8001), Ok(false));
        // The run's own `*` allows the host, but does not name it: no loopback for this run.
        let own = narrowing(&["*".into()]).unwrap();
        let run = network.for_run(Some(own), Default::default()).unwrap();
        assert_eq!(run.allowed("localhost", 8000), Ok(false));
        let narrow = narrowing(&["example.org".into()]).unwrap();
        let run = network.for_run(Some(narrow), Default::default()).unwrap();
        assert!(run.allowed("localhost", 8000).is_err());
    }
}
