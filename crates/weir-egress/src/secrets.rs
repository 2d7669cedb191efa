//! Secrets a run's requests may carry without the run ever seeing them: the guest sees a
//! placeholder, `weir-secret:NAME`; the host puts the value in place of the placeholder in a
//! request's header values, only on requests to the secret's hosts, and takes it out of the
//! response again.

use crate::allow::Allowlist;
use crate::Error;
use serde::{Deserialize, Serialize};

/// What the guest sees in place of secret `NAME`: `weir-secret:NAME`.
pub const PREFIX: &str = "weir-secret:";

/// `[secrets] NAME = { value = "…", hosts = ["api.github.com"] }` (or `value_env = "VAR"`).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretConfig {
    /// The value; or `value_env`, the environment variable of the server's that holds it.
    pub value: Option<String>,
    pub value_env: Option<String>,
    /// The hosts whose requests get it, as network entries (`host[:port]`, `*.domain`).
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretConfig")
            .field("value_env", &self.value_env)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// One secret: its name, value and hosts.
#[derive(Clone)]
pub(crate) struct Secret {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) hosts: Allowlist,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.name)
    }
}

/// The longest secret name, bytes.
const MAX_NAME: usize = 64;

impl Secret {
    /// `name`'s secret from its configuration: its value read, its hosts parsed.
    pub(crate) fn new(name: &str, config: &SecretConfig) -> Result<Secret, Error> {
        let bad = |why: String| Error::Config(format!("secrets.{name}: {why}"));
        let mut chars = name.chars();
        let name_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= MAX_NAME;
        if !name_ok {
            return Err(bad(format!(
                "a secret's name is letters, digits and _ (at most {MAX_NAME} bytes)"
            )));
        }
        let value = match (&config.value, &config.value_env) {
            (Some(value), None) => value.clone(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| bad(format!("value_env: the environment has no {var}")))?,
            _ => return Err(bad("give exactly one of value and value_env".into())),
        };
        // Short values would be "found" by chance in responses, and carry no real secret.
        if value.len() < 4 || value.contains(PREFIX) {
            return Err(bad(
                "a value of at least 4 bytes, without a placeholder".into()
            ));
        }
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(bad("a value that fits in an HTTP header".into()));
        }
        if config.hosts.is_empty() {
            return Err(bad("hosts: the hosts whose requests get it".into()));
        }
        let hosts = Allowlist::parse(&config.hosts).map_err(|e| bad(e.to_string()))?;
        Ok(Secret {
            name: name.to_string(),
            value,
            hosts,
        })
    }

    /// A secret a run declares (its request carries the value): `value` only, since
    /// `value_env` would read the server's environment, which is the operator's.
    pub(crate) fn for_run(name: &str, config: &SecretConfig) -> Result<Secret, Error> {
        if config.value_env.is_some() {
            return Err(Error::Config(format!(
                "secrets.{name}: a run's secret gives its value; value_env is the operator's"
            )));
        }
        Secret::new(name, config)
    }

    /// What the guest sees.
    pub(crate) fn placeholder(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }
}

/// Whether `secret` may go to `host`:`port` over `scheme`: one of its hosts names it, and the
/// request is HTTPS — or that entry names its port, as a local service's does.
pub(crate) fn may_go(secret: &Secret, scheme: &str, host: &str, port: u16) -> bool {
    secret
        .hosts
        .find(host, port)
        .is_some_and(|rule| scheme == "https" || rule.has_port())
}

