//! RabbitMQ: the topology (contract §1 plus Tether's own task queues) and a
//! publisher that only reports success once the broker has confirmed a
//! message and routed it somewhere.
//!
//! Every publish is `mandatory` with publisher confirms: a confirm alone does
//! not prove that a queue took the message (an unroutable message is
//! confirmed too), so a returned message counts as a failure.

use std::sync::{Arc, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use crate::contract::{
    EXCHANGE, REJECTED_QUEUE, REJECT_REASON_HEADER, REQUEST_QUEUE, ROUTING_CANCEL, ROUTING_FINISHED,
    ROUTING_REQUEST,
};
use crate::model::rejection;
use crate::secrets::Secret;
use crate::task::{
    TaskKind, TaskMessage, REQUEST_DEAD_LETTER_QUEUE, RETRY_TIERS_SECS, TASK_DEAD_LETTER_QUEUE,
};

/// Heartbeat used when the URL sets none: a dead TCP connection is noticed
/// within about a minute instead of the OS's ~11.
const DEFAULT_HEARTBEAT_SECS: u16 = 30;
/// How often a task message may be delivered before it is dead-lettered.
const TASK_DELIVERY_LIMIT: i64 = 20;
const REQUEST_DELIVERY_LIMIT: i64 = 20;

const PERSISTENT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("TETHER_AMQP_URL is not a valid AMQP URL ({0}): use amqp://user:password@host:5672/vhost")]
    BadUrl(String),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused (nack) a message for {0}")]
    Nacked(String),
    #[error("RabbitMQ could not route a message for {0}: is its queue declared?")]
    Unroutable(String),
    #[error("not connected to RabbitMQ (reconnecting)")]
    NotConnected,
}

/// Opens a connection named after the process, with heartbeats.
pub async fn connect(url: &Secret, name: &str) -> Result<Connection, QueueError> {
    let mut uri: lapin::uri::AMQPUri = url.expose().parse().map_err(|e: String| {
        // The parser may quote the URL; keep only the first words.
        let first = e.split(':').next().unwrap_or("unparsable").to_owned();
        QueueError::BadUrl(first)
    })?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect_uri(uri, properties).await?)
}

fn quorum_args(dead_letter_to: Option<&str>, delivery_limit: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    if let Some(target) = dead_letter_to {
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(delivery_limit));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(target.into()));
        // At-least-once dead-lettering needs reject-publish overflow.
        args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    }
    args
}

/// How long `tether.rejected` and the dead-letter queues keep a message
/// (contract §2): long enough for staff to look, not forever.
const KEPT_FOR_MS: i64 = 7 * 24 * 3600 * 1000;
/// The most a dead-letter queue holds; past it the oldest messages go.
const DEAD_LETTER_MAX_BYTES: i64 = 1 << 30;

/// A queue that only keeps messages for people to read: quorum, messages
/// expire after [`KEPT_FOR_MS`], and with a byte cap the oldest are dropped
/// past it. A queue declared earlier without these arguments keeps its own
/// (the broker refuses to change them): an upgrade bounds it with the
/// policy in `docs/interface.md`.
fn bounded_args(byte_cap: Option<i64>) -> FieldTable {
    let mut args = quorum_args(None, 0);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(KEPT_FOR_MS));
    if let Some(bytes) = byte_cap {
        args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(bytes));
        args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    }
    args
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), QueueError> {
    channel
        .queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    Ok(())
}

/// Declares everything Tether uses; idempotent, run by every process at
/// start-up so that none depends on another having started first.
pub async fn declare_topology(connection: &Connection) -> Result<(), QueueError> {
    let channel = &connection.create_channel().await?;
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    for (kept, byte_cap) in [
        (REJECTED_QUEUE, None),
        (REQUEST_DEAD_LETTER_QUEUE, Some(DEAD_LETTER_MAX_BYTES)),
        (TASK_DEAD_LETTER_QUEUE, Some(DEAD_LETTER_MAX_BYTES)),
    ] {
        declare_queue(channel, kept, bounded_args(byte_cap)).await?;
    }
    declare_queue(
        channel,
        REQUEST_QUEUE,
        quorum_args(Some(REQUEST_DEAD_LETTER_QUEUE), REQUEST_DELIVERY_LIMIT),
    )
    .await?;
    for key in [ROUTING_REQUEST, ROUTING_CANCEL] {
        channel
            .queue_bind(
                REQUEST_QUEUE.into(),
                EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for kind in TaskKind::ALL {
        let args = quorum_args(Some(TASK_DEAD_LETTER_QUEUE), TASK_DELIVERY_LIMIT);
        declare_queue(channel, kind.queue(), args).await?;
        for tier in RETRY_TIERS_SECS {
            let (name, _) = kind.retry_queue(std::time::Duration::from_secs(tier.into()));
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::from(tier) * 1000));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(kind.queue().into()));
            declare_queue(channel, &name, args).await?;
        }
    }
    channel.close(200, "topology declared".into()).await?;
    Ok(())
}

/// A consuming channel with its prefetch set.
pub async fn consumer_channel(connection: &Connection, prefetch: u16) -> Result<Channel, QueueError> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    Ok(channel)
}

