//! Traces (docs/architecture.md §13): OpenTelemetry spans of a request's path through HTTP,
//! the outbox, the broker and the consumers, exported over OTLP/HTTP, with W3C Trace Context
//! carried in HTTP headers, in the outbox row and in the AMQP `headers` table.
//!
//! Off unless an OTLP endpoint is configured; then every span this crate exports is a
//! `tracing` span with target [`TARGET`], turned into an OpenTelemetry span by
//! `tracing-opentelemetry`. The parent/link policy:
//! - HTTP: the SERVER span continues an incoming `traceparent`.
//! - Outbox: each event gets a PRODUCER `create` span under whatever span emitted it; that
//!   context is stored with the row and sent, unchanged, as the message's `traceparent`.
//! - Relay: a CLIENT `publish` span, parented to the stored context and linked to it.
//! - Consumer: a CONSUMER `process` span per message, parented to the message's context and
//!   linked to it; a retried delivery carries the same headers, so it stays in the trace.
//! - `app dlq replay`: a new trace, linked to the parked message's context.

mod export;

pub(crate) use export::tracer;
pub use export::{config_from, TraceConfig};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every exported span: the export layer takes these and nothing
/// else, so log events and other crates' spans never become spans of their own.
pub(crate) const TARGET: &str = "otel";

/// W3C Trace Context header names, in HTTP and in the AMQP `headers` table.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Attribute keys of the messaging semantic conventions, kept in one place (their names
/// still move between registry versions).
pub(crate) mod attr {
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    pub const OPERATION_TYPE: &str = "messaging.operation.type";
    pub const OPERATION_NAME: &str = "messaging.operation.name";
    pub const DESTINATION: &str = "messaging.destination.name";
    pub const ROUTING_KEY: &str = "messaging.rabbitmq.destination.routing_key";
    pub const DELIVERY_TAG: &str = "messaging.rabbitmq.message.delivery_tag";
    pub const MESSAGE_ID: &str = "messaging.message.id";
    pub const CONVERSATION_ID: &str = "messaging.message.conversation_id";
    pub const CONSUMER_GROUP: &str = "messaging.consumer.group.name";
    pub const ATTEMPT: &str = "messaging.rabbitmq.message.attempt";
    pub const ERROR_TYPE: &str = "error.type";
    pub const HTTP_METHOD: &str = "http.request.method";
    pub const HTTP_ROUTE: &str = "http.route";
    pub const HTTP_STATUS: &str = "http.response.status_code";
    pub const URL_PATH: &str = "url.path";
    pub const CAUSATION_ID: &str = "meeting_events.causation_id";
    /// The `event_version` the message arrived in (before upcasting).
    pub const EVENT_VERSION: &str = "meeting_events.event_version";
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an endpoint is configured).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A stored or carried trace context: the two W3C Trace Context values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carrier {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Carrier {
    /// The context of `span`, written out (empty when it has none).
    pub(crate) fn of(span: &Span) -> Self {
        let mut carrier = Self::default();
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        }
        carrier
    }

    /// The context these values carry (an empty one when they are missing or malformed).
    pub(crate) fn context(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }

    /// The values as HTTP headers carry them.
    pub(crate) fn from_http(headers: &axum::http::HeaderMap) -> Self {
        let text = |key: &str| {
            headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            traceparent: text(TRACEPARENT),
            tracestate: text(TRACESTATE),
        }
    }
}

/// Continue `parent` in `span`, and link to it when `link` (a message's creation context);
/// then write the span's ids into its `trace_id` and `span_id` fields for the logs.
pub(crate) fn start(span: &Span, parent: Option<&Context>, link: bool) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = parent {
        let remote = parent.span().span_context().clone();
        if remote.is_valid() {
            let _ = span.set_parent(parent.clone());
            if link {
                span.add_link(remote);
            }
        }
    }
    record_ids(span);
}

/// The span of replaying a parked message (`event_id`) from the dead-letter queue to
/// `queue`: the root of a **new** trace that links to the message's `original` context.
/// Keep the span alive until the publish is confirmed.
pub fn replay_span(event_id: String, queue: &str, original: &Context) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(target: TARGET, "replay",
        otel.name = %format_args!("send {queue}"), otel.kind = "producer",
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    set(
        &span,
        &[
            (attr::MESSAGING_SYSTEM, "rabbitmq".to_string()),
            (attr::OPERATION_TYPE, "send".to_string()),
            (attr::OPERATION_NAME, "replay".to_string()),
            (attr::DESTINATION, queue.to_string()),
            (attr::MESSAGE_ID, event_id),
        ],
    );
    start_linked(&span, original.span().span_context());
    span
}

/// Start `span` as the root of a new trace that links to `linked`.
fn start_linked(span: &Span, linked: &SpanContext) {
    if span.is_disabled() {
        return;
    }
    let _ = span.set_parent(Context::new());
    if linked.is_valid() {
        span.add_link(linked.clone());
    }
    record_ids(span);
}

fn record_ids(span: &Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// Mark `span` failed with `error_type` (a short, closed set) and a description.
pub(crate) fn fail(span: &Span, error_type: &str, description: impl Into<String>) {
    if span.is_disabled() {
        return;
    }
    span.set_attribute(attr::ERROR_TYPE, error_type.to_string());
    span.set_status(Status::error(description.into()));
}

/// The messaging attributes a span of one message carries: `operation` as its type and
/// name, where it goes, and the message's ids.
pub(crate) fn message_attributes(
    operation: (&str, &str),
    destination: String,
    routing_key: &str,
    message_id: &str,
    conversation_id: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (attr::MESSAGING_SYSTEM, "rabbitmq".to_string()),
        (attr::OPERATION_TYPE, operation.0.to_string()),
        (attr::OPERATION_NAME, operation.1.to_string()),
        (attr::DESTINATION, destination),
        (attr::ROUTING_KEY, routing_key.to_string()),
        (attr::MESSAGE_ID, message_id.to_string()),
        (attr::CONVERSATION_ID, conversation_id.to_string()),
    ]
}

/// Set string attributes on `span`.
pub(crate) fn set(span: &Span, attributes: &[(&'static str, String)]) {
    if span.is_disabled() {
        return;
    }
    for (key, value) in attributes {
        span.set_attribute(*key, value.clone());
    }
}

/// Set an integer attribute on `span`.
pub(crate) fn set_int(span: &Span, key: &'static str, value: i64) {
    if !span.is_disabled() {
        span.set_attribute(key, value);
    }
}
