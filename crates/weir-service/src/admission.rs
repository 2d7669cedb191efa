//! Who may start runs: every entry point (the `/ws` session, the Piston API, `POST /v1/runs`)
//! passes the same checks, in the same order: shutting down, `Origin`, token, capacity.

use crate::auth;
use crate::config::ServerConfig;
pub use crate::registry::Slot;
use crate::registry::UserSlotError;
use crate::state::{AppState, WsQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A caller let in: who they are, and the slot they hold while their session or run lives.
pub struct Admitted {
    /// The token's user (`None` when the server has no secret).
    pub user: Option<String>,
    /// The `Sec-WebSocket-Protocol` value that carried the token, to echo back.
    pub protocol: Option<String>,
    pub permit: Slot,
}

/// A slot for `user` (`None`: anonymous, who cannot be told apart and are bounded by
/// `max_sessions` only): 503 when the server's slots are all taken, 429 when the user already
/// holds `max_sessions_per_user` (on this node or, in cluster mode, across the cluster).
pub async fn slot(state: &AppState, user: Option<&str>) -> Result<Slot, Refusal> {
    let global = state
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "capacity",
            message: format!(
                "all {} sessions are in use; retry shortly",
                state.config.max_sessions
            ),
        })?;
    let user_slot = match user {
        None => None,
        Some(u) => match state
            .registry
            .user_slot(u, state.config.sessions_per_user())
            .await
        {
            Ok(slot) => Some(slot),
            Err(e @ UserSlotError::Full { .. }) => {
                return Err(Refusal {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    reason: "user_capacity",
                    message: e.to_string(),
                })
            }
            Err(UserSlotError::Registry(e)) => {
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "database",
                    message: e.to_string(),
                })
            }
        },
    };
    Ok(Slot::new(global, user_slot))
}

/// Why a caller was refused: the HTTP status, the metric's reason label and a message.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

/// How an endpoint spells its error bodies.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Plain text (the WebSocket upgrade).
    Text,
    /// `{"error": message}` (weir's `/v1` API).
    Error,
    /// `{"message": message}` (the Piston API).
    Message,
}

impl Refusal {
    pub fn into_response(self, body: Body) -> Response {
        let mut response = match body {
            Body::Text => (self.status, self.message).into_response(),
            Body::Error => (self.status, Json(json!({ "error": self.message }))).into_response(),
            Body::Message => {
                (self.status, Json(json!({ "message": self.message }))).into_response()
            }
        };
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// Runs the checks; a refusal is counted in `weir_connections_rejected_total` and logged.
pub async fn admit(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<Admitted, Refusal> {
    let refusal = check(state, query, headers).await;
    if let Err(r) = &refusal {
        state.metrics.rejected(r.reason);
        tracing::info!(reason = r.reason, message = %r.message, "refused");
    }
    refusal
}

/// The caller checks alone (`Host`, `Origin`, token; no slot), counted and logged like
/// [`admit`]'s: what a route runs before it reads a body, so that a refused caller's body is never
/// waited for and a slot is taken only once the body is in.
pub fn precheck(state: &AppState, query: &WsQuery, headers: &HeaderMap) -> Result<(), Refusal> {
    identify(state, query, headers).map(drop).inspect_err(|r| {
        state.metrics.rejected(r.reason);
        tracing::info!(reason = r.reason, message = %r.message, "refused");
    })
}

async fn check(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<Admitted, Refusal> {
    if *state.shutdown.borrow() {
        return Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "shutting_down",
            message: "the server is shutting down".into(),
        });
    }
    if let Err(reason) = state.registry.health() {
        return Err(registry_refusal(
            state,
            crate::registry::RegisterError::Unavailable(reason),
        ));
    }
    let (user, protocol) = identify(state, query, headers)?;
    let permit = slot(state, user.as_deref()).await?;
    Ok(Admitted {
        user,
        protocol,
        permit,
    })
}

/// The refusal of a caller the session registry cannot admit (cluster mode: the database is
/// unreachable, or the user's session on another node did not close in time); counted and
/// logged like the other refusals.
pub fn registry_refusal(state: &AppState, e: crate::registry::RegisterError) -> Refusal {
    let reason = match e {
        crate::registry::RegisterError::Unavailable(_) => "database",
        crate::registry::RegisterError::Busy => "replacing",
    };
    state.metrics.rejected(reason);
    tracing::info!(reason, message = %e, "refused");
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason,
        message: e.to_string(),
    }
}

/// The checks for a request about something the caller already holds (a session's cells and
/// files): `Host`, `Origin` and token, but no slot. Returns the token's user and the protocol
/// value that carried it.
pub fn identify(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<(Option<String>, Option<String>), Refusal> {
    let refuse = |status, reason, message| Refusal {
        status,
        reason,
        message,
    };
    if let Err(message) = served_host(&state.config, headers) {
        return Err(refuse(StatusCode::MISDIRECTED_REQUEST, "host", message));
    }
    if let Err(origin) = check_origin(headers, &state.config.allowed_origins) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "origin",
            format!("origin {origin:?} is not allowed"),
        ));
    }
    authenticate(&state.config, query, headers)
        .map_err(|e| refuse(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))
}

