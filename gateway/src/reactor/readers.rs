//! Reader threads: where a ready connection's bytes are read, parsed,
//! answered and written.
//!
//! The reactor hands a connection over as [`Work`] when its socket is ready,
//! a reply for it arrived or a timer fired; a reader drives it until the
//! socket would block and hands it back as [`Finished`], with its buffers
//! returned to the pool if nothing is left half done. While a reader holds a
//! connection nothing else touches it, so no connection state is locked.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::Token;
use tracing::{debug, error, warn};

use super::conn::{Conn, Phase};
use super::handler;
use super::session::Session;
use super::Shared;
use crate::backend::{ClientId, Reply};
use crate::ws::codec::{self, Incoming};
use crate::ws::handshake::{self, Admission, Outcome};

/// Reads per hand-over before a busy connection yields to the others.
const READS_PER_TURN: usize = 16;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8192;

/// Something the reactor asks of a connection. One byte, so that a busy
/// slot is no bigger than an idle one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Send a websocket ping (the connection has been quiet).
    Ping,
    /// Send a close frame and wait briefly for the client's.
    Close(CloseKind),
}

/// Why the gateway closes a healthy connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// No message for `--idle-timeout` and no job running.
    IdleTimeout,
    /// The gateway is draining: reconnect (to another gateway).
    Restarting,
}

impl CloseKind {
    fn code(self) -> u16 {
        match self {
            CloseKind::IdleTimeout => 1001,
            CloseKind::Restarting => 1012,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            CloseKind::IdleTimeout => "idle timeout",
            CloseKind::Restarting => "gateway restarting; reconnect",
        }
    }
}

/// A connection handed to a reader, with everything that happened to it
/// since it was last handed back.
pub struct Work {
    pub token: Token,
    pub conn: Conn,
    pub readable: bool,
    pub replies: Vec<Reply>,
    pub command: Option<Command>,
}

/// What the reader decided about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it; `more` means it stopped reading before the socket was dry.
    Keep { more: bool },
    /// Close it, for the reason given (a metric label).
    Drop(&'static str),
}

pub struct Finished {
    pub token: Token,
    pub conn: Conn,
    pub verdict: Verdict,
}

/// What comes back from a reader.
pub enum Returned {
    Finished(Finished),
    /// The reader panicked while holding the connection (a bug, never the
    /// client's input by design): the connection is gone, its slot must be
    /// freed, and the reader carries on with the next one.
    Lost {
        token: Token,
        client: ClientId,
        was_open: bool,
    },
}

pub fn spawn(
    count: usize,
    shared: Arc<Shared>,
    work: Receiver<Work>,
    finished: Sender<Returned>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..count)
        .map(|i| {
            let (shared, work, finished, waker) = (
                shared.clone(),
                work.clone(),
                finished.clone(),
                waker.clone(),
            );
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || {
                    for job in work.iter() {
                        let (token, client) = (job.token, job.conn.id);
                        let was_open = job.conn.phase != Phase::Handshaking;
                        let returned =
                            match catch_unwind(AssertUnwindSafe(|| process(&shared, job))) {
                                Ok(done) => Returned::Finished(done),
                                Err(_) => {
                                    error!(client, "reader panicked; connection dropped");
                                    Returned::Lost {
                                        token,
                                        client,
                                        was_open,
                                    }
                                }
                            };
                        if finished.send(returned).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                })
        })
        .collect()
}

/// Drives one connection as far as it can go without blocking.
pub fn process(shared: &Shared, work: Work) -> Finished {
    let Work {
        token,
        mut conn,
        readable,
        replies,
        command,
    } = work;
    let mut session = conn
        .session
        .take()
        .unwrap_or_else(|| shared.sessions.checkout());
    let now = shared.clock.now();

    let mut verdict = drive(
        shared,
        &mut conn,
        &mut session,
        readable,
        replies,
        command,
        now,
    );
    if let Err(reason) = flush(&conn, &mut session) {
        verdict = Verdict::Drop(reason);
    }
    if let Verdict::Drop(reason) = verdict {
        // Whatever is still queued (a close frame, a refusal) gets one try.
        let _ = (&conn.stream).write(&session.outbound[session.written..]);
        let _ = conn.stream.shutdown(Shutdown::Write);
        debug!(client = conn.id, reason, "connection closing");
    }
    if matches!(verdict, Verdict::Drop(_)) || session.is_drained() {
        shared.sessions.give_back(session);
    } else {
        conn.session = Some(session);
    }
    Finished {
        token,
        conn,
        verdict,
    }
}

fn drive(
    shared: &Shared,
    conn: &mut Conn,
    session: &mut Session,
    readable: bool,
    replies: Vec<Reply>,
    command: Option<Command>,
    now: u32,
) -> Verdict {
    match command {
        Some(Command::Ping) if conn.phase == Phase::Open => {
            codec::ping(&mut session.outbound);
            conn.ping_outstanding = true;
            conn.ping_sent = now;
        }
        Some(Command::Close(kind)) if conn.phase == Phase::Open => {
            codec::close(&mut session.outbound, kind.code(), kind.reason());
            conn.phase = Phase::Closing;
            conn.ping_sent = now;
        }
        _ => {}
    }
    for reply in replies {
        if conn.phase == Phase::Open {
            handler::deliver(shared, conn, &mut session.outbound, reply);
        }
    }
    let mut more = false;
    if readable {
        match read(shared, conn, session, now) {
            Ok(stopped_early) => more = stopped_early,
            Err(reason) => return Verdict::Drop(reason),
        }
    }
    if session.pending_output() > shared.limits.max_outbound_bytes {
        warn!(
            client = conn.id,
            queued = session.pending_output(),
            "client too slow, closing"
        );
        session.outbound.truncate(session.written);
        codec::close(&mut session.outbound, 1008, "too slow to read results");
        return Verdict::Drop("slow_consumer");
    }
    Verdict::Keep { more }
}

