//! Operator commands: publish and tail events, inspect and replay dead letters, verify the
//! topology. They use the same configuration as the services.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use meeting_events::config::{ConfigError, ExchangeType, MqSettings, Settings};
use meeting_events::envelope::{now_rfc3339, Envelope};
use meeting_events::events::EventType;
use meeting_events::messaging::headers;
use meeting_events::messaging::publisher::{self, Published};
use meeting_events::messaging::topology;
use meeting_events::text::short;
use meeting_events::Role;

use super::Failure;

mod broker_topology;
mod dlq;
mod events;

pub(crate) use broker_topology::{ingress, permissions, verify_command};
pub(crate) use dlq::{dlq_list, dlq_replay};
use events::{describe, preview};
pub(crate) use events::{publish, tail};

pub(super) async fn connect(mq: &MqSettings) -> anyhow::Result<Connection> {
    // Each node of the cluster in turn, until one answers.
    let mut last = None;
    for i in 0..mq.url.len() {
        let (url, shown) = mq.url.node(i);
        let props = ConnectionProperties::default().with_connection_name("app-operator".into());
        match tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = Some(anyhow::anyhow!("cannot connect to {shown}: {e}")),
            Err(_) => last = Some(anyhow::anyhow!("timed out connecting to {shown}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("AMQP_URL names no broker")))
}

/// How long the broker may take to answer one request of an operator command. A broker that
/// never answers (a wedged node, a partition) fails the command with the request's name
/// instead of hanging the terminal or the Kubernetes Job that runs it.
pub(super) const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// The broker's answer to `what`, or an error naming it after [`ANSWER_WITHIN`].
pub(super) async fn answered<T, E>(
    what: impl std::fmt::Display,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<Result<T, E>> {
    tokio::time::timeout(ANSWER_WITHIN, request)
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not answer {what} within {ANSWER_WITHIN:?}"))
}

/// Close the operator's connection, waiting at most [`ANSWER_WITHIN`] for the broker.
pub(super) async fn close(conn: &Connection, reason: &str) {
    let _ = answered("connection.close", conn.close(200, reason.into())).await;
}

pub(super) fn shared_settings() -> anyhow::Result<Settings> {
    Ok(Settings::shared_from_process_env()?)
}
