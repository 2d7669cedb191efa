//! Who may start what: every entry point admits its callers through [`Admitted`] (a run or a
//! session: `Host`, `Origin`, token, then the body, then drain and capacity) or [`Identified`] (a
//! request about something the caller holds: `Host`, `Origin`, token). A refusal is counted in
//! `weir_connections_rejected_total` by its reason and logged.

use super::body::FromBody;
use super::error::Dialect;
use crate::auth;
use crate::config::ServerConfig;
use crate::error::{Error, Refusal};
use crate::registry::Slot;
use crate::state::{AppState, WsQuery};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use std::marker::PhantomData;
use std::sync::Arc;

/// The owner of runs from callers without a signed-in user.
pub use crate::auth::ANONYMOUS;

/// A caller let in to start a run or a session: who they are, the body their request carried
/// (`B`: [`NoBody`](super::body::NoBody), [`Raw`](super::body::Raw), JSON), and the slot they
/// hold while what they start lives. Extracting one runs, in order: drain, `Host`, `Origin`,
/// token (no body is waited for from a refused caller), the body (408, 413, 400), then drain
/// again, the cluster database's health and capacity (503, or 429 for a user at
/// `max_sessions_per_user`): a slot is taken only once the body is in. A refusal is rendered as
/// the front end's dialect `D` spells errors.
pub struct Admitted<B, D> {
    /// The token's user (`None` when the server has no secret).
    pub user: Option<String>,
    /// The `Sec-WebSocket-Protocol` value that carried the token, to echo back.
    pub protocol: Option<String>,
    pub slot: Slot,
    pub body: B,
    dialect: PhantomData<fn() -> D>,
}

impl<B, D> Admitted<B, D> {
    /// The owner of what the caller starts: their user, or [`ANONYMOUS`].
    pub fn owner(&self) -> &str {
        self.user.as_deref().unwrap_or(ANONYMOUS)
    }

    /// Where the caller's compiled programs are cached (`weir_sandbox::CompileScope`).
    pub fn compile_scope(&self) -> weir_sandbox::CompileScope {
        weir_sandbox::CompileScope::of(self.user.as_deref(), None)
    }
}

impl<B: FromBody, D: Dialect> Admitted<B, D> {
    /// Admits the request `parts` with `body` (for a route that needs its parts afterwards).
    pub async fn admit(
        app: &AppState,
        parts: &Parts,
        body: axum::body::Body,
    ) -> Result<Self, Response> {
        Self::check(app, parts, body).await.map_err(|e| {
            count_refusal(app, &e);
            e.render::<D>()
        })
    }

    async fn check(app: &AppState, parts: &Parts, body: axum::body::Body) -> Result<Self, Error> {
        let query = query(parts)?;
        draining(app)?;
        let (user, protocol) = identify(app, &query, &parts.headers)?;
        let body = B::read(app, &parts.headers, body).await?;
        draining(app)?;
        if let Err(reason) = app.registry.health() {
            return Err(Error::Refused(registry_refusal(Error::ClusterUnavailable(
                reason,
            ))));
        }
        let slot = slot(app, user.as_deref()).await?;
        Ok(Admitted {
            user,
            protocol,
            slot,
            body,
            dialect: PhantomData,
        })
    }
}

impl<B: FromBody, D: Dialect> FromRequest<Arc<AppState>> for Admitted<B, D> {
    type Rejection = Response;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        Self::admit(app, &parts, body).await
    }
}

/// A caller let in to a request about something they hold (a run's record, a session's cells
/// and files): `Host`, `Origin` and token checked, no slot taken.
pub struct Identified {
    /// The token's user, or [`ANONYMOUS`] when the server has no secret.
    pub user: String,
}

impl FromRequestParts<Arc<AppState>> for Identified {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, Error> {
        let query = query(parts)?;
        let identified = identify(app, &query, &parts.headers).map(|(user, _)| Identified {
            user: user.unwrap_or_else(|| ANONYMOUS.into()),
        });
        identified.inspect_err(|e| count_refusal(app, e))
    }
}

/// The request's query string (an optional token).
fn query(parts: &Parts) -> Result<WsQuery, Error> {
    Query::<WsQuery>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .map_err(|e| Error::BadRequest(e.body_text()))
}

/// Counts and logs a refusal (other errors, a malformed body say, are the caller's answer only).
pub fn count_refusal(app: &AppState, e: &Error) {
    if let Error::Refused(r) = e {
        app.metrics.rejected(r.reason);
        tracing::info!(reason = r.reason, message = %r.message, "refused");
    }
}

/// 503 while the server shuts down.
fn draining(app: &AppState) -> Result<(), Error> {
    match *app.shutdown.borrow() {
        true => Err(Error::Refused(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "shutting_down",
            message: "the server is shutting down".into(),
        })),
        false => Ok(()),
    }
}

/// A slot for `user` (`None`: anonymous, who cannot be told apart and are bounded by
/// `max_sessions` only): 503 when the server's slots are all taken, 429 when the user already
/// holds `max_sessions_per_user` (on this node or, in cluster mode, across the cluster). A
/// refusal is not counted here: [`Admitted`] counts its own, and a caller taking a second slot
/// (an MCP call starting a session) counts it with [`count_refusal`].
pub async fn slot(app: &AppState, user: Option<&str>) -> Result<Slot, Error> {
    let global = app.slots.clone().try_acquire_owned().map_err(|_| {
        Error::Refused(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "capacity",
            message: format!(
                "all {} sessions are in use; retry shortly",
                app.config.max_sessions
            ),
        })
    })?;
    let Some(user) = user else {
        return Ok(Slot::new(global, None));
    };
    match app
        .registry
        .user_slot(user, app.config.sessions_per_user())
        .await
    {
        Ok(slot) => Ok(Slot::new(global, Some(slot))),
        Err(e @ Error::UserAtCapacity { .. }) => Err(Error::Refused(Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            reason: "user_capacity",
            message: e.to_string(),
        })),
        // Cluster mode without its database: the count cannot be kept.
        Err(e) => Err(Error::Refused(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "database",
            message: e.to_string(),
        })),
    }
}

/// The refusal of a caller the login registry cannot admit (cluster mode: the database is
/// unreachable, or the user's connection on another node did not close in time).
fn registry_refusal(e: Error) -> Refusal {
    let reason = match e {
        Error::LoginBusy => "replacing",
        _ => "database",
    };
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason,
        message: e.to_string(),
    }
}

/// Counts and logs a login registry's refusal, as `D` spells it.
pub fn login_refused<D: Dialect>(app: &AppState, e: Error) -> Response {
    let e = Error::Refused(registry_refusal(e));
    count_refusal(app, &e);
    e.render::<D>()
}

/// The caller checks: `Host`, `Origin` and token. Returns the token's user and the protocol
/// value that carried it.
fn identify(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<(Option<String>, Option<String>), Error> {
    let refuse = |status, reason, message| {
        Error::Refused(Refusal {
            status,
            reason,
            message,
        })
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
) -> Result<(Option<String>, Option<String>), Error> {
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
    let mut last = Error::TokenMissing;
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
            Err(Error::TokenMissing)
        ));
    }
}