/// The process's current RabbitMQ connection and its publisher. When the
/// connection is lost, the process establishes a new one here and everything
/// that publishes through the link uses it from then on. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Link {
    current: Arc<RwLock<Option<Session>>>,
}

/// A connection and the publisher opened on it.
type Session = (Arc<Connection>, Publisher);

impl Link {
    /// Connects, declares the topology, opens a publisher; returns the
    /// connection for the caller's consumers.
    pub async fn establish(&self, url: &Secret, name: &str) -> Result<Arc<Connection>, QueueError> {
        let connection = connect(url, name).await?;
        declare_topology(&connection).await?;
        let publisher = Publisher::new(&connection).await?;
        let connection = Arc::new(connection);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Some((Arc::clone(&connection), publisher));
        Ok(connection)
    }

    /// After a lost connection: tries to establish a new one with jittered
    /// backoff (1 s to 30 s) until it works (`Some`) or `stop` is cancelled
    /// (`None`).
    pub async fn reconnect(
        &self,
        url: &Secret,
        name: &str,
        stop: &CancellationToken,
    ) -> Option<Arc<Connection>> {
        for delay in crate::model::retry::reconnect() {
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            match self.establish(url, name).await {
                Ok(connection) => {
                    tracing::info!("Reconnected to RabbitMQ.");
                    return Some(connection);
                }
                Err(error) => tracing::warn!(%error, ?delay, "Cannot reconnect to RabbitMQ yet."),
            }
        }
        None
    }

    /// The current publisher.
    pub fn publisher(&self) -> Result<Publisher, QueueError> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(_, p)| p.clone()).ok_or(QueueError::NotConnected)
    }

    /// Whether the current connection is up (for `/readyz`).
    pub fn connected(&self) -> bool {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().is_some_and(|(c, _)| c.status().connected())
    }

    /// Closes the current connection (at shutdown).
    pub async fn close(&self, reason: &str) {
        let current = self.current.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((connection, _)) = current {
            let _ = connection.close(200, reason.into()).await;
        }
    }
}

/// What the broker says of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLoad {
    /// Messages ready: not yet delivered to a consumer.
    pub ready: u32,
    /// Consumers subscribed to it.
    pub consumers: u32,
}

/// Publishes on a confirm-mode channel and waits for each confirm. Cheap to
/// clone; safe to use from many tasks at once.
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Self, QueueError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel })
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties.with_delivery_mode(PERSISTENT),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(QueueError::Unroutable(routing_key.to_owned())),
            Confirmation::Nack(_) => Err(QueueError::Nacked(routing_key.to_owned())),
        }
    }

    /// Publishes tasks of one kind to their queue.
    pub async fn publish_tasks(&self, kind: TaskKind, tasks: &[TaskMessage]) -> Result<(), QueueError> {
        // Send all, then wait for all: one round trip per batch, not per task.
        let bodies: Vec<Vec<u8>> = tasks.iter().map(task_body).collect();
        let confirms = bodies.iter().map(|body| self.publish("", kind.queue(), body, json_properties()));
        for result in futures_util::future::join_all(confirms).await {
            result?;
        }
        Ok(())
    }

    /// Parks a task message for about `delay`, after which the broker puts it
    /// back on its queue (a retry queue with a TTL and a dead-letter target).
    pub async fn publish_retry(
        &self,
        kind: TaskKind,
        body: &[u8],
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let (queue, _) = kind.retry_queue(delay);
        self.publish("", &queue, body, json_properties()).await
    }

    /// Moves a refused request to `tether.rejected` with the reason in
    /// `x-tether-reject-reason`: both bounded and without secrets
    /// ([`crate::model::rejection`]).
    pub async fn publish_rejected(
        &self,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut headers = original.headers().clone().unwrap_or_default();
        let reason = rejection::bounded_reason(reason);
        headers.insert(REJECT_REASON_HEADER.into(), AMQPValue::LongString(reason.as_str().into()));
        let body = &rejection::kept_body(body);
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(ct) = original.content_type() {
            properties = properties.with_content_type(ct.clone());
        }
        self.publish("", REJECTED_QUEUE, body, properties).await
    }

    /// Publishes a FinishedEvent (already serialised by the outbox).
    pub async fn publish_finished(&self, body: &[u8]) -> Result<(), QueueError> {
        self.publish(EXCHANGE, ROUTING_FINISHED, body, json_properties()).await
    }

    /// Messages ready and consumers of a queue Tether declared (a passive
    /// declare: one round trip, nothing changes).
    pub async fn queue_load(&self, queue: &str) -> Result<QueueLoad, QueueError> {
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        Ok(QueueLoad { ready: declared.message_count(), consumers: declared.consumer_count() })
    }

    /// Publishes an ImportRequest or a cancel as the platform would.
    pub async fn publish_request(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        self.publish(EXCHANGE, routing_key, body, json_properties()).await
    }
}

fn task_body(task: &TaskMessage) -> Vec<u8> {
    format!("{{\"task_id\":\"{}\",\"seq\":{}}}", task.task_id, task.seq).into_bytes()
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type(ShortString::from("application/json"))
}
