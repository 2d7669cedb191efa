//! Reading a shell request off its socket: signature checked by `jupyter-zmq-client`, content
//! parsed by `jupyter-protocol` — after filling in the fields Jupyter's clients leave out of a
//! `history_request` (`jupyter_client` sends only the arguments it was given, ipykernel
//! defaults the rest), which `jupyter-protocol` requires.

use jupyter_protocol::{Header, JupyterMessage, JupyterMessageContent};
use jupyter_zmq_client::{RawMessage, RouterRecvConnection, RuntimeError};
use serde_json::{json, Value};
use zeromq::SocketRecv;

/// The next message on the shell socket.
pub async fn read(shell: &mut RouterRecvConnection) -> Result<JupyterMessage, RuntimeError> {
    let raw = RawMessage::from_multipart(shell.socket.recv().await?, &shell.mac)?;
    if raw.jparts.len() < 4 {
        return Err(RuntimeError::InsufficientMessageParts(raw.jparts.len()));
    }
    let header: Header = serde_json::from_slice(&raw.jparts[0])?;
    let mut content: Value = serde_json::from_slice(&raw.jparts[3])?;
    if header.msg_type == "history_request" {
        with_defaults(&mut content);
    }
    let content = JupyterMessageContent::from_type_and_content(&header.msg_type, content).map_err(
        |source| RuntimeError::ParseError {
            msg_type: header.msg_type.clone(),
            source,
        },
    )?;
    Ok(JupyterMessage {
        zmq_identities: raw.zmq_identities,
        header,
        // An empty parent header is `{}`, which is no header.
        parent_header: serde_json::from_slice(&raw.jparts[1]).ok(),
        metadata: serde_json::from_slice(&raw.jparts[2])?,
        content,
        buffers: raw.jparts.get(4..).map(<[_]>::to_vec).unwrap_or_default(),
        channel: None,
    })
}

/// Why a message was dropped, in words.
pub fn describe(e: &RuntimeError) -> String {
    match e {
        RuntimeError::VerifyError(_) => {
            "bad signature: not signed with the connection file's key".into()
        }
        RuntimeError::MissingHmac => "no signature".into(),
        other => other.to_string(),
    }
}

/// ipykernel's defaults for what a `history_request` leaves out: not `output`, `raw`; the last
/// 10 cells for `tail`; every match for `search` (`n` 0), not `unique`; from the first cell to
/// the last for `range`.
fn with_defaults(content: &mut Value) {
    let Some(fields) = content.as_object_mut() else {
        return;
    };
    let defaults = match fields.get("hist_access_type").and_then(Value::as_str) {
        Some("tail") => json!({"n": 10}),
        Some("search") => json!({"n": 0, "unique": false}),
        Some("range") => json!({"start": 0, "stop": 0}),
        _ => json!({}),
    };
    let common = json!({"output": false, "raw": true});
    for (key, value) in defaults
        .as_object()
        .into_iter()
        .chain(common.as_object())
        .flatten()
    {
        match fields.get(key) {
            Some(Value::Null) | None => {
                fields.insert(key.clone(), value.clone());
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jupyter_protocol::HistoryRequest;

    fn parse(content: Value) -> HistoryRequest {
        let mut content = content;
        with_defaults(&mut content);
        match JupyterMessageContent::from_type_and_content("history_request", content) {
            Ok(JupyterMessageContent::HistoryRequest(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_history_request_with_only_what_jupyter_client_sends_parses() {
        assert!(matches!(
            parse(json!({"hist_access_type": "tail", "output": true, "raw": true})),
            HistoryRequest::Tail {
                n: 10,
                output: true,
                ..
            }
        ));
        assert!(matches!(
            parse(json!({"hist_access_type": "search", "pattern": "a*", "n": null})),
            HistoryRequest::Search {
                n: 0,
                unique: false,
                ..
            }
        ));
        assert!(matches!(
            parse(json!({"hist_access_type": "range", "session": 1, "start": 2})),
            HistoryRequest::Range {
                start: 2,
                stop: 0,
                ..
            }
        ));
    }
}
