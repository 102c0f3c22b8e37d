//! Decoding client frames into messages and encoding server frames.
//!
//! The decoder enforces the server side of RFC 6455: client frames are
//! masked, reserved bits and opcodes are unused, control frames are short
//! and unfragmented, continuation frames follow a started message, text is
//! UTF-8, and nothing exceeds the configured size. Each violation maps to
//! the close code the RFC names for it.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// Binary messages carry nothing in this protocol; only their size is kept.
    Binary(usize),
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: its code and reason, if it sent one.
    Close(Option<(u16, String)>),
}

/// Why the client's bytes cannot be accepted; the connection is closed with
/// [`Violation::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Broken framing: close 1002.
    Protocol(&'static str),
    /// A frame or message over the size limit: close 1009.
    TooBig,
    /// Text that is not UTF-8: close 1007.
    InvalidUtf8,
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Protocol(_) => CloseCode::Protocol.into(),
            Violation::TooBig => CloseCode::Size.into(),
            Violation::InvalidUtf8 => CloseCode::Invalid.into(),
        }
    }

    /// Short text for the close frame, the log line and the metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::TooBig => "message too big",
            Violation::InvalidUtf8 => "invalid utf-8",
        }
    }
}

/// A fragmented message being put together across frames (and reads).
#[derive(Debug, Default)]
pub struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// Takes the next complete message from `buf[*pos..]`, advancing `pos` past
/// the frames it used. `Ok(None)` means more bytes are needed.
pub fn decode(
    buf: &mut [u8],
    pos: &mut usize,
    fragments: &mut Option<Fragments>,
    max_message: usize,
) -> Result<Option<Incoming>, Violation> {
    loop {
        let mut cursor = Cursor::new(&buf[*pos..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(Violation::Protocol("malformed frame header")),
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::Protocol("reserved bits set"));
        }
        let Some(mask) = header.mask else {
            return Err(Violation::Protocol("client frames must be masked"));
        };
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control && (len > 125 || !header.is_final) {
            return Err(Violation::Protocol("bad control frame"));
        }
        let buffered = fragments.as_ref().map_or(0, |f| f.data.len()) as u64;
        if len > max_message as u64 || (!is_control && buffered + len > max_message as u64) {
            return Err(Violation::TooBig);
        }
        let start = *pos + cursor.position() as usize;
        let end = start + len as usize;
        if end > buf.len() {
            return Ok(None);
        }
        *pos = end;
        let payload = &mut buf[start..end];
        unmask(payload, mask);

        match header.opcode {
            OpCode::Control(Control::Ping) => return Ok(Some(Incoming::Ping(payload.to_vec()))),
            OpCode::Control(Control::Pong) => return Ok(Some(Incoming::Pong)),
            OpCode::Control(Control::Close) => return close_frame(payload).map(Some),
            OpCode::Control(Control::Reserved(_)) => {
                return Err(Violation::Protocol("reserved control opcode"))
            }
            OpCode::Data(Data::Reserved(_)) => {
                return Err(Violation::Protocol("reserved data opcode"))
            }
            OpCode::Data(Data::Continue) => {
                let Some(partial) = fragments.as_mut() else {
                    return Err(Violation::Protocol("continuation without a message"));
                };
                partial.data.extend_from_slice(payload);
                if header.is_final {
                    let done = fragments.take().unwrap_or_default();
                    return message(done.text, done.data).map(Some);
                }
            }
            OpCode::Data(kind) => {
                if fragments.is_some() {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
                let text = kind == Data::Text;
                if header.is_final {
                    return message(text, payload.to_vec()).map(Some);
                }
                *fragments = Some(Fragments {
                    text,
                    data: payload.to_vec(),
                });
            }
        }
    }
}

fn message(text: bool, data: Vec<u8>) -> Result<Incoming, Violation> {
    if !text {
        return Ok(Incoming::Binary(data.len()));
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| Violation::InvalidUtf8)
}

fn close_frame(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(Violation::Protocol("one-byte close payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(Violation::Protocol("close code not allowed"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Incoming::Close(Some((code, reason.to_owned()))))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a text frame.
pub fn text(out: &mut Vec<u8>, text: &str) {
    encode(out, OpCode::Data(Data::Text), text.as_bytes());
}

/// A server ping frame with an empty payload, as written on the wire.
pub const EMPTY_PING: [u8; 2] = [0x89, 0x00];

/// Appends a ping frame with an empty payload.
pub fn ping(out: &mut Vec<u8>) {
    encode(out, OpCode::Control(Control::Ping), &[]);
}

/// Appends a pong frame echoing the ping's payload.
pub fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, OpCode::Control(Control::Pong), payload);
}

/// Appends a close frame; the reason is cut to fit a control frame.
pub fn close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(out, OpCode::Control(Control::Close), &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(mut bytes: Vec<u8>) -> Result<Vec<Incoming>, Violation> {
        let (mut pos, mut frags, mut out) = (0, None, vec![]);
        while let Some(msg) = decode(&mut bytes, &mut pos, &mut frags, 1000)? {
            out.push(msg);
        }
        Ok(out)
    }

    #[test]
    fn text_ping_pong_close() {
        let mut bytes = frame(true, 1, b"hello");
        bytes.extend(frame(true, 9, b"p"));
        bytes.extend(frame(true, 10, b""));
        bytes.extend(frame(true, 8, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            decode_all(bytes).unwrap(),
            vec![
                Incoming::Text("hello".into()),
                Incoming::Ping(b"p".to_vec()),
                Incoming::Pong,
                Incoming::Close(Some((1000, "ok".into())))
            ]
        );
    }

    #[test]
    fn fragments_with_interleaved_control_frame() {
        let mut bytes = frame(false, 1, b"hel");
        bytes.extend(frame(true, 9, b""));
        bytes.extend(frame(false, 0, b"l"));
        bytes.extend(frame(true, 0, b"o"));
        assert_eq!(
            decode_all(bytes).unwrap(),
            vec![Incoming::Ping(vec![]), Incoming::Text("hello".into())]
        );
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let bytes = frame(true, 1, b"hello");
        let mut head = bytes[..4].to_vec();
        let (mut pos, mut frags) = (0, None);
        assert_eq!(decode(&mut head, &mut pos, &mut frags, 1000), Ok(None));
        assert_eq!(pos, 0);
    }

    #[test]
    fn violations_map_to_close_codes() {
        let unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(decode_all(unmasked).unwrap_err().close_code(), 1002);
        assert_eq!(
            decode_all(frame(true, 1, &[0xff, 0xfe]))
                .unwrap_err()
                .close_code(),
            1007
        );
        assert_eq!(
            decode_all(frame(true, 1, &[b'a'; 1001]))
                .unwrap_err()
                .close_code(),
            1009
        );
        assert_eq!(
            decode_all(frame(true, 0, b"x")).unwrap_err().close_code(),
            1002
        );
        assert_eq!(
            decode_all(frame(false, 9, b"")).unwrap_err().close_code(),
            1002
        );
        assert_eq!(
            decode_all(frame(true, 3, b"")).unwrap_err().close_code(),
            1002
        );
        assert_eq!(
            decode_all(frame(true, 8, &[0x03, 0xed]))
                .unwrap_err()
                .close_code(),
            1002
        );
        let mut two_starts = frame(false, 1, b"a");
        two_starts.extend(frame(true, 1, b"b"));
        assert_eq!(decode_all(two_starts).unwrap_err().close_code(), 1002);
        let mut too_long = frame(false, 1, &[b'a'; 600]);
        too_long.extend(frame(true, 0, &[b'a'; 600]));
        assert_eq!(decode_all(too_long).unwrap_err().close_code(), 1009);
    }

    #[test]
    fn binary_is_reported_by_size() {
        assert_eq!(
            decode_all(frame(true, 2, &[0, 1, 2])).unwrap(),
            vec![Incoming::Binary(3)]
        );
    }

    #[test]
    fn encodes_server_frames_unmasked() {
        let mut out = vec![];
        text(&mut out, "hi");
        assert_eq!(out, [0x81, 0x02, b'h', b'i']);
        out.clear();
        ping(&mut out);
        assert_eq!(out, EMPTY_PING);
        out.clear();
        close(&mut out, 1012, "bye");
        assert_eq!(out, [0x88, 0x05, 0x03, 0xf4, b'b', b'y', b'e']);
    }
}
