//! The client protocol: JSON text frames in both directions.
//!
//! Parsing is strict about types and lenient about extra fields, and every
//! way a message can be wrong maps to one stable error code in [`codes`], so
//! a client developer can switch on `code` and a person can read `message`.

use backend::engine::JobOptions;
use backend::job::{CrawlOutcome, JobFailure};
use serde::Deserialize;
use serde_json::{json, Value};

/// Stable error codes sent in `{"type":"error","code":...}`.
pub mod codes {
    /// The frame was not valid JSON.
    pub const BAD_JSON: &str = "bad_json";
    /// Valid JSON but not an object, or a field missing or of the wrong type.
    pub const BAD_REQUEST: &str = "bad_request";
    /// `type` names no message this gateway knows.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// Binary frames carry no meaning in this protocol.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
    /// The connection already has its allowance of jobs running.
    pub const TOO_MANY_JOBS: &str = "too_many_jobs";
    /// A job with this id is already running on this connection.
    pub const DUPLICATE_JOB: &str = "duplicate_job";
    /// `resume` named a job this token does not own, or one long gone.
    pub const UNKNOWN_JOB: &str = "unknown_job";
    /// The backend cannot take jobs right now (broker down); retry later.
    pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";
    /// The gateway is shutting down and takes no new jobs.
    pub const DRAINING: &str = "draining";
}

/// Longest client-chosen job id; ids are echoed back and used in keys.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A message from a client, parsed and type-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Crawl {
        id: String,
        url: String,
        depth: i64,
        options: JobOptions,
    },
    Resume {
        id: String,
        token: String,
    },
    Ping {
        id: Value,
    },
}

/// A message the gateway could not accept; answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The job id when the message carried one, so the client can match it.
    pub id: Option<String>,
    pub failure: JobFailure,
}

impl Rejection {
    fn new(id: Option<String>, code: &str, message: impl Into<String>) -> Self {
        Rejection {
            id,
            failure: JobFailure::new(code, message),
        }
    }
}

/// The seed system's form: `{"jobId":..,"urlToCrawl":..,"depthToCrawl":..}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedCrawl {
    job_id: Value,
    url_to_crawl: Value,
    depth_to_crawl: Value,
}

/// Parses one text message.
pub fn parse(text: &str) -> Result<Request, Rejection> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(None, codes::BAD_JSON, format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(Rejection::new(
            None,
            codes::BAD_REQUEST,
            "a message must be a JSON object",
        ));
    };
    let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    match obj.get("type") {
        Some(Value::String(kind)) => match kind.as_str() {
            "crawl" => {
                let id = job_id(obj.get("id"))?;
                let url = string_field(&id, obj.get("url"), "url")?;
                let depth = depth_field(&id, obj.get("depth"))?;
                let options = job_options(&id, obj)?;
                Ok(Request::Crawl {
                    id,
                    url,
                    depth,
                    options,
                })
            }
            "resume" => {
                let id = job_id(obj.get("id"))?;
                let token = string_field(&id, obj.get("token"), "token")?;
                Ok(Request::Resume { id, token })
            }
            "ping" => Ok(Request::Ping {
                id: obj.get("id").cloned().unwrap_or(Value::Null),
            }),
            other => Err(Rejection::new(
                id,
                codes::UNKNOWN_TYPE,
                format!(
                    "unknown message type {:?}; expected crawl, resume or ping",
                    truncate(other)
                ),
            )),
        },
        Some(_) => Err(Rejection::new(
            id,
            codes::BAD_REQUEST,
            "\"type\" must be a string",
        )),
        None if obj.contains_key("jobId") => {
            let seed: SeedCrawl = serde_json::from_value(value.clone()).map_err(|_| {
                Rejection::new(
                    None,
                    codes::BAD_REQUEST,
                    "the seed form needs jobId, urlToCrawl and depthToCrawl",
                )
            })?;
            let id = job_id(Some(&seed.job_id))?;
            let url = string_field(&id, Some(&seed.url_to_crawl), "urlToCrawl")?;
            let depth = depth_field(&id, Some(&seed.depth_to_crawl))?;
            Ok(Request::Crawl {
                id,
                url,
                depth,
                options: JobOptions::default(),
            })
        }
        None => Err(Rejection::new(id, codes::BAD_REQUEST, "missing \"type\"")),
    }
}

fn job_id(value: Option<&Value>) -> Result<String, Rejection> {
    let id = match value {
        Some(Value::String(s)) => s.clone(),
        // The seed's clients sometimes send numeric ids.
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(Rejection::new(
                None,
                codes::BAD_REQUEST,
                "\"id\" must be a string",
            ))
        }
        None => return Err(Rejection::new(None, codes::BAD_REQUEST, "missing \"id\"")),
    };
    if id.is_empty() || id.len() > MAX_JOB_ID_LEN {
        return Err(Rejection::new(
            None,
            codes::BAD_REQUEST,
            format!("\"id\" must be 1 to {MAX_JOB_ID_LEN} bytes"),
        ));
    }
    Ok(id)
}

fn string_field(id: &str, value: Option<&Value>, name: &str) -> Result<String, Rejection> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Rejection::new(
            Some(id.into()),
            codes::BAD_REQUEST,
            format!("\"{name}\" must be a string"),
        )),
        None => Err(Rejection::new(
            Some(id.into()),
            codes::BAD_REQUEST,
            format!("missing \"{name}\""),
        )),
    }
}

