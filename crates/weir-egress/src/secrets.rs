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

/// `value` with each placeholder of a secret in `secrets` that may go to `host`:`port` replaced
/// by its value; the secrets used are added to `used`. Other placeholders stay as they are.
pub(crate) fn fill<'a>(
    value: &str,
    secrets: &'a [Secret],
    host: &str,
    port: u16,
    used: &mut Vec<&'a Secret>,
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
            Some(secret) if secret.hosts.find(host, port).is_some() => {
                out.push_str(&secret.value);
                if !used.iter().any(|s| s.name == secret.name) {
                    used.push(secret);
                }
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

/// `bytes` with every occurrence of a used secret's value replaced by its placeholder.
pub(crate) fn redact(bytes: Vec<u8>, used: &[&Secret]) -> Vec<u8> {
    let mut bytes = bytes;
    for secret in used {
        let finder = memchr::memmem::Finder::new(secret.value.as_bytes());
        if finder.find(&bytes).is_none() {
            continue;
        }
        let placeholder = secret.placeholder();
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for at in finder.find_iter(&bytes) {
            out.extend_from_slice(&bytes[last..at]);
            out.extend_from_slice(placeholder.as_bytes());
            last = at + secret.value.len();
        }
        out.extend_from_slice(&bytes[last..]);
        bytes = out;
    }
    bytes
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
        let mut used = Vec::new();
        let v = "Bearer weir-secret:API_KEY, weir-secret:API_KEY2 weir-secret:NOPE";
        let filled = fill(v, &secrets, "api.github.com", 443, &mut used);
        assert_eq!(
            filled,
            "Bearer s3cr3t-value, weir-secret:API_KEY2 weir-secret:NOPE"
        );
        assert_eq!(used.len(), 1);
        let mut used = Vec::new();
        let filled = fill(v, &secrets, "evil.org", 443, &mut used);
        assert_eq!(filled, v);
        assert!(used.is_empty());
        let out = redact(b"echo: s3cr3t-value!s3cr3t-value".to_vec(), &[&secrets[0]]);
        assert_eq!(out, b"echo: weir-secret:API_KEY!weir-secret:API_KEY");
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
