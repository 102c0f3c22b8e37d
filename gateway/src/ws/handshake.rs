//! The HTTP side of a websocket upgrade.
//!
//! tungstenite parses the request and builds the `101` response; this module
//! decides what to answer: the upgrade, or a plain HTTP refusal (`503` when
//! the gateway is full or draining, `404` for other paths, `400` for a
//! request that is not a websocket upgrade) that the client can read.

use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::http::StatusCode;

/// Longest request head the gateway reads before giving up with 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Paths that serve the websocket endpoint (`/` is what the seed system used).
const WEBSOCKET_PATHS: [&str; 2] = ["/ws", "/"];

/// What to do with the bytes received so far on a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request head is not complete yet.
    Incomplete,
    /// Write `response`, then speak websocket; the request used `consumed`
    /// bytes and anything after them is already frame data.
    Upgrade { response: Vec<u8>, consumed: usize },
    /// Write `response` and close.
    Refuse {
        response: Vec<u8>,
        status: StatusCode,
        reason: &'static str,
    },
}

/// Why the gateway would not take a new websocket right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Open,
    Full,
    Draining,
}

/// Reads the request head at the start of `buf`.
pub fn respond(buf: &[u8], admission: Admission) -> Outcome {
    let (consumed, request) = match Request::try_parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() >= MAX_REQUEST_HEAD => {
            return refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            )
        }
        Ok(None) => return Outcome::Incomplete,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "malformed HTTP request"),
    };
    if !WEBSOCKET_PATHS.contains(&request.uri().path()) {
        return refuse(StatusCode::NOT_FOUND, "no websocket endpoint here; use /ws");
    }
    let response = match create_response(&request) {
        Ok(response) => response,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "not a websocket upgrade request"),
    };
    match admission {
        Admission::Full => return refuse(StatusCode::SERVICE_UNAVAILABLE, "gateway full"),
        Admission::Draining => return refuse(StatusCode::SERVICE_UNAVAILABLE, "gateway draining"),
        Admission::Open => {}
    }
    let mut bytes = Vec::with_capacity(160);
    if write_response(&mut bytes, &response).is_err() {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not build the response",
        );
    }
    Outcome::Upgrade {
        response: bytes,
        consumed,
    }
}

/// A complete HTTP response with a JSON error body, then the connection closes.
fn refuse(status: StatusCode, reason: &'static str) -> Outcome {
    let body = serde_json::json!({"error": reason, "status": status.as_u16()}).to_string();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        head.push_str("Retry-After: 1\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&body);
    Outcome::Refuse {
        response: head.into_bytes(),
        status,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str =
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn upgrades_with_the_rfc_accept_key() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81");
        match respond(&bytes, Admission::Open) {
            Outcome::Upgrade { response, consumed } => {
                let text = String::from_utf8(response).unwrap();
                assert!(text.starts_with("HTTP/1.1 101"));
                assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
                assert_eq!(consumed, UPGRADE.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_for_the_whole_head() {
        assert_eq!(
            respond(&UPGRADE.as_bytes()[..30], Admission::Open),
            Outcome::Incomplete
        );
    }

    fn status(bytes: &[u8], admission: Admission) -> u16 {
        match respond(bytes, admission) {
            Outcome::Refuse { status, .. } => status.as_u16(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(status(UPGRADE.as_bytes(), Admission::Full), 503);
        assert_eq!(status(UPGRADE.as_bytes(), Admission::Draining), 503);
        assert_eq!(
            status(UPGRADE.replace("/ws", "/nope").as_bytes(), Admission::Open),
            404
        );
        assert_eq!(
            status(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", Admission::Open),
            400
        );
        assert_eq!(status(b"\x16\x03\x01garbage\r\n\r\n", Admission::Open), 400);
        assert_eq!(status(&vec![b'a'; MAX_REQUEST_HEAD], Admission::Open), 431);
    }
}
