//! `backend dead-letters`: what is in the dead-letter queue and why, read
//! without consuming it, for an operator deciding what to replay or drop.
//! Masters put jobs there (see [`super::master`]) with an `x-reason`
//! header; the broker's dead-letter exchange puts the rest.

use crate::amqp::{self, Names};

use super::SessionError;

/// A job in the dead-letter queue, as `backend dead-letters` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub key: Option<String>,
    pub reason: Option<String>,
    pub body: String,
}

/// Reads the dead-letter queue without consuming it (the messages are
/// returned to the queue when the channel closes unacked).
pub fn list_dead_letters(amqp_url: &str, names: &Names) -> Result<Vec<DeadLetter>, SessionError> {
    let rt = amqp::runtime("dead-letters", 1)?;
    rt.block_on(async {
        let conn = amqp::connect(amqp_url, "dead-letters").await?;
        let ch = conn.create_channel().await?;
        amqp::declare_shared(&ch, names).await?;
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                names.dead().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await?
        {
            let d = &m.delivery;
            out.push(DeadLetter {
                key: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.to_string()),
                reason: amqp::header(&d.properties, "x-reason"),
                body: String::from_utf8_lossy(&d.data).into_owned(),
            });
        }
        let _ = ch.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
        Ok(out)
    })
}