/// Reads until the socket would block (Ok(false)) or the turn is used up
/// (Ok(true)), handling every complete message on the way.
fn read(
    shared: &Shared,
    conn: &mut Conn,
    session: &mut Session,
    now: u32,
) -> Result<bool, &'static str> {
    for _ in 0..READS_PER_TURN {
        let start = session.inbound.len();
        session.inbound.resize(start + READ_CHUNK, 0);
        let result = (&conn.stream).read(&mut session.inbound[start..]);
        session
            .inbound
            .truncate(start + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => {
                return Err(match conn.phase {
                    Phase::Handshaking => "handshake_eof",
                    Phase::Open => "eof",
                    Phase::Closing => "closed",
                })
            }
            Ok(_) => {
                conn.last_seen = now;
                conn.ping_outstanding = false;
                consume(shared, conn, session, now)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err("io_error"),
        }
    }
    Ok(true)
}

/// Handles everything complete in the inbound buffer.
fn consume(
    shared: &Shared,
    conn: &mut Conn,
    session: &mut Session,
    now: u32,
) -> Result<(), &'static str> {
    if conn.phase == Phase::Handshaking {
        upgrade(shared, conn, session)?;
        if conn.phase == Phase::Handshaking {
            return Ok(());
        }
    }
    let max = shared.limits.max_message_bytes;
    loop {
        let decoded = codec::decode(
            &mut session.inbound,
            &mut session.consumed,
            &mut session.fragments,
            max,
        );
        let message = match decoded {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(violation) => {
                warn!(
                    client = conn.id,
                    reason = violation.reason(),
                    "protocol violation, closing"
                );
                codec::close(
                    &mut session.outbound,
                    violation.close_code(),
                    violation.reason(),
                );
                return Err(match violation.close_code() {
                    1009 => "message_too_big",
                    1007 => "invalid_utf8",
                    _ => "protocol_error",
                });
            }
        };
        if conn.phase == Phase::Closing {
            // After our close frame only the client's close frame matters.
            if let Incoming::Close(_) = message {
                return Err("closed");
            }
            continue;
        }
        match message {
            Incoming::Text(text) => {
                conn.last_active = now;
                shared.metrics.messages_received.inc();
                handler::on_text(shared, conn, &mut session.outbound, &text);
            }
            Incoming::Binary(len) => {
                conn.last_active = now;
                shared.metrics.messages_received.inc();
                handler::on_binary(shared, conn, &mut session.outbound, len);
            }
            Incoming::Ping(payload) => codec::pong(&mut session.outbound, &payload),
            Incoming::Pong => {}
            Incoming::Close(frame) => {
                let code = frame.as_ref().map_or(1000, |(code, _)| *code);
                debug!(client = conn.id, code, "client closed");
                codec::close(&mut session.outbound, code, "");
                return Err("client_close");
            }
        }
    }
    session.compact_inbound();
    Ok(())
}

/// Answers the upgrade request once it is complete.
fn upgrade(shared: &Shared, conn: &mut Conn, session: &mut Session) -> Result<(), &'static str> {
    let status = &shared.status;
    let admission = if status.is_draining() {
        Admission::Draining
    } else if status.reserve_connection() {
        Admission::Open
    } else {
        Admission::Full
    };
    let outcome = handshake::respond(&session.inbound[session.consumed..], admission);
    if admission == Admission::Open && !matches!(outcome, Outcome::Upgrade { .. }) {
        status.release_connection();
    }
    match outcome {
        Outcome::Incomplete => Ok(()),
        Outcome::Upgrade { response, consumed } => {
            session.outbound.extend_from_slice(&response);
            session.consumed += consumed;
            conn.phase = Phase::Open;
            shared.metrics.connections_open.inc();
            debug!(client = conn.id, "websocket open");
            Ok(())
        }
        Outcome::Refuse {
            response,
            status,
            reason,
        } => {
            session.outbound.extend_from_slice(&response);
            session.consumed = session.inbound.len();
            let label = match status.as_u16() {
                503 if admission == Admission::Draining => "draining",
                503 => "over_capacity",
                404 => "not_found",
                431 => "head_too_large",
                _ => "bad_handshake",
            };
            shared.metrics.refused(label);
            warn!(
                client = conn.id,
                status = status.as_u16(),
                reason,
                "handshake refused"
            );
            Err("handshake_refused")
        }
    }
}

/// Writes queued output until done or the socket would block.
fn flush(conn: &Conn, session: &mut Session) -> Result<(), &'static str> {
    while session.written < session.outbound.len() {
        match (&conn.stream).write(&session.outbound[session.written..]) {
            Ok(0) => return Err("io_error"),
            Ok(n) => session.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err("io_error"),
        }
    }
    session.compact_outbound();
    Ok(())
}
