//! Websocket framing for the client side, built on tungstenite's `Frame` and
//! `FrameHeader`: encode masked client frames (RFC 6455 5.3 requires every
//! client frame to be masked) and find whole server frames in a read buffer
//! without copying them.

use std::io::Cursor;
use std::ops::Range;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::Bytes;

/// Largest server frame accepted; anything bigger is a protocol failure.
pub const MAX_FRAME: u64 = 16 << 20;

/// Append one masked, final client frame to `out`.
pub fn encode(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    Frame::from_payload(header, Bytes::copy_from_slice(payload))
        .format(out)
        .expect("writing into a Vec cannot fail");
}

/// Append a masked text frame.
pub fn text(payload: &str, mask: [u8; 4], out: &mut Vec<u8>) {
    encode(OpCode::Data(Data::Text), payload.as_bytes(), mask, out);
}

/// Append a masked pong answering a ping with `payload`.
pub fn pong(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    encode(OpCode::Control(Control::Pong), payload, mask, out);
}

/// Append a masked close frame with `code`.
pub fn close(code: CloseCode, mask: [u8; 4], out: &mut Vec<u8>) {
    encode(
        OpCode::Control(Control::Close),
        &u16::from(code).to_be_bytes(),
        mask,
        out,
    );
}

/// A complete frame found in a buffer.
#[derive(Debug)]
pub struct Found {
    /// The parsed header.
    pub header: FrameHeader,
    /// Where the (already unmasked) payload sits in the buffer.
    pub payload: Range<usize>,
}

/// Look for one complete frame at the start of `buf`. `Ok(None)` means more
/// bytes are needed. A masked server frame is unmasked in place.
pub fn next_frame(buf: &mut [u8]) -> Result<Option<Found>, String> {
    let mut cursor = Cursor::new(&*buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("bad frame header: {e}")),
    };
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes exceeds {MAX_FRAME}"));
    }
    let start = cursor.position() as usize;
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    if let Some(mask) = header.mask {
        for (i, b) in buf[start..end].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
    Ok(Some(Found {
        header,
        payload: start..end,
    }))
}

/// The close code carried by a close frame payload, if any.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_text_round_trips() {
        let mut out = Vec::new();
        text("{\"type\":\"ping\"}", [1, 2, 3, 4], &mut out);
        assert_eq!(out[1] & 0x80, 0x80, "client frames are masked");
        let found = next_frame(&mut out).unwrap().unwrap();
        assert_eq!(&out[found.payload.clone()], b"{\"type\":\"ping\"}");
        assert_eq!(found.header.opcode, OpCode::Data(Data::Text));
    }

    #[test]
    fn partial_frame_needs_more() {
        let mut out = Vec::new();
        text("hello world", [9, 9, 9, 9], &mut out);
        let mut part = out[..out.len() - 1].to_vec();
        assert!(next_frame(&mut part).unwrap().is_none());
        assert!(next_frame(&mut [0x81]).unwrap().is_none());
    }

    #[test]
    fn close_code_is_read() {
        let mut out = Vec::new();
        close(CloseCode::Restart, [0, 0, 0, 0], &mut out);
        let found = next_frame(&mut out).unwrap().unwrap();
        assert_eq!(close_code(&out[found.payload]), Some(1012));
    }
}
