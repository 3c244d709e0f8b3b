//! The AMQP side of trace propagation (docs/architecture.md §13): the W3C Trace Context of a
//! message in its `headers` table, and the context `app dlq replay` gives a replayed message.

use lapin::BasicProperties;

use super::headers;
use crate::trace::{Carrier, TRACEPARENT, TRACESTATE};

/// A [`Carrier`] read from and written to a message's properties.
pub trait AmqpCarrier: Sized {
    /// The values as an AMQP message carries them, read from its `headers` table.
    fn from_amqp(props: &BasicProperties) -> Self;
    /// `props` with these values in its `headers` table (others kept; missing ones removed).
    fn onto_amqp(&self, props: BasicProperties) -> BasicProperties;
}

impl AmqpCarrier for Carrier {
    fn from_amqp(props: &BasicProperties) -> Self {
        let text = |key: &str| headers::text(props, key);
        Self {
            traceparent: text(TRACEPARENT),
            tracestate: text(TRACESTATE),
        }
    }

    fn onto_amqp(&self, props: BasicProperties) -> BasicProperties {
        let mut set = Vec::new();
        let mut cleared = Vec::new();
        for (key, value) in [
            (TRACEPARENT, &self.traceparent),
            (TRACESTATE, &self.tracestate),
        ] {
            match value {
                Some(v) => set.push((key, headers::text_value(v))),
                None => cleared.push(key),
            }
        }
        headers::with_headers(&headers::without_headers(&props, &cleared), &set)
    }
}

/// The span of replaying a parked message from the dead-letter queue to `queue`: the root of
/// a **new** trace that links to the message's original context, and the message's properties
/// carrying that new context instead. Keep the span alive until the publish is confirmed.
pub fn replay(props: &BasicProperties, queue: &str) -> (tracing::Span, BasicProperties) {
    let event_id = props
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let original = Carrier::from_amqp(props).context();
    let span = crate::trace::replay_span(event_id, queue, &original);
    if span.is_none() {
        return (span, props.clone());
    }
    let props = Carrier::of(&span).onto_amqp(props.clone());
    (span, props)
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_context_reads_back_from_amqp_headers_unchanged_even_unsampled() {
        let carrier = Carrier {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into()),
            tracestate: Some("vendor=x".into()),
        };
        let props = carrier.onto_amqp(BasicProperties::default());
        assert_eq!(Carrier::from_amqp(&props), carrier);
        let cx = carrier.context();
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && !sc.is_sampled());
        let mut again = Carrier::default();
        TraceContextPropagator::new().inject_context(&cx, &mut again);
        assert_eq!(again, carrier);
        let cleared = Carrier::default().onto_amqp(props);
        assert_eq!(Carrier::from_amqp(&cleared), Carrier::default());
    }
}
