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
    let json =
        std::env::var(crate::config::LOG_FORMAT).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
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
        crate::metric::describe();
        handle
    })
}
