//! Session tokens: `base64url(user "." expiry-unix-seconds) "." base64url(HMAC-SHA256)`.
//!
//! `weir token --user NAME` mints one with the configured secret; the server verifies it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a token is required (?token=…, an Authorization: Bearer header, or the Sec-WebSocket-Protocol header)")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(secret: &[u8], payload: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(payload);
    mac
}

/// The user name a server without a secret records its runs under; no token may carry it.
pub const ANONYMOUS: &str = "anonymous";

/// Why a user name cannot be put in a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserNameError {
    #[error("the user name must be 1-64 characters of letters, digits and . _ @ + -")]
    Invalid,
    #[error("the user name {ANONYMOUS:?} is reserved for runs made without a token")]
    Reserved,
}

/// A user name a token may carry: 1-64 ASCII letters, digits and `. _ @ + -` (it goes into
/// logs, history rows and cache scopes), and not [`ANONYMOUS`].
pub fn check_user(user: &str) -> Result<(), UserNameError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._@+-".contains(c);
    if user.is_empty() || user.len() > 64 || !user.chars().all(allowed) {
        return Err(UserNameError::Invalid);
    }
    if user.eq_ignore_ascii_case(ANONYMOUS) {
        return Err(UserNameError::Reserved);
    }
    Ok(())
}

/// Mints a token for `user`, valid for `ttl`.
pub fn mint(secret: &[u8], user: &str, ttl: Duration) -> Result<String, UserNameError> {
    check_user(user)?;
    let expiry = now_secs().saturating_add(ttl.as_secs());
    let payload = format!("{user}.{expiry}");
    let sig = mac(secret, payload.as_bytes()).finalize().into_bytes();
    Ok(format!("{}.{}", B64.encode(payload), B64.encode(sig)))
}

/// Checks a token; returns its user.
pub fn verify(secret: &[u8], token: &str) -> Result<String, TokenError> {
    let (payload_b64, sig_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = B64.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    mac(secret, &payload)
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let (user, expiry) = payload.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    if check_user(user).is_err() {
        return Err(TokenError::Malformed);
    }
    if expiry <= now_secs() {
        return Err(TokenError::Expired);
    }
    Ok(user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let t = mint(b"s3cret", "ada", Duration::from_secs(60)).unwrap();
        assert_eq!(verify(b"s3cret", &t), Ok("ada".into()));
        assert_eq!(verify(b"other", &t), Err(TokenError::BadSignature));
        let forged = format!(
            "{}.{}",
            B64.encode("root.99999999999"),
            t.split_once('.').unwrap().1
        );
        assert_eq!(verify(b"s3cret", &forged), Err(TokenError::BadSignature));
        assert_eq!(verify(b"s3cret", "garbage"), Err(TokenError::Malformed));
        let expired = mint(b"s3cret", "ada", Duration::ZERO).unwrap();
        assert_eq!(verify(b"s3cret", &expired), Err(TokenError::Expired));
    }

    #[test]
    fn user_names_are_plain_and_never_anonymous() {
        for bad in [
            "",
            "ada\nINFO forged log line",
            "a b",
            &"x".repeat(65),
            "Anonymous",
        ] {
            assert!(mint(b"s", bad, Duration::from_secs(60)).is_err(), "{bad:?}");
        }
        assert!(mint(b"s", "ada.lovelace@example-1", Duration::from_secs(60)).is_ok());
        // A token signed for a name that minting refuses is refused too.
        let payload = format!("anonymous.{}", now_secs() + 60);
        let sig = mac(b"s", payload.as_bytes()).finalize().into_bytes();
        let forged = format!("{}.{}", B64.encode(payload), B64.encode(sig));
        assert_eq!(verify(b"s", &forged), Err(TokenError::Malformed));
    }
}
