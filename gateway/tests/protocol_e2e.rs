//! The client protocol end to end: a real gateway process (echo backend)
//! and real websocket clients over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;

use cluster_tests::gateway_proc::*;
use cluster_tests::support::wait_for;
use serde_json::json;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

#[test]
fn ping_message_is_answered_with_pong() {
    let gw = Gateway::start(GATEWAY, &[]);
    let mut c = gw.connect();
    send_json(&mut c, &json!({"type": "ping", "id": "p1"}));
    assert_eq!(recv_json(&mut c), json!({"type": "pong", "id": "p1"}));
}

#[test]
fn crawl_in_both_forms_is_accepted_then_answered() {
    let gw = Gateway::start(GATEWAY, &[]);
    let mut c = gw.connect();
    send_json(
        &mut c,
        &json!({"type": "crawl", "id": "J1", "url": "https://example.com/", "depth": 2}),
    );
    let accepted = recv_json(&mut c);
    assert_eq!(accepted["type"], "accepted");
    assert_eq!(accepted["id"], "J1");
    assert_eq!(accepted["token"].as_str().unwrap().len(), 32);
    let result = recv_json(&mut c);
    assert_eq!(result["type"], "result");
    assert_eq!(result["id"], "J1");
    assert_eq!(result["levels"], json!([["https://example.com/"]]));

    send_json(
        &mut c,
        &json!({"jobId": "J2", "urlToCrawl": "https://example.com/a", "depthToCrawl": 1}),
    );
    assert_eq!(recv_json(&mut c)["type"], "accepted");
    let result = recv_json(&mut c);
    assert_eq!(
        (result["id"].as_str(), result["depth"].as_u64()),
        (Some("J2"), Some(1))
    );
}

