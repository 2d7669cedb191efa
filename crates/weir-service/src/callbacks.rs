//! Signed HTTP callbacks: how a one-shot run's declared functions are answered. A call
//! (`weir_sandbox::Event::Call`) is `POST`ed to the request's `callback_url`, which the operator
//! must allow (`[callbacks] allow`), as JSON `{run_id, call_id, name, args}`, signed with the
//! operator's key: `X-Weir-Timestamp` (Unix seconds) and `X-Weir-Signature:
//! sha256=HEX(HMAC-SHA256(key, "{timestamp}.{body}"))`. The receiver answers `200` with
//! `{"value": …}` or `{"error": "…"}`. Each attempt has a time limit; a connection failure, a
//! timeout or a 5xx is retried a bounded number of times, anything else is the call's error.
//! Redirects are not followed. docs/code-mode.md.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;
use weir_sandbox::{Call, ToolResult};

/// `[callbacks]`: where one-shot runs may send their calls, and the key that signs them.
/// Callbacks are off until both `allow` and a key are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// URL prefixes a `callback_url` must start with, e.g. `"https://hooks.example.org/weir/"`:
    /// scheme, host and port compared exactly, the path as a prefix.
    pub allow: Vec<String>,
    /// The signing key; or `key_env`, the environment variable holding it.
    pub key: Option<String>,
    pub key_env: Option<String>,
    /// One attempt's time limit, milliseconds.
    pub timeout_ms: u64,
    /// Attempts after the first for a connection failure, a timeout or a 5xx.
    pub retries: u32,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            allow: Vec::new(),
            key: None,
            key_env: None,
            timeout_ms: 10_000,
            retries: 2,
        }
    }
}

/// The largest answer read from a callback, bytes (a call's result is bounded further by the
/// run's `ToolLimits::max_bytes`).
const MAX_ANSWER_BYTES: usize = 2 << 20;
/// The wait before the first retry; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The server's callback client: the allowed URLs, the key and one HTTP client.
pub struct Callbacks {
    config: CallbackConfig,
    key: Option<Vec<u8>>,
    /// `None` when it could not be built (callbacks are then off, as logged).
    client: Option<reqwest::Client>,
}

