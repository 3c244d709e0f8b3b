//! Logs (readable by default, JSON with `LOG_FORMAT=json`; level from `RUST_LOG`) and the
//! process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Install the log subscriber once, without trace export. `default_level` applies when
/// `RUST_LOG` is unset.
pub fn init_logs(default_level: &str) {
    let _ = install(default_level, None);
}

/// Logs and, when an OTLP endpoint is configured (the standard `OTEL_*` variables), trace
/// export with `service` as the default `service.name`. Keep the returned guard alive: its
/// drop flushes the last spans. A bad `OTEL_*` value is an error naming the variable.
pub fn init(default_level: &str, service: &str) -> Result<Telemetry, String> {
    let config = crate::trace::config_from(|k| std::env::var(k).ok(), service)?;
    let provider = config.map(|c| c.provider()).transpose()?;
    let _ = install(default_level, provider.as_ref());
    Ok(Telemetry { provider })
}

/// Flushes and stops trace export when dropped.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
                tracing::warn!(error = %e, "the last spans could not be flushed to the trace collector");
            }
        }
    }
}

/// The subscriber: `RUST_LOG`'s filter for everything, with this crate's trace spans (target
/// [`crate::trace::TARGET`]) always let through; the log layer; and the export layer.
///
/// The filter is global, not per layer: a per-layer filter keeps each decision in a
/// thread-local until the next span or event uses it, so an `enabled` check that is not
/// followed by one (sqlx asks before each PostgreSQL query on the runtime's threads) left a
/// stale "disabled" that swallowed the next span on that thread.
fn install(
    default_level: &str,
    provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // The trace spans (a request, a delivery) are always open, whatever the level, so every
    // line written inside one carries its `trace_id` and `span_id`.
    let filter = match format!("{}=trace", crate::trace::TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        logs.boxed()
    };
    let export = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(crate::trace::tracer(p))
            .with_level(false)
            .with_target(false)
            .with_location(false)
            .with_threads(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(export)
        .try_init()
}

/// The process's Prometheus recorder, installed on first use.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("duration_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; then ours just renders nothing.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// HELP text and units of every metric the services emit.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "events_published_total",
        "Events published to the exchange and confirmed by the broker, by event type."
    );
    describe_counter!("events_unroutable_total", "Publishes the broker returned because no queue is bound for them; they stay in the outbox.");
    describe_counter!(
        "events_consumed_total",
        "Events taken off the queue, by event type and outcome (applied or duplicate)."
    );
    describe_counter!(
        "events_failed_total",
        "Handler failures, by event type (each attempt counts)."
    );
    describe_counter!(
        "events_retried_total",
        "Events sent to a retry queue to be tried again after a delay."
    );
    describe_counter!(
        "events_parked_total",
        "Messages parked in the dead-letter queue, by event type and reason."
    );
    describe_histogram!(
        "event_handler_duration_seconds",
        Unit::Seconds,
        "Time to apply one event, store transaction included."
    );
    describe_counter!(
        "events_set_aside_total",
        "Events the broker refused for good (403, 406), set aside in the outbox instead of retried."
    );
    describe_gauge!(
        "outbox_set_aside",
        "Events set aside in the outbox because the broker refuses them; they wait for an operator."
    );
    describe_gauge!(
        "outbox_backlog",
        "Events committed but not yet confirmed by the broker."
    );
    describe_gauge!(
        "outbox_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest event waiting in the outbox."
    );
    describe_gauge!(
        "broker_connected",
        "1 while the service holds a live broker connection, else 0."
    );
    describe_gauge!(
        "broker_blocked",
        "1 while the broker blocks this service's publishes (connection.blocked: a memory or disk alarm), else 0."
    );
    describe_gauge!(
        "consumer_paused",
        "1 while the consumer holds its deliveries because the store cannot be reached, else 0."
    );
    describe_gauge!(
        "consumer_attached",
        "1 while the service's consumer is attached to its queue, else 0."
    );
    describe_gauge!(
        "dead_letter_queue_messages",
        "Messages waiting in the service's dead-letter queue."
    );
    describe_counter!(
        "consumer_restarts_total",
        "Consumers replaced after they were lost, by service and reason."
    );
    describe_counter!(
        "consumer_stalls_total",
        "Consumers the watchdog found idle while messages waited, by service."
    );
    describe_gauge!(
        "live_stream_attached",
        "1 while the live role reads its RabbitMQ stream, else 0."
    );
    describe_gauge!(
        "live_stream_offset",
        "Stream offset of the last event the live role read into memory."
    );
    describe_gauge!(
        "live_stream_lag_seconds",
        Unit::Seconds,
        "How long after its publication the live role read the last event of its stream."
    );
    describe_gauge!(
        "runtime_tasks_alive",
        "Tasks alive in the process's async runtime (one per open connection, plus the role's own), read at each scrape."
    );
    describe_gauge!(
        "live_streams_open",
        "Server-sent event streams open to browsers."
    );
    describe_counter!(
        "live_streams_refused_total",
        "Streams refused because the user already has the most streams allowed open."
    );
    describe_counter!(
        "live_events_sent_total",
        "Events written to browser streams (each stream counts)."
    );
    describe_counter!(
        "live_resumes_total",
        "Streams resumed from an event id, by where the missed events came from (memory or stream)."
    );
    describe_counter!(
        "live_resyncs_total",
        "Resumes answered with resync: the id is no longer in the stream."
    );
    describe_counter!(
        "live_slow_disconnects_total",
        "Streams ended because the browser read too slowly and its buffer filled."
    );
    describe_counter!(
        "live_reauths_total",
        "Streams ended with reauth because their credential was about to expire."
    );
    describe_histogram!(
        "live_replay_seconds",
        Unit::Seconds,
        "Time to read missed events back from the stream for one resume."
    );
    describe_counter!(
        "trace_spans_exported_total",
        "Spans the trace collector accepted (OTLP/HTTP)."
    );
    describe_counter!(
        "trace_export_failures_total",
        "Span batches the trace collector did not take (unreachable, refused); each batch is dropped, not retried."
    );
    describe_counter!(
        "trace_spans_dropped_total",
        "Spans dropped because the trace collector did not take their batch."
    );
    describe_counter!(
        "http_requests_total",
        "HTTP requests, by method, route and status."
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by method and route."
    );
}
