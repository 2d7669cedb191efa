//! Session tokens: `base64url(user "." expiry-unix-seconds) "." base64url(HMAC-SHA256)`.
//!
//! `weir token --user NAME` mints one with the configured secret; the server verifies it.

use crate::error::Error;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

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

/// A user name a token may carry: 1-64 ASCII letters, digits and `. _ @ + -` (it goes into
/// logs, history rows and cache scopes), and not [`ANONYMOUS`].
pub fn check_user(user: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._@+-".contains(c);
    if user.is_empty() || user.len() > 64 || !user.chars().all(allowed) {
        return Err(Error::InvalidUserName);
    }
    if user.eq_ignore_ascii_case(ANONYMOUS) {
        return Err(Error::ReservedUserName);
    }
    Ok(())
}

/// Mints a token for `user`, valid for `ttl`.
pub fn mint(secret: &[u8], user: &str, ttl: Duration) -> Result<String, Error> {
    check_user(user)?;
    let expiry = now_secs().saturating_add(ttl.as_secs());
    let payload = format!("{user}.{expiry}");
    let sig = mac(secret, payload.as_bytes()).finalize().into_bytes();
    Ok(format!("{}.{}", B64.encode(payload), B64.encode(sig)))
}

/// Checks a token; returns its user.
pub fn verify(secret: &[u8], token: &str) -> Result<String, Error> {
    let (payload_b64, sig_b64) = token.split_once('.').ok_or(Error::TokenMalformed)?;
    let payload = B64.decode(payload_b64).map_err(|_| Error::TokenMalformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| Error::TokenMalformed)?;
    mac(secret, &payload)
        .verify_slice(&sig)
        .map_err(|_| Error::TokenBadSignature)?;
    let payload = String::from_utf8(payload).map_err(|_| Error::TokenMalformed)?;
    let (user, expiry) = payload.rsplit_once('.').ok_or(Error::TokenMalformed)?;
    let expiry: u64 = expiry.parse().map_err(|_| Error::TokenMalformed)?;
    if check_user(user).is_err() {
        return Err(Error::TokenMalformed);
    }
    if expiry <= now_secs() {
        return Err(Error::TokenExpired);
    }
    Ok(user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let t = mint(b"s3cret", "ada", Duration::from_secs(60)).unwrap();
        assert_eq!(verify(b"s3cret", &t).ok().as_deref(), Some("ada"));
        assert!(matches!(
            verify(b"other", &t),
            Err(Error::TokenBadSignature)
        ));
        let forged = format!(
            "{}.{}",
            B64.encode("root.99999999999"),
            t.split_once('.').unwrap().1
        );
        assert!(matches!(
            verify(b"s3cret", &forged),
            Err(Error::TokenBadSignature)
        ));
        assert!(matches!(
            verify(b"s3cret", "garbage"),
            Err(Error::TokenMalformed)
        ));
        let expired = mint(b"s3cret", "ada", Duration::ZERO).unwrap();
        assert!(matches!(
            verify(b"s3cret", &expired),
            Err(Error::TokenExpired)
        ));
    }

    #[test]
    fn the_reserved_name_is_the_anonymous_owner() {
        let refused = mint(b"s", ANONYMOUS, Duration::from_secs(60)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("the user name {ANONYMOUS:?} is reserved for runs made without a token")
        );
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
        assert!(matches!(verify(b"s", &forged), Err(Error::TokenMalformed)));
    }
}