fn depth_field(id: &str, value: Option<&Value>) -> Result<i64, Rejection> {
    let bad = || {
        Rejection::new(
            Some(id.into()),
            codes::BAD_REQUEST,
            "\"depth\" must be an integer",
        )
    };
    match value {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad),
        // The seed sent depths as strings.
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad()),
        Some(_) => Err(bad()),
        None => Err(Rejection::new(
            Some(id.into()),
            codes::BAD_REQUEST,
            "missing \"depth\"",
        )),
    }
}

/// Optional `max_pages` and `same_host`; the engine caps them.
fn job_options(id: &str, obj: &serde_json::Map<String, Value>) -> Result<JobOptions, Rejection> {
    let bad = |what: &str| Rejection::new(Some(id.into()), codes::BAD_REQUEST, what.to_string());
    let max_pages = match obj.get("max_pages") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("\"max_pages\" must be a positive integer"))?,
        ),
    };
    let same_host = match obj.get("same_host") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(bad("\"same_host\" must be true or false")),
    };
    Ok(JobOptions {
        max_pages,
        same_host,
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `{"type":"pong","id":..}`
pub fn pong(id: &Value) -> String {
    json!({"type": "pong", "id": id}).to_string()
}

/// `{"type":"accepted","id":..,"token":..,"cached":..}`
pub fn accepted(id: &str, token: &str, cached: bool) -> String {
    json!({"type": "accepted", "id": id, "token": token, "cached": cached}).to_string()
}

/// `{"type":"progress","id":..,"level":..,"pages":..}`
pub fn progress(id: &str, level: u32, pages: u32) -> String {
    json!({"type": "progress", "id": id, "level": level, "pages": pages}).to_string()
}

/// `{"type":"result","id":..,"url":..,"depth":..,"levels":..,"cached":..}`
pub fn result(id: &str, outcome: &CrawlOutcome) -> String {
    let mut msg = json!({
        "type": "result",
        "id": id,
        "url": outcome.url,
        "depth": outcome.depth,
        "levels": outcome.levels,
        "cached": outcome.cached,
    });
    if let Some(reason) = &outcome.partial {
        msg["partial"] = json!(reason);
    }
    msg.to_string()
}

/// `{"type":"error","id":..,"code":..,"message":..}`; `id` is omitted when
/// the message that failed carried none.
pub fn error(id: Option<&str>, failure: &JobFailure) -> String {
    let mut msg = json!({"type": "error", "code": failure.code, "message": failure.message});
    if let Some(id) = id {
        msg["id"] = json!(id);
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_crawl_in_both_forms() {
        let new = parse(r#"{"type":"crawl","id":"J1","url":"https://a.test/","depth":2}"#).unwrap();
        let seed =
            parse(r#"{"jobId":"J1","urlToCrawl":"https://a.test/","depthToCrawl":"2"}"#).unwrap();
        let want = Request::Crawl {
            id: "J1".into(),
            url: "https://a.test/".into(),
            depth: 2,
            options: JobOptions::default(),
        };
        assert_eq!(new, want);
        assert_eq!(seed, want);
    }

    #[test]
    fn parses_resume_and_ping() {
        assert_eq!(
            parse(r#"{"type":"resume","id":"J1","token":"t"}"#).unwrap(),
            Request::Resume {
                id: "J1".into(),
                token: "t".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"ping","id":7}"#).unwrap(),
            Request::Ping { id: json!(7) }
        );
        assert_eq!(pong(&json!("x")), r#"{"id":"x","type":"pong"}"#);
    }

    fn code(text: &str) -> String {
        parse(text).unwrap_err().failure.code
    }

    #[test]
    fn every_bad_input_has_its_code() {
        assert_eq!(code("{not json"), codes::BAD_JSON);
        assert_eq!(code("[1,2]"), codes::BAD_REQUEST);
        assert_eq!(code(r#"{"id":"x"}"#), codes::BAD_REQUEST);
        assert_eq!(code(r#"{"type":5}"#), codes::BAD_REQUEST);
        assert_eq!(code(r#"{"type":"dance","id":"x"}"#), codes::UNKNOWN_TYPE);
        assert_eq!(
            code(r#"{"type":"crawl","url":"u","depth":1}"#),
            codes::BAD_REQUEST
        );
        assert_eq!(
            code(r#"{"type":"crawl","id":"x","depth":1}"#),
            codes::BAD_REQUEST
        );
        assert_eq!(
            code(r#"{"type":"crawl","id":"x","url":"u","depth":"deep"}"#),
            codes::BAD_REQUEST
        );
        assert_eq!(
            code(r#"{"type":"crawl","id":"","url":"u","depth":1}"#),
            codes::BAD_REQUEST
        );
        assert_eq!(
            code(r#"{"jobId":"x","urlToCrawl":"u"}"#),
            codes::BAD_REQUEST
        );
        assert_eq!(code(r#"{"type":"resume","id":"x"}"#), codes::BAD_REQUEST);
    }

    #[test]
    fn rejection_keeps_the_job_id() {
        let r = parse(r#"{"type":"crawl","id":"J9","url":3,"depth":1}"#).unwrap_err();
        assert_eq!(r.id.as_deref(), Some("J9"));
    }

    #[test]
    fn result_carries_partial_only_when_set() {
        let mut outcome = CrawlOutcome {
            url: "u".into(),
            depth: 1,
            levels: vec![vec!["u".into()]],
            cached: false,
            partial: None,
        };
        assert!(!result("J", &outcome).contains("partial"));
        outcome.partial = Some("deadline".into());
        assert!(result("J", &outcome).contains(r#""partial":"deadline""#));
    }
}
