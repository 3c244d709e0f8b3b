//! A delivery made into a value once (docs/architecture.md §5): its envelope and typed event
//! (or why it can never be handled), its sender, its attempts, the routing key it was first
//! published with, and its `process` span — read off the AMQP message in one place, so
//! nothing later goes back to the headers.

use lapin::message::Delivery;

use crate::config::MqSettings;
use crate::envelope::{DecodeError, Envelope};
use crate::events::{Event, EventType};
use crate::messaging::headers;
use crate::messaging::AmqpCarrier as _;
use crate::text::short;
use crate::trace::{attr, Carrier};

/// One delivery, decoded.
pub(super) struct Incoming {
    pub(super) delivery: Delivery,
    /// The envelope and its typed event, or why the message can never be handled.
    pub(super) decoded: Result<(Envelope, Event), DecodeError>,
    /// The event type as a metric label (bounded to the catalogue; `other` otherwise).
    pub(super) label: &'static str,
    /// The broker user that first published it: its stamped `user_id`, or the ingress
    /// producer whose exchange it came through.
    pub(super) sender: Option<String>,
    /// Attempts before this delivery (the `x-attempts` header).
    pub(super) attempts: u64,
    /// The routing key it was first published with (a retried message's own key is its
    /// wait queue's).
    pub(super) original_key: String,
    /// Its CONSUMER `process` span, parented to the context it carries.
    pub(super) span: tracing::Span,
}

impl Incoming {
    pub(super) fn new(mq: &MqSettings, delivery: Delivery) -> Self {
        let props = &delivery.properties;
        let attempts = headers::count(props, headers::ATTEMPTS).unwrap_or(0);
        let original_key = headers::text(props, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.to_string());
        let sender = headers::sender(mq, delivery.exchange.as_str(), props);
        let decoded = decode(&delivery.data, mq);
        let label = match &decoded {
            Ok((envelope, _)) => type_label(&envelope.event_type),
            Err(DecodeError::TooLarge { .. }) => "other",
            Err(_) => Envelope::from_bytes(&delivery.data)
                .map_or("other", |env| type_label(&env.event_type)),
        };
        let span = process_span(mq, &delivery, &original_key, attempts);
        let incoming = Self {
            delivery,
            decoded,
            label,
            sender,
            attempts,
            original_key,
            span,
        };
        incoming.name_the_event();
        incoming
    }

    /// Whether its sender may publish its event here (always in open mode); the reason to
    /// park it when not. A message that does not decode has nobody to trust.
    pub(super) fn trusted(&self, mq: &MqSettings) -> Result<(), String> {
        let Ok((_, event)) = &self.decoded else {
            return Ok(());
        };
        if super::super::trust::trusts(mq, event.event_type(), self.sender.as_deref()) {
            return Ok(());
        }
        Err(format!(
            "{} from broker user {:?}, which is not among its producers",
            self.label,
            self.sender
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "(none)".into())
        ))
    }

    /// The AMQP `message_id`, as published.
    pub(super) fn message_id(&self) -> &str {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map_or("", |s| s.as_str())
    }

    /// The AMQP `correlation_id`, as published.
    pub(super) fn correlation_id(&self) -> &str {
        self.delivery
            .properties
            .correlation_id()
            .as_ref()
            .map_or("", |s| s.as_str())
    }

    /// The span records the version that arrived; a message published without AMQP
    /// `message_id`/`correlation_id` (the seed's mq.py sets neither) is named in it by its
    /// envelope, once decoded.
    fn name_the_event(&self) {
        let Ok((envelope, _)) = &self.decoded else {
            return;
        };
        let span = &self.span;
        span.record("event_version", envelope.event_version);
        crate::trace::set_int(span, attr::EVENT_VERSION, i64::from(envelope.event_version));
        if self.delivery.properties.message_id().is_some() {
            return;
        }
        span.record(
            "event_id",
            tracing::field::display(short(&envelope.event_id)),
        );
        span.record(
            "correlation_id",
            tracing::field::display(short(envelope.chain_id())),
        );
        crate::trace::set(
            span,
            &[
                (attr::MESSAGE_ID, envelope.event_id.clone()),
                (attr::CONVERSATION_ID, envelope.chain_id().to_string()),
            ],
        );
    }
}

/// The metric label for an event type read off the wire (bounded to the catalogue).
pub(super) fn type_label(event_type: &str) -> &'static str {
    EventType::from_routing_key(event_type).map_or("other", EventType::routing_key)
}

/// The envelope and its typed event, upcast to its type's newest version, or why the
/// message can never be handled (by this consumer, reading the versions it reads).
fn decode(body: &[u8], mq: &MqSettings) -> Result<(Envelope, Event), DecodeError> {
    let max = mq.max_message_bytes;
    if body.len() > max {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max,
        });
    }
    let envelope = Envelope::from_bytes(body)?;
    let event = envelope.event_reading(&mq.read_versions)?;
    Ok((envelope, event))
}

/// The CONSUMER `process` span of a delivery: parented to the context the message carries
/// (its `create` span) and linked to it; a new trace when it carries none. Its fields name
/// the event in every log line written while it is handled.
fn process_span(
    mq: &MqSettings,
    delivery: &Delivery,
    routing_key: &str,
    attempts: u64,
) -> tracing::Span {
    let props = &delivery.properties;
    let event_id = props
        .message_id()
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or("");
    let correlation_id = props
        .correlation_id()
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or(event_id);
    let span = tracing::info_span!(target: crate::trace::TARGET, "event",
        otel.name = %format_args!("process {}", mq.queue), otel.kind = "consumer",
        event_id = %short(event_id), event_type = %short(routing_key),
        correlation_id = %short(correlation_id), event_version = tracing::field::Empty,
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    if !crate::trace::enabled() {
        return span;
    }
    let mut attributes = crate::trace::message_attributes(
        ("process", "process"),
        format!("{}:{routing_key}:{}", mq.exchange, mq.queue),
        routing_key,
        event_id,
        correlation_id,
    );
    attributes.push((attr::CONSUMER_GROUP, mq.queue.clone()));
    crate::trace::set(&span, &attributes);
    crate::trace::set_int(&span, attr::DELIVERY_TAG, delivery.delivery_tag as i64);
    crate::trace::set_int(&span, attr::ATTEMPT, (attempts + 1) as i64);
    let parent = Carrier::from_amqp(props).context();
    crate::trace::start(&span, Some(&parent), true);
    span
}
