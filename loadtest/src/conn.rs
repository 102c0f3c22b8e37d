//! One client connection's state machine: TCP connect, websocket upgrade
//! (request written by tungstenite's `generate_request`, response parsed by
//! tungstenite/httparse), then masked frames out and server frames in.
//! An idle open connection keeps only its socket and a few words: the read
//! buffer is shared per event loop (`Shared::readbuf`); per-connection
//! buffers exist only while a handshake or a frame is half done.
//!
//! ```text
//! Waiting -> Connecting -(writable, no error)-> Handshaking -(101 + accept)-> Open
//!     ^          |                                   |                         |
//!     +----------+---- Failed(reason) ---------------+       Dropped(reason) --+
//!                      (reconnect timer, if enabled)
//! ```

use crate::rng::Rng;
use crate::stats::{record_us, Counters};
use crate::wire;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use serde::Deserialize;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;
use tungstenite::handshake::client::Response;
use tungstenite::handshake::machine::TryParse;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// Largest handshake response accepted.
const MAX_RESPONSE: usize = 16 * 1024;
/// Largest reassembled message accepted.
const MAX_MESSAGE: usize = 16 << 20;
/// Most unanswered messages remembered per connection.
const MAX_INFLIGHT: usize = 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No socket: not started yet, or closed and maybe waiting to reconnect.
    Waiting,
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent (or being sent), waiting for the 101.
    Handshaking,
    /// Websocket open.
    Open,
}

/// What an event did to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing that changes the phase.
    Continue,
    /// The handshake completed.
    Opened,
    /// The attempt failed before opening.
    Failed(String),
    /// An open connection was lost.
    Dropped(String),
}

/// State shared by all connections of one event loop.
pub struct Shared {
    pub counters: Counters,
    /// Round trips: whole run, and since the last tick.
    pub rtt: Histogram<u64>,
    pub rtt_tick: Histogram<u64>,
    pub rng: Rng,
    /// The one read buffer of the event loop.
    pub readbuf: Vec<u8>,
    /// Scratch space to encode outgoing frames.
    pub scratch: Vec<u8>,
}

/// One client connection.
pub struct Conn {
    pub phase: Phase,
    /// Bumped whenever the socket changes so stale timers are ignored.
    pub gen: u32,
    pub stream: Option<TcpStream>,
    /// Index of the target this attempt uses.
    pub target: u32,
    /// When the current attempt started.
    pub started: Instant,
    /// Expected `Sec-WebSocket-Accept` while handshaking.
    accept: Option<Box<str>>,
    /// Unparsed input (partial response or frame); empty when idle.
    rbuf: Vec<u8>,
    /// Unwritten output; empty when idle.
    wbuf: Vec<u8>,
    /// Reassembly of a fragmented message.
    frag: Option<Vec<u8>>,
    /// Sent message ids waiting for their answer, with send times.
    pub inflight: VecDeque<(u64, Instant)>,
    pub seq: u64,
    /// Consecutive failed attempts (backoff exponent).
    pub attempt: u32,
    /// The first attempt has opened or failed.
    pub resolved: bool,
    /// This connection sends messages.
    pub active: bool,
    /// A read stopped at its bound before `WouldBlock`: read again soon
    /// (edge-triggered readiness will not repeat itself).
    pub again: bool,
}

