//! `tokio-peer`: the comparison server for `loadtest --compare`. A plain
//! tokio-tungstenite websocket server, one task per connection, 4 KiB read
//! buffer (`WebSocketConfig::read_buffer_size`), speaking the gateway's
//! client protocol for the parts the load tester uses: `ping` -> `pong`,
//! `crawl` -> `accepted` + `result` (echo, like the gateway's echo backend).
//! It prints its bound address on the first stdout line (`--listen` port 0).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn usage() -> ! {
    eprintln!("usage: tokio-peer [--listen 127.0.0.1:5600] [--read-buffer 4096]");
    std::process::exit(2);
}

/// The answers to one client text message.
fn answer(text: &str) -> Vec<Value> {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return vec![json!({"type":"error","code":"invalid_json","message":"not JSON"})];
    };
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    match msg.get("type").and_then(Value::as_str) {
        Some("ping") => vec![json!({"type":"pong","id":id})],
        Some("crawl") => {
            let url = msg.get("url").cloned().unwrap_or(Value::Null);
            let depth = msg.get("depth").cloned().unwrap_or(json!(1));
            vec![
                json!({"type":"accepted","id":id,"token":"peer","cached":false}),
                json!({"type":"result","id":id,"url":url,"depth":depth,"levels":[[url]],"cached":false}),
            ]
        }
        _ => vec![json!({"type":"error","id":id,"code":"unknown_type","message":"unknown type"})],
    }
}

async fn serve(stream: TcpStream, config: WebSocketConfig) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) => {
                for reply in answer(t.as_str()) {
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:5600".to_string();
    let mut read_buffer = 4096usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--read-buffer" => {
                read_buffer = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tokio-peer: bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", listener.local_addr().expect("bound"));
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, config));
                }
                Err(e) => {
                    eprintln!("tokio-peer: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return,
        }
    }
}