impl Callbacks {
    /// The client for `config` (its key read from the environment when named there).
    pub fn new(config: &CallbackConfig) -> Self {
        let key = config
            .key
            .clone()
            .or_else(|| std::env::var(config.key_env.as_deref()?).ok())
            .filter(|k| !k.is_empty())
            .map(String::into_bytes);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| tracing::error!(error = %e, "callbacks are off: no HTTP client"))
            .ok();
        Callbacks {
            config: config.clone(),
            key,
            client,
        }
    }

    /// Where a run's calls go: `url`, when the run declares functions (`declares`) and the
    /// operator allows it; none when it names neither; otherwise why not.
    pub fn for_run(
        &self,
        url: Option<&str>,
        declares: bool,
    ) -> Result<Option<reqwest::Url>, String> {
        match (url, declares) {
            (Some(url), true) => self.target(url).map(Some),
            (None, false) => Ok(None),
            (None, true) => Err("functions need a callback_url to send their calls to".into()),
            (Some(_), false) => {
                Err("callback_url without functions: declare the functions it answers".into())
            }
        }
    }

    /// `url` as a callback target, or why the operator does not allow it.
    pub fn target(&self, url: &str) -> Result<reqwest::Url, String> {
        if self.key.is_none() || self.config.allow.is_empty() || self.client.is_none() {
            return Err("callbacks are off on this server ([callbacks] allow and key)".into());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("callback_url: {e}"))?;
        let allowed = self.config.allow.iter().any(|prefix| {
            reqwest::Url::parse(prefix).is_ok_and(|p| {
                p.scheme() == parsed.scheme()
                    && p.host_str() == parsed.host_str()
                    && p.port_or_known_default() == parsed.port_or_known_default()
                    && parsed.path().starts_with(p.path())
                    && parsed.username().is_empty()
                    && parsed.password().is_none()
            })
        });
        match allowed {
            true => Ok(parsed),
            false => Err(format!(
                "callback_url {url:?} is not one the operator allows ([callbacks] allow)"
            )),
        }
    }

    /// Sends `call` of run `run_id` to `url` and returns the receiver's answer, or why there is
    /// none.
    pub async fn call(&self, url: &reqwest::Url, run_id: &str, call: &Call) -> ToolResult {
        let body =
            json!({"run_id": run_id, "call_id": call.id, "name": call.name, "args": call.args})
                .to_string();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            match self.attempt(url, &body).await {
                Attempt::Answered(result) => return result,
                Attempt::Failed(why) if attempt >= self.config.retries => {
                    return Err(format!("{}: the callback failed: {why}", call.name))
                }
                Attempt::Failed(why) => {
                    tracing::info!(%why, attempt, "callback failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// Delivers `body` (a finished Judge0 submission) to `url` with a signed `PUT`: retried as
    /// a call is on a connection failure, a timeout or a 5xx; any other answer delivers it.
    pub async fn deliver(&self, url: &reqwest::Url, body: &str) -> Result<(), String> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let why = match self.send(reqwest::Method::PUT, url, body).await {
                Ok(response) if !response.status().is_server_error() => return Ok(()),
                Ok(response) => format!("HTTP {}", response.status()),
                Err(why) => why,
            };
            if attempt >= self.config.retries {
                return Err(why);
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    /// One signed request of `body` to `url`.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &reqwest::Url,
        body: &str,
    ) -> Result<reqwest::Response, String> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let Some(client) = &self.client else {
            return Err("callbacks are off on this server".into());
        };
        client
            .request(method, url.clone())
            .header("content-type", "application/json")
            .header("x-weir-timestamp", timestamp.to_string())
            .header("x-weir-signature", self.signature(timestamp, body))
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| describe(&e))
    }

    async fn attempt(&self, url: &reqwest::Url, body: &str) -> Attempt {
        if self.client.is_none() {
            return Attempt::Answered(Err("callbacks are off on this server".into()));
        }
        let mut response = match self.send(reqwest::Method::POST, url, body).await {
            Ok(response) => response,
            Err(why) => return Attempt::Failed(why),
        };
        let status = response.status();
        if status.is_server_error() {
            return Attempt::Failed(format!("HTTP {status}"));
        }
        if !status.is_success() {
            return Attempt::Answered(Err(format!("the callback answered HTTP {status}")));
        }
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if bytes.len() + chunk.len() > MAX_ANSWER_BYTES => {
                    return Attempt::Answered(Err(format!(
                        "the callback's answer is over {MAX_ANSWER_BYTES} bytes"
                    )))
                }
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Attempt::Failed(describe(&e)),
            }
        }
        Attempt::Answered(answer(&bytes))
    }

    /// `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under the key.
    fn signature(&self, timestamp: u64, body: &str) -> String {
        let key = self.key.as_deref().unwrap_or_default();
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return String::new();
        };
        mac.update(format!("{timestamp}.{body}").as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

enum Attempt {
    Answered(ToolResult),
    Failed(String),
}

/// A request error in a few words (reqwest's own chain names the URL).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        // reqwest's own message names only the URL; the cause is below it.
        let mut why = String::from("the request failed");
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            why = cause.to_string();
            source = cause.source();
        }
        why
    }
}

/// The receiver's JSON answer: exactly one of `value` and `error`, as `return` takes it.
fn answer(bytes: &[u8]) -> ToolResult {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Answer {
        #[serde(default, deserialize_with = "crate::protocol::present")]
        value: Option<Value>,
        error: Option<String>,
    }
    match serde_json::from_slice::<Answer>(bytes) {
        Ok(a) => crate::protocol::call_answer(a.value, a.error).unwrap_or_else(|| {
            Err("the callback's answer must hold exactly one of value and error".into())
        }),
        Err(e) => Err(format!(
            "the callback's answer is not JSON of value or error: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callbacks(allow: &[&str]) -> Callbacks {
        Callbacks::new(&CallbackConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            key: Some("k".into()),
            ..CallbackConfig::default()
        })
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_are_targets() {
        let c = callbacks(&["https://hooks.example.org/weir/", "http://127.0.0.1:9000/"]);
        for ok in [
            "https://hooks.example.org/weir/calls",
            "https://hooks.example.org:443/weir/x?y=1",
            "http://127.0.0.1:9000/anything",
        ] {
            assert!(c.target(ok).is_ok(), "{ok}");
        }
        for refused in [
            "https://hooks.example.org/other",
            "http://hooks.example.org/weir/calls",
            "https://hooks.example.org.evil.net/weir/",
            "https://user:pw@hooks.example.org/weir/",
            "http://127.0.0.1:9001/",
            "http://localhost:9000/",
            "not a url",
        ] {
            assert!(c.target(refused).is_err(), "{refused}");
        }
        assert!(callbacks(&[]).target("http://127.0.0.1:9000/").is_err());
    }

    #[test]
    fn answers_hold_exactly_one_of_value_and_error() {
        assert_eq!(answer(br#"{"value": null}"#), Ok(Value::Null));
        assert_eq!(answer(br#"{"error": "no"}"#), Err("no".into()));
        assert!(answer(br#"{}"#).is_err());
        assert!(answer(br#"{"value": 1, "error": "e"}"#).is_err());
        assert!(answer(b"<html>").is_err());
    }
}