/// Short, stable reason names for I/O errors.
pub fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        ConnectionAborted => "aborted".into(),
        BrokenPipe => "broken_pipe".into(),
        TimedOut => "timeout".into(),
        AddrNotAvailable => "addr_not_available".into(),
        AddrInUse => "addr_in_use".into(),
        _ => match e.raw_os_error() {
            Some(24) => "emfile".into(),
            Some(23) => "enfile".into(),
            Some(n) => format!("os_error_{n}"),
            None => format!("{:?}", e.kind()).to_lowercase(),
        },
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl Conn {
    /// A connection slot with no socket yet.
    pub fn new(active: bool, target: u32) -> Conn {
        Conn {
            phase: Phase::Waiting,
            gen: 0,
            stream: None,
            target,
            started: Instant::now(),
            accept: None,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            frag: None,
            inflight: VecDeque::new(),
            seq: 0,
            attempt: 0,
            resolved: false,
            active,
            again: false,
        }
    }

    /// Begin an attempt on a connecting socket with the upgrade request to
    /// send once connected.
    pub fn begin(&mut self, stream: TcpStream, request: Vec<u8>, accept: String, now: Instant) {
        self.stream = Some(stream);
        self.phase = Phase::Connecting;
        self.started = now;
        self.wbuf = request;
        self.accept = Some(accept.into_boxed_str());
    }

    /// Forget the socket and every buffer (the caller deregisters first).
    pub fn reset(&mut self) -> Option<TcpStream> {
        self.phase = Phase::Waiting;
        self.gen = self.gen.wrapping_add(1);
        self.accept = None;
        self.rbuf = Vec::new();
        self.wbuf = Vec::new();
        self.frag = None;
        self.inflight.clear();
        self.stream.take()
    }

    fn lost(&self, reason: &str) -> Outcome {
        match self.phase {
            Phase::Open => Outcome::Dropped(reason.to_string()),
            _ => Outcome::Failed(reason.to_string()),
        }
    }

    /// Did the non-blocking connect finish? `None` while still in progress.
    fn check_connected(&mut self) -> Option<Outcome> {
        let stream = self.stream.as_ref()?;
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Outcome::Failed(io_reason(&e))),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {
                self.phase = Phase::Handshaking;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            Err(e) => Some(Outcome::Failed(io_reason(&e))),
        }
    }

    /// Write as much pending output as the socket takes.
    fn flush(&mut self, sh: &mut Shared) -> Outcome {
        let Some(stream) = self.stream.as_mut() else {
            return Outcome::Continue;
        };
        let mut done = 0;
        while done < self.wbuf.len() {
            match stream.write(&self.wbuf[done..]) {
                Ok(0) => return self.lost("write_zero"),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lost(&io_reason(&e)),
            }
        }
        sh.counters.bytes_out += done as u64;
        if done == self.wbuf.len() {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.drain(..done);
        }
        Outcome::Continue
    }

    /// Queue bytes and try to write them now.
    fn send(&mut self, bytes: &[u8], sh: &mut Shared) -> Outcome {
        self.wbuf.extend_from_slice(bytes);
        if self.phase == Phase::Connecting {
            return Outcome::Continue;
        }
        self.flush(sh)
    }

    /// The socket is writable: finish connecting, send the request, flush.
    pub fn on_writable(&mut self, sh: &mut Shared) -> Outcome {
        if self.phase == Phase::Connecting {
            if let Some(out) = self.check_connected() {
                return out;
            }
            if self.phase == Phase::Connecting {
                return Outcome::Continue;
            }
        }
        self.flush(sh)
    }

    /// The socket is readable (or closed, or in error): drain it.
    pub fn on_readable(&mut self, sh: &mut Shared, now: Instant) -> Outcome {
        if self.phase == Phase::Connecting {
            if let Some(out) = self.check_connected() {
                return out;
            }
            if self.phase == Phase::Connecting {
                return Outcome::Continue;
            }
            let out = self.flush(sh);
            if out != Outcome::Continue {
                return out;
            }
        }
        let mut buf = std::mem::take(&mut sh.readbuf);
        let out = self.drain(&mut buf, sh, now);
        sh.readbuf = buf;
        out
    }

    fn drain(&mut self, buf: &mut [u8], sh: &mut Shared, now: Instant) -> Outcome {
        let mut result = Outcome::Continue;
        // Bounded: at most 64 reads per event, then yield to other sockets;
        // `again` asks the engine to come back without a new event.
        self.again = false;
        for _ in 0..64 {
            let Some(stream) = self.stream.as_mut() else {
                return Outcome::Continue;
            };
            let n = match stream.read(buf) {
                Ok(0) => {
                    return self.lost(if self.phase == Phase::Open {
                        "eof"
                    } else {
                        "eof_in_handshake"
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return result,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.lost(&io_reason(&e)),
            };
            sh.counters.bytes_in += n as u64;
            let out = self.input(&mut buf[..n], sh, now);
            match out {
                Outcome::Continue => {}
                Outcome::Opened => result = Outcome::Opened,
                other => return other,
            }
        }
        self.again = true;
        result
    }

    /// Feed freshly read bytes through the handshake and frame parsers.
    fn input(&mut self, data: &mut [u8], sh: &mut Shared, now: Instant) -> Outcome {
        if self.phase == Phase::Handshaking {
            self.rbuf.extend_from_slice(data);
            let parsed = match Response::try_parse(&self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) if self.rbuf.len() > MAX_RESPONSE => {
                    return Outcome::Failed("bad_http".into())
                }
                Ok(None) => return Outcome::Continue,
                Err(_) => return Outcome::Failed("bad_http".into()),
            };
            let (used, response) = parsed;
            if response.status().as_u16() != 101 {
                return Outcome::Failed(format!("http_{}", response.status().as_u16()));
            }
            let accept = response
                .headers()
                .get("Sec-WebSocket-Accept")
                .and_then(|v| v.to_str().ok());
            if accept != self.accept.as_deref() {
                return Outcome::Failed("bad_accept".into());
            }
            self.accept = None;
            self.phase = Phase::Open;
            let mut tail = self.rbuf.split_off(used);
            self.rbuf = Vec::new();
            if !tail.is_empty() {
                if let out @ (Outcome::Dropped(_) | Outcome::Failed(_)) =
                    self.frames(&mut tail, sh, now)
                {
                    return out;
                }
            }
            return Outcome::Opened;
        }
        if self.rbuf.is_empty() {
            self.frames(data, sh, now)
        } else {
            let mut joined = std::mem::take(&mut self.rbuf);
            joined.extend_from_slice(data);
            self.frames(&mut joined, sh, now)
        }
    }

    /// Handle every whole frame in `data`; keep a trailing partial frame.
    fn frames(&mut self, data: &mut [u8], sh: &mut Shared, now: Instant) -> Outcome {
        let mut pos = 0;
        while pos < data.len() {
            let found = match wire::next_frame(&mut data[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return self.protocol_error(sh),
            };
            let start = pos + found.payload.start;
            let end = pos + found.payload.end;
            pos = end;
            let payload = &data[start..end];
            let fin = found.header.is_final;
            match found.header.opcode {
                OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) if fin => {
                    if self.frag.is_some() {
                        return self.protocol_error(sh);
                    }
                    self.message(payload, sh, now);
                }
                OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) => {
                    if self.frag.is_some() {
                        return self.protocol_error(sh);
                    }
                    self.frag = Some(payload.to_vec());
                }
                OpCode::Data(Data::Continue) => {
                    let Some(mut f) = self.frag.take() else {
                        return self.protocol_error(sh);
                    };
                    f.extend_from_slice(payload);
                    if f.len() > MAX_MESSAGE {
                        return self.protocol_error(sh);
                    }
                    if fin {
                        self.message(&f, sh, now);
                    } else {
                        self.frag = Some(f);
                    }
                }
                OpCode::Control(Control::Ping) => {
                    sh.counters.server_pings += 1;
                    let mut frame = std::mem::take(&mut sh.scratch);
                    frame.clear();
                    wire::pong(payload, sh.rng.mask(), &mut frame);
                    let out = self.send(&frame, sh);
                    sh.scratch = frame;
                    if out != Outcome::Continue {
                        return out;
                    }
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    let code = wire::close_code(payload).unwrap_or(1005);
                    let mut frame = Vec::new();
                    wire::close(CloseCode::from(code.max(1000)), sh.rng.mask(), &mut frame);
                    let _ = self.send(&frame, sh);
                    return Outcome::Dropped(format!("close_{code}"));
                }
                _ => return self.protocol_error(sh),
            }
        }
        if pos < data.len() {
            self.rbuf = data[pos..].to_vec();
        }
        Outcome::Continue
    }

    fn protocol_error(&mut self, sh: &mut Shared) -> Outcome {
        let mut frame = Vec::new();
        wire::close(CloseCode::Protocol, sh.rng.mask(), &mut frame);
        let _ = self.send(&frame, sh);
        Outcome::Dropped("protocol_error".into())
    }

    /// One whole text message from the server.
    fn message(&mut self, payload: &[u8], sh: &mut Shared, now: Instant) {
        let Ok(reply) = serde_json::from_slice::<Reply>(payload) else {
            sh.counters.other += 1;
            return;
        };
        let id = reply.id.as_deref().and_then(|s| s.parse::<u64>().ok());
        match reply.kind.as_str() {
            "pong" => {
                sh.counters.pongs += 1;
                self.answered(id, sh, now);
            }
            "accepted" => sh.counters.accepted += 1,
            "result" => {
                sh.counters.results += 1;
                self.answered(id, sh, now);
            }
            "error" => {
                let code = reply.code.unwrap_or_else(|| "unknown".into());
                *sh.counters.errors.entry(code).or_default() += 1;
                if let Some(id) = id {
                    self.inflight.retain(|&(i, _)| i != id);
                }
            }
            _ => sh.counters.other += 1,
        }
    }

    fn answered(&mut self, id: Option<u64>, sh: &mut Shared, now: Instant) {
        let Some(id) = id else { return };
        if let Some(pos) = self.inflight.iter().position(|&(i, _)| i == id) {
            let (_, sent) = self.inflight.remove(pos).expect("position is valid");
            let us = now.saturating_duration_since(sent).as_micros() as u64;
            record_us(&mut sh.rtt, us);
            record_us(&mut sh.rtt_tick, us);
        }
    }

    /// Send one application message (`text` is the JSON with `{id}` filled in).
    pub fn send_message(&mut self, text: &str, id: u64, sh: &mut Shared, now: Instant) -> Outcome {
        let mut frame = std::mem::take(&mut sh.scratch);
        frame.clear();
        wire::text(text, sh.rng.mask(), &mut frame);
        if self.inflight.len() >= MAX_INFLIGHT {
            self.inflight.pop_front();
        }
        self.inflight.push_back((id, now));
        sh.counters.sent += 1;
        let out = self.send(&frame, sh);
        sh.scratch = frame;
        out
    }
}