/// [`check_host`] for a server without a secret (one with a secret needs a token instead, which a
/// rebound page does not have); the refusal's message names the host.
pub fn served_host(config: &ServerConfig, headers: &HeaderMap) -> Result<(), String> {
    if config.secret.is_some() {
        return Ok(());
    }
    check_host(headers, &config.allowed_hosts)
        .map_err(|host| format!("host {host:?} is not served here (see allowed_hosts)"))
}

/// The name in a `Host` header value, without its port (`[::1]:80` -> `[::1]`).
fn bare_host(host: &str) -> &str {
    host.rsplit_once(':')
        .filter(|(name, port)| port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':'))
        .map_or(host, |(name, _)| name)
}

/// Without a secret, the `Host` a request names must be `localhost`, an IP address, or an
/// allowed name: a page on a DNS name the attacker rebinds to this server's address sends its
/// own name, and its requests would otherwise pass the `Origin` check as same-origin.
/// Requests without `Host` (not browsers; HTTP/1.0) are let through.
pub fn check_host(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let host = host.to_str().unwrap_or("");
    let name = bare_host(host).to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let ip = name.parse::<std::net::Ipv4Addr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    if ip || name == "localhost" || allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
        Ok(())
    } else {
        Err(host.to_string())
    }
}

/// Browsers send `Origin`; it must be this server's host, localhost, or an allowed origin.
/// Clients that send no `Origin` (not browsers) are let through.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").to_string();
    let host_of = |o: &str| {
        o.split("://")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string()
    };
    let origin_host = host_of(&origin);
    let bare = |h: &str| {
        h.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(h.to_string(), |(name, _)| name.to_string())
    };
    let own_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let local = matches!(
        bare(&origin_host).as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    );
    if origin_host == own_host || local || allowed.iter().any(|a| a == &origin) {
        Ok(())
    } else {
        Err(origin)
    }
}

/// With a secret configured, finds and checks the token (`?token=`, `Authorization: Bearer`,
/// or `Sec-WebSocket-Protocol`); returns the user and, when the token came in
/// `Sec-WebSocket-Protocol`, the protocol value to echo back.
pub fn authenticate(
    config: &ServerConfig,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<(Option<String>, Option<String>), auth::TokenError> {
    let Some(secret) = &config.secret else {
        return Ok((None, None));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = query.token.as_deref().or(bearer) {
        return auth::verify(secret.as_bytes(), token).map(|u| (Some(u), None));
    }
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut last = auth::TokenError::Missing;
    for candidate in offered.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match auth::verify(secret.as_bytes(), candidate) {
            Ok(user) => return Ok((Some(user), Some(candidate.to_string()))),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn origin_must_be_same_host_local_or_allowed() {
        assert!(check_origin(&HeaderMap::new(), &[]).is_ok());
        assert!(check_origin(&headers("http://ide.example:8080", "ide.example:8080"), &[]).is_ok());
        assert!(check_origin(&headers("http://localhost:3000", "ide.example:8080"), &[]).is_ok());
        assert!(check_origin(&headers("https://evil.example", "ide.example:8080"), &[]).is_err());
        let allowed = vec!["https://app.example".to_string()];
        assert!(check_origin(
            &headers("https://app.example", "ide.example:8080"),
            &allowed
        )
        .is_ok());
    }

    #[test]
    fn without_a_secret_only_local_names_ips_and_allowed_hosts_are_served() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            m
        };
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.0.0.7",
            "LOCALHOST",
        ] {
            assert!(check_host(&host(ok), &[]).is_ok(), "{ok}");
        }
        assert!(check_host(&HeaderMap::new(), &[]).is_ok());
        // A rebound name (the attacker's page keeps its own Host and Origin).
        assert!(check_host(&host("evil.example:8080"), &[]).is_err());
        assert!(check_host(&host("localhost.evil.example"), &[]).is_err());
        let allowed = vec!["ide.example".to_string()];
        assert!(check_host(&host("ide.example:8080"), &allowed).is_ok());
        assert!(check_host(&host("evil.example"), &allowed).is_err());
    }

    #[test]
    fn a_token_may_come_in_any_of_three_places() {
        let secret = "s3cret";
        let config = ServerConfig {
            secret: Some(secret.into()),
            ..ServerConfig::default()
        };
        let token =
            auth::mint(secret.as_bytes(), "ada", std::time::Duration::from_secs(60)).unwrap();
        let query = WsQuery {
            token: Some(token.clone()),
        };
        let user = |q: &WsQuery, h: &HeaderMap| authenticate(&config, q, h).map(|(u, _)| u);
        assert_eq!(
            user(&query, &HeaderMap::new()).unwrap().as_deref(),
            Some("ada")
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert_eq!(
            user(&WsQuery::default(), &bearer).unwrap().as_deref(),
            Some("ada")
        );
        let mut proto = HeaderMap::new();
        proto.insert(header::SEC_WEBSOCKET_PROTOCOL, token.parse().unwrap());
        let (u, echoed) = authenticate(&config, &WsQuery::default(), &proto).unwrap();
        assert_eq!((u.as_deref(), echoed), (Some("ada"), Some(token)));
        assert!(matches!(
            user(&WsQuery::default(), &HeaderMap::new()),
            Err(auth::TokenError::Missing)
        ));
    }
}
