//! Every metric the services emit, defined once (the bottom floor: it imports nothing of
//! the crate): its name, kind, labels and HELP text. A call site names the metric by its
//! function and gives the label values, so no metric name or label key is written twice and
//! each metric's cardinality is visible here: `service` is a role's `SERVICE_NAME`,
//! `event_type` a routing key of the catalogue (or `other`), `route` a route template.

/// The handle a metric's function returns.
macro_rules! handle {
    (counter) => {
        metrics::Counter
    };
    (gauge) => {
        metrics::Gauge
    };
    (histogram) => {
        metrics::Histogram
    };
}

/// HELP text and unit of one metric, given to the recorder.
macro_rules! describe_one {
    (counter, $name:literal, $help:literal $(, $unit:ident)?) => {
        metrics::describe_counter!($name, $(metrics::Unit::$unit,)? $help)
    };
    (gauge, $name:literal, $help:literal $(, $unit:ident)?) => {
        metrics::describe_gauge!($name, $(metrics::Unit::$unit,)? $help)
    };
    (histogram, $name:literal, $help:literal $(, $unit:ident)?) => {
        metrics::describe_histogram!($name, $(metrics::Unit::$unit,)? $help)
    };
}

macro_rules! metrics_of {
    ($($kind:ident $fn:ident($($label:ident),*) = $name:literal $([$unit:ident])?: $help:literal;)*) => {
        $(
            #[doc = $help]
            pub(crate) fn $fn($($label: impl Into<metrics::SharedString>),*) -> handle!($kind) {
                metrics::$kind!($name $(, stringify!($label) => $label)*)
            }
        )*

        /// Give the recorder every metric's HELP text and unit.
        pub(crate) fn describe() {
            $(describe_one!($kind, $name, $help $(, $unit)?);)*
        }

        /// Every metric's name.
        #[cfg(test)]
        const NAMES: &[&str] = &[$($name),*];
    };
}

