//! Targets: resolve `ws://` URLs to socket addresses (refusing non-loopback
//! ones unless allowed), build the upgrade request with tungstenite's client
//! handshake, and ask a balancer `GET /v1/gateway` for a gateway URL.

use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::derive_accept_key;
use tungstenite::http::Uri;

/// A resolved websocket endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// Resolve `host:port` of an `http`/`ws` URL and apply the loopback rule.
fn resolve(url: &str, schemes: &[&str], allow_remote: bool) -> Result<SocketAddr, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(format!("{url:?}: scheme must be one of {schemes:?}"));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{host} resolves to nothing"))?;
    if !allow_remote && !addr.ip().is_loopback() {
        return Err(format!(
            "{url} resolves to {} which is not a loopback address; pass --allow-remote to load a \
             remote host",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// Check that an HTTP URL (balancer, admin) is allowed.
pub fn check_http(url: &str, allow_remote: bool) -> Result<(), String> {
    resolve(url, &["http"], allow_remote).map(|_| ())
}

impl Target {
    /// Resolve a `ws://` URL.
    pub fn new(url: &str, allow_remote: bool) -> Result<Target, String> {
        let addr = resolve(url, &["ws"], allow_remote)?;
        Ok(Target {
            url: url.to_string(),
            addr,
        })
    }

    /// A fresh upgrade request (new random key) and the
    /// `Sec-WebSocket-Accept` value the server must answer with.
    pub fn request(&self) -> Result<(Vec<u8>, String), String> {
        let req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let (bytes, key) = generate_request(req).map_err(|e| e.to_string())?;
        Ok((bytes, derive_accept_key(key.as_bytes())))
    }
}

/// The balancer's answer (contract in shared/DESIGN.md).
#[derive(Debug, Clone, Deserialize)]
pub struct Assignment {
    /// Websocket URL of the chosen gateway.
    pub url: String,
    /// Its node id.
    #[serde(default)]
    pub node: String,
}

/// A blocking HTTP client with a deadline on every request.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// `GET {base}/v1/gateway`.
pub fn ask_balancer(agent: &ureq::Agent, base: &str) -> Result<Assignment, String> {
    let url = format!("{}/v1/gateway", base.trim_end_matches('/'));
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| format!("balancer: {e}"))?;
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("balancer body: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("balancer answer {body:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_by_default() {
        assert!(Target::new("ws://127.0.0.1:5555/ws", false).is_ok());
        assert!(Target::new("ws://127.9.9.9:5555/ws", false).is_ok());
        assert!(Target::new("ws://10.1.2.3:5555/ws", false).is_err());
        assert!(Target::new("ws://10.1.2.3:5555/ws", true).is_ok());
        assert!(Target::new("http://127.0.0.1:5555/ws", false).is_err());
        assert!(check_http("http://127.0.0.1:8080", false).is_ok());
    }

    #[test]
    fn request_carries_key() {
        let t = Target::new("ws://127.0.0.1:5555/ws", false).unwrap();
        let (bytes, accept) = t.request().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: "));
        assert_eq!(accept.len(), 28);
    }
}
