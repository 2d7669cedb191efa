//! What a guest displays, checked before anyone sees it: a MIME bundle as both runtimes' guests
//! send it (`data` and `metadata` as JSON text, from `guests/shared/weir_display.py`), turned into
//! a [`Display`] or refused with the reason the guest prints.
//!
//! A bundle is at most [`MAX_BUNDLE_BYTES`]; its MIME types are names of the form `type/subtype`;
//! `text/plain` is present; a binary format (`image/png`, `image/jpeg`, …) is valid base64 and a
//! text format is text. Its bytes also count against the run's output limit (`pipes`), so a
//! cell's displays together are bounded by what its output may be.

use crate::event::{Bundle, Display};
use base64::Engine as _;
use serde_json::{Map, Value};

/// The largest bundle a guest may display, bytes of JSON (a figure's PNG in base64 included).
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;
/// The most formats one bundle may hold.
pub const MAX_FORMATS: usize = 32;
/// The largest metadata of one bundle, bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 64 << 10;
/// The longest display id.
pub const MAX_DISPLAY_ID_BYTES: usize = 256;
/// The longest MIME type name (RFC 6838: 127 characters a side).
const MAX_MIME_BYTES: usize = 255;

/// Formats whose values are base64 text.
const BINARY: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
];

/// A display the guest asked for, or why it is refused.
pub(crate) fn from_guest(
    data: &str,
    metadata: &str,
    display_id: Option<&str>,
    update: bool,
) -> Result<Display, String> {
    let bundle = bundle(data, metadata)?;
    let display_id = match display_id {
        Some(id) if id.is_empty() || id.len() > MAX_DISPLAY_ID_BYTES => {
            return Err(format!("a display id is 1 to {MAX_DISPLAY_ID_BYTES} bytes"))
        }
        Some(id) => Some(id.to_owned()),
        None if update => return Err("an update names the display id it replaces".into()),
        None => None,
    };
    Ok(Display {
        bundle,
        display_id,
        update,
    })
}

/// A cell's value as a bundle (its `repr` is `text/plain`), or `None` when the guest's bundle
/// is not one: the cell's value is then its `repr` alone.
pub(crate) fn cell_result(data: &str, metadata: &str) -> Option<Bundle> {
    bundle(data, metadata).ok()
}

/// A checked bundle from the guest's JSON text.
pub(crate) fn bundle(data: &str, metadata: &str) -> Result<Bundle, String> {
    if data.len() + metadata.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "{} bytes, more than a display may be ({MAX_BUNDLE_BYTES})",
            data.len() + metadata.len()
        ));
    }
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "its metadata is more than {MAX_METADATA_BYTES} bytes"
        ));
    }
    let data = object(data, "data")?;
    let metadata = object(metadata, "metadata")?;
    if data.len() > MAX_FORMATS {
        return Err(format!("more than {MAX_FORMATS} formats"));
    }
    for (mime, value) in &data {
        check_format(mime, value)?;
    }
    if !data.get("text/plain").is_some_and(Value::is_string) {
        return Err("no text/plain format".into());
    }
    Ok(Bundle { data, metadata })
}

fn object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("its {what} is not a JSON object")),
        Err(e) => Err(format!("its {what} is not JSON: {e}")),
    }
}

/// Whether `mime` names a format (`type/subtype`, RFC 6838's characters) and `value` is one.
fn check_format(mime: &str, value: &Value) -> Result<(), String> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let named = mime.len() <= MAX_MIME_BYTES
        && mime
            .split_once('/')
            .is_some_and(|(kind, sub)| token(kind) && token(sub));
    if !named {
        let shown: String = mime.chars().take(64).collect();
        return Err(format!("{shown:?} is not a MIME type"));
    }
    if is_json(mime) {
        return Ok(());
    }
    let Some(text) = value.as_str() else {
        return Err(format!("its {mime} is not text"));
    };
    if BINARY.contains(&mime)
        && base64::engine::general_purpose::STANDARD
            .decode(text)
            .is_err()
    {
        return Err(format!("its {mime} is not base64"));
    }
    Ok(())
}

/// Formats whose values are JSON rather than text.
pub fn is_json(mime: &str) -> bool {
    mime == "application/json" || mime.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_checked_before_it_is_shown() {
        let ok = from_guest(
            r#"{"text/plain":"df","text/html":"<table/>","image/png":"iVBORw0KGgo=","application/json":{"a":[1]}}"#,
            r#"{"image/png":{"width":2}}"#,
            Some("id1"),
            false,
        )
        .map_err(|e| e.to_string());
        let display = ok
            .as_ref()
            .map(|d| (d.bundle.plain(), d.display_id.as_deref()));
        assert_eq!(display, Ok(("df", Some("id1"))));
        let refused = |data: &str, metadata: &str| from_guest(data, metadata, None, false).err();
        assert!(refused(r#"{"text/html":"x"}"#, "{}").is_some_and(|e| e.contains("text/plain")));
        assert!(refused(r#"{"text/plain":"x","nope":"y"}"#, "{}")
            .is_some_and(|e| e.contains("not a MIME type")));
        assert!(refused(r#"{"text/plain":"x","image/png":"%%%"}"#, "{}")
            .is_some_and(|e| e.contains("base64")));
        assert!(refused(r#"{"text/plain":"x","text/html":3}"#, "{}")
            .is_some_and(|e| e.contains("not text")));
        assert!(refused("[1]", "{}").is_some_and(|e| e.contains("not a JSON object")));
        assert!(refused(r#"{"text/plain":"x""#, "{}").is_some_and(|e| e.contains("not JSON")));
        let big = format!(r#"{{"text/plain":"{}"}}"#, "x".repeat(MAX_BUNDLE_BYTES));
        assert!(refused(&big, "{}").is_some_and(|e| e.contains("more than a display")));
        assert!(from_guest(r#"{"text/plain":"x"}"#, "{}", None, true).is_err());
    }
}