/// `value` with each placeholder of a secret in `secrets` that may go to `host`:`port` over
/// `scheme` ([`may_go`]) replaced by its value. Other placeholders stay as they are.
pub(crate) fn fill(
    value: &str,
    secrets: &[Secret],
    (scheme, host, port): (&str, &str, u16),
) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PREFIX.len()..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &after[..len];
        match secrets.iter().find(|s| s.name == name) {
            Some(secret) if may_go(secret, scheme, host, port) => {
                out.push_str(&secret.value);
            }
            _ => {
                out.push_str(PREFIX);
                out.push_str(name);
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// `bytes` with every occurrence of any of `secrets`' values replaced by its placeholder, in
/// one pass over the bytes as they came (where values overlap, the leftmost, then the longest,
/// wins), so no replacement can hide another value.
pub(crate) fn redact(bytes: Vec<u8>, secrets: &[Secret]) -> Vec<u8> {
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let value = secret.value.as_bytes();
        found.extend(memchr::memmem::find_iter(&bytes, value).map(|at| (at, value.len(), i)));
    }
    if found.is_empty() {
        return bytes;
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = Vec::with_capacity(bytes.len());
    let mut last = 0;
    for (at, len, i) in found {
        if at < last {
            continue;
        }
        out.extend_from_slice(&bytes[last..at]);
        out.extend_from_slice(secrets[i].placeholder().as_bytes());
        last = at + len;
    }
    out.extend_from_slice(&bytes[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, value: &str, host: &str) -> Secret {
        let config = SecretConfig {
            value: Some(value.into()),
            value_env: None,
            hosts: vec![host.into()],
        };
        Secret::new(name, &config).unwrap()
    }

    #[test]
    fn placeholders_are_filled_for_their_hosts_only() {
        let secrets = [
            secret("API_KEY", "s3cr3t-value", "api.github.com"),
            secret("API_KEY2", "other-value", "*.example.org"),
        ];
        let v = "Bearer weir-secret:API_KEY, weir-secret:API_KEY2 weir-secret:NOPE";
        let filled = fill(v, &secrets, ("https", "api.github.com", 443));
        assert_eq!(
            filled,
            "Bearer s3cr3t-value, weir-secret:API_KEY2 weir-secret:NOPE"
        );
        assert_eq!(fill(v, &secrets, ("https", "evil.org", 443)), v);
        // Not over plain HTTP, unless the secret's entry names the port.
        assert_eq!(fill(v, &secrets, ("http", "api.github.com", 80)), v);
        let local = [secret("K", "local-value", "127.0.0.1:8000")];
        let k = "weir-secret:K";
        assert_eq!(fill(k, &local, ("http", "127.0.0.1", 8000)), "local-value");
        let out = redact(b"echo: s3cr3t-value!s3cr3t-value".to_vec(), &secrets);
        assert_eq!(out, b"echo: weir-secret:API_KEY!weir-secret:API_KEY");
    }

    #[test]
    fn redaction_is_one_pass_so_one_value_cannot_hide_another() {
        // A run's own short secret that is a prefix of the operator's: the longer one is found
        // first where both start, whatever order the secrets come in.
        let secrets = [
            secret("R", "ghp_", "a.org"),
            secret("GH", "ghp_0123456789abcdef", "a.org"),
        ];
        let out = redact(b"token ghp_0123456789abcdef and ghp_x".to_vec(), &secrets);
        assert_eq!(out, b"token weir-secret:GH and weir-secret:Rx");
    }

    #[test]
    fn bad_secrets_are_refused_by_name() {
        let config = |value: Option<&str>, hosts: &[&str]| SecretConfig {
            value: value.map(Into::into),
            value_env: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        for (name, c, why) in [
            ("A-B", config(Some("long enough"), &["a.org"]), "name"),
            ("K", config(None, &["a.org"]), "exactly one"),
            ("K", config(Some("abc"), &["a.org"]), "at least 4"),
            ("K", config(Some("line\nbreak"), &["a.org"]), "header"),
            ("K", config(Some("long enough"), &[]), "hosts"),
        ] {
            let e = Secret::new(name, &c).unwrap_err().to_string();
            assert!(e.contains(why), "{name}: {e}");
            assert!(!e.contains("long enough"), "the value is never shown: {e}");
        }
    }
}