#[test]
fn every_bad_message_gets_its_error_code_and_the_connection_lives_on() {
    let gw = Gateway::start(GATEWAY, &["--echo-delay-ms", "60000"]);
    let mut c = gw.connect();
    let cases = [
        (json!("{not json"), "bad_json"),
        (json!("[1]"), "bad_request"),
        (json!(r#"{"type":"dance","id":"x"}"#), "unknown_type"),
        (
            json!(r#"{"type":"crawl","id":"x","depth":1}"#),
            "bad_request",
        ),
        (
            json!(r#"{"type":"crawl","id":"x","url":"not a url","depth":1}"#),
            "invalid_url",
        ),
        (
            json!(r#"{"type":"crawl","id":"x","url":"ftp://example.com/","depth":1}"#),
            "unsupported_scheme",
        ),
        (
            json!(r#"{"type":"crawl","id":"x","url":"https://example.com/","depth":99}"#),
            "too_deep",
        ),
        (
            json!(r#"{"type":"crawl","id":"x","url":"https://example.com/","depth":0}"#),
            "invalid_depth",
        ),
        (
            json!(r#"{"type":"crawl","id":"x","url":"http://127.0.0.1:9/","depth":1}"#),
            "private_address",
        ),
        (
            json!(
                r#"{"type":"crawl","id":"x","url":"https://example.com/","depth":1,"same_host":"y"}"#
            ),
            "bad_request",
        ),
        (
            json!(r#"{"type":"resume","id":"x","token":"guessed"}"#),
            "unknown_job",
        ),
    ];
    for (text, code) in cases {
        c.send(Message::text(text.as_str().unwrap())).unwrap();
        let error = recv_json(&mut c);
        assert_eq!(error["type"], "error", "{text}");
        assert_eq!(error["code"], code, "{text}: {error}");
    }
    c.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(recv_json(&mut c)["code"], "binary_not_supported");

    // One job may run per connection; the echo delay keeps this one running.
    send_json(
        &mut c,
        &json!({"type": "crawl", "id": "long", "url": "https://example.com/", "depth": 1}),
    );
    assert_eq!(recv_json(&mut c)["type"], "accepted");
    send_json(
        &mut c,
        &json!({"type": "crawl", "id": "long", "url": "https://example.com/", "depth": 1}),
    );
    assert_eq!(recv_json(&mut c)["code"], "duplicate_job");
    send_json(
        &mut c,
        &json!({"type": "crawl", "id": "other", "url": "https://example.com/", "depth": 1}),
    );
    let error = recv_json(&mut c);
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("too_many_jobs"), Some("other"))
    );

    send_json(&mut c, &json!({"type": "ping", "id": 1}));
    assert_eq!(recv_json(&mut c)["type"], "pong");
    assert_eq!(gw.metric("gateway_errors_total{code=\"bad_json\""), 1.0);
    assert_eq!(gw.metric("gateway_errors_total"), 14.0);
}

#[test]
fn fragmented_message_is_reassembled() {
    let gw = Gateway::start(GATEWAY, &[]);
    let mut c = gw.connect();
    let text = br#"{"type":"ping","id":"frag"}"#;
    c.send(Message::Frame(Frame::message(
        text[..5].to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    c.send(Message::Ping(b"between".to_vec().into())).unwrap();
    c.send(Message::Frame(Frame::message(
        text[5..10].to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .unwrap();
    c.send(Message::Frame(Frame::message(
        text[10..].to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    loop {
        match c.read().unwrap() {
            Message::Pong(payload) => assert_eq!(&payload[..], b"between"),
            Message::Text(t) => {
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&t).unwrap(),
                    json!({"type":"pong","id":"frag"})
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn oversized_message_is_closed_with_1009() {
    let gw = Gateway::start(GATEWAY, &["--max-message-bytes", "1024"]);
    let mut c = gw.connect();
    c.send(Message::text("x".repeat(2000))).unwrap();
    assert_eq!(recv_close(&mut c).0, 1009);
    gw.wait_metric(
        "gateway_connections_closed_total{reason=\"message_too_big\"",
        |v| v == 1.0,
    );
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    let gw = Gateway::start(GATEWAY, &[]);
    let mut c = gw.connect();
    c.send(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .unwrap();
    assert_eq!(recv_close(&mut c).0, 1007);
    gw.wait_metric(
        "gateway_connections_closed_total{reason=\"invalid_utf8\"",
        |v| v == 1.0,
    );
}

#[test]
fn client_close_is_answered_and_counted() {
    let gw = Gateway::start(GATEWAY, &[]);
    let mut c = gw.connect();
    gw.wait_metric("gateway_connections_open", |v| v == 1.0);
    c.close(None).unwrap();
    assert!(matches!(c.read(), Ok(Message::Close(_))));
    gw.wait_metric(
        "gateway_connections_closed_total{reason=\"client_close\"",
        |v| v == 1.0,
    );
    gw.wait_metric("gateway_connections_open", |v| v == 0.0);
}

#[test]
fn websocket_pings_go_both_ways_and_silent_clients_are_dropped() {
    let gw = Gateway::start(GATEWAY, &["--ping-interval", "1", "--idle-timeout", "0"]);
    let mut c = gw.connect();
    with_timeout(&mut c, 5);
    c.send(Message::Ping(b"hi".to_vec().into())).unwrap();
    let mut got_pong = false;
    let mut got_ping = false;
    while !(got_pong && got_ping) {
        match c.read().unwrap() {
            Message::Pong(p) => got_pong = &p[..] == b"hi",
            // tungstenite answers the gateway's ping with a pong by itself.
            Message::Ping(_) => got_ping = true,
            other => panic!("{other:?}"),
        }
    }
    // A client that completes the handshake and then never answers pings,
    // while `c` keeps reading (and so answering the gateway's pings).
    let mut silent = raw_upgrade(&gw);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = c.get_mut() {
        s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
    }
    wait_for("the silent client to be dropped", 10, || {
        match c.read() {
            Ok(_) | Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("the answering client was dropped too: {e}"),
        }
        (gw.metric("gateway_connections_closed_total{reason=\"ping_timeout\"") == 1.0).then_some(())
    });
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    with_timeout(&mut c, 5);
    // The answering client is still there.
    send_json(&mut c, &json!({"type": "ping", "id": "still"}));
    assert_eq!(recv_json(&mut c)["id"], "still");
}

#[test]
fn idle_timeout_spares_a_client_whose_job_runs() {
    let gw = Gateway::start(
        GATEWAY,
        &[
            "--idle-timeout",
            "1",
            "--ping-interval",
            "30",
            "--echo-delay-ms",
            "3500",
        ],
    );
    let mut busy = gw.connect();
    let mut idle = gw.connect();
    with_timeout(&mut busy, 10);
    with_timeout(&mut idle, 10);
    send_json(
        &mut busy,
        &json!({"type": "crawl", "id": "slow", "url": "https://example.com/", "depth": 1}),
    );
    assert_eq!(recv_json(&mut busy)["type"], "accepted");
    assert_eq!(recv_close(&mut idle), (1001, "idle timeout".to_string()));
    let result = recv_json(&mut busy);
    assert_eq!(
        result["type"], "result",
        "the busy client got its result instead of a close"
    );
}

#[test]
fn upgrades_over_the_limit_get_503() {
    let gw = Gateway::start(GATEWAY, &["--max-connections", "2"]);
    let _a = gw.connect();
    let _b = gw.connect();
    match tungstenite::connect(&gw.ws) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!(
            "third connection should be refused: {:?}",
            other.map(|_| ())
        ),
    }
    gw.wait_metric(
        "gateway_handshakes_refused_total{reason=\"over_capacity\"",
        |v| v == 1.0,
    );
}

#[test]
fn bad_handshakes_get_http_errors() {
    let gw = Gateway::start(GATEWAY, &[]);
    let addr = gw
        .ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let status = |request: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    assert_eq!(status("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), "400");
    assert_eq!(status("GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n"), "404");
    assert_eq!(
        status("\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n"),
        "400"
    );
    // The gateway is unharmed.
    let mut c = gw.connect();
    send_json(&mut c, &json!({"type": "ping", "id": 1}));
    assert_eq!(recv_json(&mut c)["type"], "pong");
}

#[test]
fn a_client_that_does_not_read_is_closed() {
    let gw = Gateway::start(
        GATEWAY,
        &[
            "--max-outbound-bytes",
            "65536",
            "--max-message-bytes",
            "65536",
        ],
    );
    let mut s = raw_upgrade(&gw);
    // Ask for far more pong bytes than the kernel buffers hold, never reading.
    let id = "x".repeat(60_000);
    let frame = masked_text(&format!(r#"{{"type":"ping","id":"{id}"}}"#));
    for _ in 0..1000 {
        if s.write_all(&frame).is_err() {
            break;
        }
        if gw.metric("gateway_connections_closed_total{reason=\"slow_consumer\"") == 1.0 {
            break;
        }
    }
    gw.wait_metric(
        "gateway_connections_closed_total{reason=\"slow_consumer\"",
        |v| v == 1.0,
    );
}

#[test]
fn metrics_follow_the_traffic() {
    let gw = Gateway::start(GATEWAY, &[]);
    let mut clients: Vec<_> = (0..3).map(|_| gw.connect()).collect();
    gw.wait_metric("gateway_connections_open", |v| v == 3.0);
    assert_eq!(gw.metric("gateway_connections_accepted_total"), 3.0);
    for c in &mut clients {
        send_json(
            c,
            &json!({"type": "crawl", "id": "m", "url": "https://example.com/", "depth": 1}),
        );
        recv_json(c);
        recv_json(c);
    }
    assert_eq!(gw.metric("gateway_messages_received_total"), 3.0);
    assert_eq!(gw.metric("gateway_messages_sent_total"), 6.0);
    assert_eq!(gw.metric("gateway_jobs_submitted_total"), 3.0);
    assert_eq!(
        gw.metric("gateway_jobs_answered_total{outcome=\"result\""),
        3.0
    );
    assert_eq!(gw.metric("gateway_job_duration_seconds_count"), 3.0);
    assert!(gw.metric("process_resident_memory_bytes") > 1_000_000.0);
    drop(clients);
    gw.wait_metric("gateway_connections_open", |v| v == 0.0);
    assert_eq!(gw.metric("gateway_connections_closed_total"), 3.0);
}

#[test]
fn sigterm_drains_with_1012_and_exits_cleanly() {
    let mut gw = Gateway::start(GATEWAY, &["--drain-window", "2"]);
    let mut clients: Vec<_> = (0..20).map(|_| gw.connect()).collect();
    gw.wait_metric("gateway_connections_open", |v| v == 20.0);
    gw.signal("TERM");
    let ready = wait_for("readyz to say draining", 10, || {
        let code = match ureq::get(&format!("{}/readyz", gw.admin)).call() {
            Ok(r) => r.status().as_u16(),
            Err(ureq::Error::StatusCode(code)) => code,
            Err(_) => return None,
        };
        (code == 503).then_some(code)
    });
    assert_eq!(ready, 503);
    for c in &mut clients {
        with_timeout(c, 10);
        assert_eq!(recv_close(c).0, 1012);
    }
    assert_eq!(
        gw.wait_exit(std::time::Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
}

/// Completes a websocket handshake by hand and returns the bare socket, for
/// clients that misbehave in ways a websocket library will not.
fn raw_upgrade(gw: &Gateway) -> TcpStream {
    let addr = gw.ws.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

fn masked_text(text: &str) -> Vec<u8> {
    let mut frame = Frame::message(text.as_bytes().to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some([7, 7, 7, 7]);
    let mut out = Vec::new();
    frame.format(&mut out).unwrap();
    out
}

#[test]
fn a_handshake_that_never_completes_is_dropped() {
    let gw = Gateway::start(GATEWAY, &["--handshake-timeout", "1"]);
    let addr = gw.ws.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no response to half a request");
    gw.wait_metric(
        "gateway_connections_closed_total{reason=\"handshake_timeout\"",
        |v| v == 1.0,
    );
}
