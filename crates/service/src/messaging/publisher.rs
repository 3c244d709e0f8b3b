//! Publishing: persistent, `mandatory`, confirmed. Frames go out in call order and the
//! confirms are awaited separately, so many publishes share one round trip; each confirm is
//! matched to its message by id (`confirms.rs`).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};

use super::confirms::Confirms;
pub use super::confirms::Pending;
use crate::envelope::Envelope;
use crate::messaging::headers;

/// A channel in confirm mode, its confirms matched to their messages by `message_id`.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirms: Confirms,
}

impl Publisher {
    /// Put `channel` in confirm mode and publish through it.
    pub async fn open(channel: Channel) -> lapin::Result<Self> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            confirms: Confirms::start(),
        })
    }

    /// The channel, for what is not a publish (declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// What the broker said about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored by the broker and routed to at least one queue.
    Routed,
    /// Accepted, but no queue is bound for the routing key (`mandatory` returned it).
    Unroutable(String),
    /// The broker refused it (internal error on its side).
    Nacked,
    /// No confirm within [`CONFIRM_TIMEOUT`]: the connection is presumed dead.
    TimedOut,
}

/// Send one message; [`confirmed`] waits for what the broker said of it. Its `message_id`
/// is what tells its return, if the broker sends one, from another message's.
pub async fn send(
    publisher: &Publisher,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<Pending> {
    let sending = publisher.confirms.begin();
    let id = properties.message_id().as_ref().map(|id| id.to_string());
    let confirm = publisher
        .channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                // Tell us when nothing is bound, instead of silently dropping the event.
                mandatory: true,
                immediate: false,
            },
            body,
            properties,
        )
        .await?;
    Ok(sending.sent(id, confirm))
}

/// Send several messages to `exchange`, in order, each `(routing key, body, properties)`;
/// the result of each send, in the same order. A send queues its frames when it is first
/// polled and then waits for the connection to write them: polled one after another, each
/// message would cost a hand-off to the connection's writer and back, and a busy runtime
/// would schedule every other task in between. Here every send is polled in order (so the
/// frames leave in call order) and the writes are awaited together.
pub async fn send_all<'a>(
    publisher: &Publisher,
    exchange: &str,
    messages: impl IntoIterator<Item = (&'a str, &'a [u8], BasicProperties)>,
) -> Vec<lapin::Result<Pending>> {
    use futures_util::future::maybe_done;
    use std::future::Future as _;
    use std::task::Poll;
    let mut sends: Vec<_> = messages
        .into_iter()
        .map(|(key, body, props)| Box::pin(maybe_done(send(publisher, exchange, key, body, props))))
        .collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for send in sends.iter_mut() {
            done &= send.as_mut().poll(cx).is_ready();
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    sends
        .iter_mut()
        .map(|send| match send.as_mut().take_output() {
            Some(result) => result,
            None => Err(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Error,
                "basic.publish",
            )
            .into()),
        })
        .collect()
}

/// How long a confirm may take before the connection is presumed dead. A broker that
/// vanishes without closing the socket would otherwise leave the publisher waiting forever.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Wait for what the broker said of a publish.
pub async fn confirmed(pending: Pending) -> lapin::Result<Published> {
    pending.outcome().await
}

/// Publish an envelope to the exchange and wait for its confirm.
pub async fn publish_envelope(
    publisher: &Publisher,
    exchange: &str,
    envelope: &Envelope,
) -> lapin::Result<Published> {
    let props = headers::for_event(
        &envelope.event_id,
        &envelope.event_type,
        &envelope.producer,
        envelope.correlation_id.as_deref(),
        unix_seconds(),
    );
    let confirm = send(
        publisher,
        exchange,
        &envelope.event_type,
        &envelope.to_bytes(),
        props,
    )
    .await?;
    confirmed(confirm).await
}

pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
