//! The RabbitMQ side of the distributed mode: names, topology and wire
//! messages, shared by the gateway's `amqp` adapter and the
//! `backend master` / `backend worker` processes.
//!
//! Topology (every name prefixed with the namespace, so that parallel test
//! runs or several deployments can share one broker):
//!
//! - `crawl.jobs`: durable queue of [`JobMsg`]s, persistent messages, a
//!   dead-letter exchange `crawl.dlx` routing to the durable queue
//!   `crawl.jobs.dead`. Masters also publish there themselves, with an
//!   `x-reason` header, when they give up on a job.
//! - `crawl.tasks`: durable queue of page fetch tasks for workers (each with
//!   `reply_to` naming its master's reply queue).
//! - `master.<node>.replies`: one exclusive, auto-deleted queue per master
//!   process for workers' replies.
//! - `gateway.<node>.done`: one durable queue per gateway for [`ResultMsg`]s,
//!   with `x-expires` so that a gateway that is gone for good does not leave
//!   a queue growing forever. Durable (not exclusive) so that results
//!   published while the gateway reconnects wait for it.
//!
//! lapin is async; every user runs it on a tokio runtime of its own (see
//! [`runtime`]), never on the gateway's reactor or reader threads.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::job::{CrawlSpec, JobEvent};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Queue, exchange and Redis key names under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Names {
        Names {
            namespace: namespace.trim().to_string(),
        }
    }

    fn amqp(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.namespace)
        }
    }

    pub fn jobs(&self) -> String {
        self.amqp("crawl.jobs")
    }
    pub fn dead_exchange(&self) -> String {
        self.amqp("crawl.dlx")
    }
    pub fn dead(&self) -> String {
        self.amqp("crawl.jobs.dead")
    }
    pub fn tasks(&self) -> String {
        self.amqp("crawl.tasks")
    }
    pub fn master_replies(&self, node: &str) -> String {
        self.amqp(&format!("master.{node}.replies"))
    }
    pub fn gateway_done(&self, node: &str) -> String {
        self.amqp(&format!("gateway.{node}.done"))
    }

    /// Prefix for every Redis key (`<namespace>:` or nothing).
    pub fn redis_prefix(&self) -> String {
        if self.namespace.is_empty() {
            String::new()
        } else {
            format!("{}:", self.namespace)
        }
    }
}

/// A crawl job as published to `crawl.jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMsg {
    /// Gateway-wide job key (node, client, job id).
    pub key: String,
    /// The client's resume token: the result store is keyed by it, so that
    /// a resume on any gateway finds the result.
    pub token: String,
    pub spec: CrawlSpec,
    /// The accepting gateway's result queue.
    pub reply_queue: String,
}

/// What a master tells the accepting gateway about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultMsg {
    pub key: String,
    pub token: String,
    pub event: JobEvent,
    /// The fencing epoch of the run that produced it (0 without Redis).
    #[serde(default)]
    pub epoch: u64,
}

/// What the Redis result store holds per resume token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    pub key: String,
    /// `None` while the job runs.
    pub event: Option<JobEvent>,
}

/// A tokio runtime on `threads` dedicated threads named `name-N`, for lapin.
pub fn runtime(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
}

/// Connects (must run inside a tokio runtime).
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(url, props).await
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the shared part of the topology (idempotent): jobs with their
/// dead-letter exchange and queue, and tasks.
pub async fn declare_shared(ch: &Channel, names: &Names) -> lapin::Result<()> {
    let dlx = names.dead_exchange();
    ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        names.dead().as_str().into(),
        durable(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        names.dead().as_str().into(),
        dlx.as_str().into(),
        names.jobs().as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    ch.queue_declare(names.jobs().as_str().into(), durable(), args)
        .await?;
    ch.queue_declare(
        names.tasks().as_str().into(),
        durable(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares a gateway's result queue, deleted by the broker after
/// `expires` without a consumer.
pub async fn declare_gateway_queue(
    ch: &Channel,
    queue: &str,
    expires: Duration,
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongLongInt(expires.as_millis().min(i64::MAX as u128) as i64),
    );
    ch.queue_declare(queue.into(), durable(), args).await?;
    Ok(())
}

/// Declares a master's private reply queue.
pub async fn declare_reply_queue(ch: &Channel, queue: &str) -> lapin::Result<()> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Properties of a message that must survive a broker restart.
/// Consumes `queue` with manual acks and at most `prefetch` deliveries
/// unacked on this channel: how masters take jobs, workers tasks and
/// gateways results, so a process that dies leaves its share to the broker.
pub async fn consume_acked(
    ch: &Channel,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> lapin::Result<Consumer> {
    ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Properties of a message that need not (tasks, replies, progress).
pub fn transient() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(1)
        .with_content_type("application/json".into())
}

/// A string header of a delivery, if present.
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced() {
        let n = Names::new("t1");
        assert_eq!(n.jobs(), "t1.crawl.jobs");
        assert_eq!(n.gateway_done("gw-1"), "t1.gateway.gw-1.done");
        assert_eq!(n.redis_prefix(), "t1:");
        let d = Names::new("");
        assert_eq!(d.jobs(), "crawl.jobs");
        assert_eq!(d.dead(), "crawl.jobs.dead");
        assert_eq!(d.redis_prefix(), "");
    }
}
