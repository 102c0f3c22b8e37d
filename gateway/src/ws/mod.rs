//! The websocket wire format, on buffers the connection owns only while it
//! is busy.
//!
//! tungstenite's `WebSocket` keeps its own read buffer (128 KiB by default,
//! zero-filled) for the life of the connection, which is exactly the cost an
//! idle connection must not pay. So the gateway uses tungstenite's parts
//! (request parsing and response building for the handshake, `FrameHeader`
//! and `CloseCode` for frames) on buffers it checks out of a pool, and keeps
//! between reads only what RFC 6455 says must survive: an incomplete frame
//! and an incomplete fragmented message.

pub mod codec;
pub mod handshake;