metrics_of! {
    counter events_published_total(service, event_type) = "events_published_total":
        "Events published to the exchange and confirmed by the broker, by event type.";
    counter events_unroutable_total(service, event_type) = "events_unroutable_total":
        "Publishes the broker returned because no queue is bound for them; they stay in the outbox.";
    counter events_unrouted_total(service, event_type) = "events_unrouted_total":
        "Events no deployed role consumes from a queue (only the live role watches them), handed to the unrouted queue instead of waiting in the outbox.";
    counter events_consumed_total(service, event_type, outcome) = "events_consumed_total":
        "Events taken off the queue, by event type and outcome (applied or duplicate).";
    counter events_failed_total(service, event_type) = "events_failed_total":
        "Handler failures, by event type (each attempt counts).";
    counter events_retried_total(service, event_type) = "events_retried_total":
        "Events sent to a retry queue to be tried again after a delay.";
    counter events_parked_total(service, event_type, reason) = "events_parked_total":
        "Messages parked in the dead-letter queue, by event type and reason.";
    histogram event_handler_duration_seconds(service, event_type) = "event_handler_duration_seconds" [Seconds]:
        "Time to apply one event, store transaction included.";
    counter events_set_aside_total(service, event_type) = "events_set_aside_total":
        "Events the broker refused for good (403, 406), set aside in the outbox instead of retried.";
    gauge outbox_set_aside(service) = "outbox_set_aside":
        "Events set aside in the outbox because the broker refuses them; they wait for an operator.";
    gauge outbox_backlog(service) = "outbox_backlog":
        "Events committed but not yet confirmed by the broker.";
    gauge outbox_oldest_age_seconds(service) = "outbox_oldest_age_seconds" [Seconds]:
        "Age of the oldest event waiting in the outbox.";
    histogram outbox_publish_wait_seconds(service) = "outbox_publish_wait_seconds" [Seconds]:
        "Time from an event's write to the outbox to the broker's confirm of its publish.";
    counter store_transactions_total() = "store_transactions_total":
        "Write transactions begun on this process's store: units of work and the relay's deletes.";
    gauge broker_connected(service) = "broker_connected":
        "1 while the service holds a live broker connection, else 0.";
    gauge broker_blocked(service) = "broker_blocked":
        "1 while the broker blocks this service's publishes (connection.blocked: a memory or disk alarm), else 0.";
    gauge consumer_paused(service) = "consumer_paused":
        "1 while the consumer holds its deliveries because the store cannot be reached, else 0.";
    gauge consumer_attached(service) = "consumer_attached":
        "1 while the service's consumer is attached to its queue, else 0.";
    gauge dead_letter_queue_messages(service, queue) = "dead_letter_queue_messages":
        "Messages waiting in the service's dead-letter queue.";
    counter consumer_restarts_total(service, reason) = "consumer_restarts_total":
        "Consumers replaced after they were lost, by service and reason.";
    counter consumer_stalls_total(service) = "consumer_stalls_total":
        "Consumers the watchdog found idle while messages waited, by service.";
    gauge live_stream_attached() = "live_stream_attached":
        "1 while the live role reads its RabbitMQ stream, else 0.";
    gauge live_stream_offset() = "live_stream_offset":
        "Stream offset of the last event the live role read into memory.";
    gauge live_stream_lag_seconds() = "live_stream_lag_seconds" [Seconds]:
        "How long after its publication the live role read the last event of its stream.";
    gauge runtime_tasks_alive() = "runtime_tasks_alive":
        "Tasks alive in the process's async runtime (one per open connection, plus the role's own), read at each scrape.";
    gauge live_streams_open() = "live_streams_open":
        "Server-sent event streams open to browsers.";
    counter live_streams_refused_total() = "live_streams_refused_total":
        "Streams refused because the user already has the most streams allowed open.";
    counter live_events_sent_total() = "live_events_sent_total":
        "Events written to browser streams (each stream counts).";
    counter live_resumes_total(from) = "live_resumes_total":
        "Streams resumed from an event id, by where the missed events came from (memory or stream).";
    counter live_resyncs_total() = "live_resyncs_total":
        "Resumes answered with resync: the id is no longer in the stream.";
    counter live_slow_disconnects_total() = "live_slow_disconnects_total":
        "Streams ended because the browser read too slowly and its buffer filled.";
    counter live_reauths_total() = "live_reauths_total":
        "Streams ended with reauth because their credential was about to expire.";
    histogram live_replay_seconds() = "live_replay_seconds" [Seconds]:
        "Time to read missed events back from the stream for one resume.";
    counter trace_spans_exported_total() = "trace_spans_exported_total":
        "Spans the trace collector accepted (OTLP/HTTP).";
    counter trace_export_failures_total() = "trace_export_failures_total":
        "Span batches the trace collector did not take (unreachable, refused); each batch is dropped, not retried.";
    counter trace_spans_dropped_total() = "trace_spans_dropped_total":
        "Spans dropped because the trace collector did not take their batch.";
    counter http_requests_total(service, method, route, status) = "http_requests_total":
        "HTTP requests, by method, route and status.";
    histogram http_request_duration_seconds(service, method, route) = "http_request_duration_seconds" [Seconds]:
        "HTTP request latency, by method and route.";
}

#[cfg(test)]
mod tests {
    use super::NAMES;

    #[test]
    fn names_are_unique_prometheus_names() {
        let mut seen = std::collections::HashSet::new();
        for name in NAMES {
            assert!(seen.insert(name), "{name} is defined twice");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn the_alerts_and_the_dashboard_name_only_metrics_defined_here() {
        let ours = [
            "events_",
            "event_",
            "outbox_",
            "broker_",
            "consumer_",
            "dead_letter_",
            "live_",
            "trace_",
            "http_",
            "runtime_",
        ];
        for (file, text) in [
            ("alerts.yml", include_str!("../../../monitoring/alerts.yml")),
            (
                "grafana-dashboard.json",
                include_str!("../../../monitoring/grafana-dashboard.json"),
            ),
        ] {
            let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for word in words.filter(|w| ours.iter().any(|p| w.starts_with(p))) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                if base == "event_type" {
                    continue; // a label
                }
                assert!(
                    NAMES.contains(&base) || NAMES.contains(&word),
                    "{file} names {word}, which no metric of metric.rs is"
                );
            }
        }
    }
}
