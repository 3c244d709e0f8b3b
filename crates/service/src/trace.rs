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
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an endpoint is configured).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How traces are exported, from the standard `OTEL_*` variables.
#[derive(Debug)]
pub struct TraceConfig {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: String,
    pub service_name: String,
    pub sampler: Sampler,
    pub resource: Vec<KeyValue>,
}

/// Read the trace settings; `None` when tracing is off (no endpoint, `OTEL_SDK_DISABLED`,
/// or `OTEL_TRACES_EXPORTER=none`). A bad value is an error naming its variable.
pub fn config_from(
    get: impl Fn(&str) -> Option<String>,
    default_service: &str,
) -> Result<Option<TraceConfig>, String> {
    let get = |name: &str| {
        get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match get("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER: {other:?} is not supported; use `otlp` or `none`"
            ))
        }
    }
    let endpoint = match (
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(url), _) => http_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?,
        (None, Some(base)) => format!(
            "{}/v1/traces",
            http_url("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?.trim_end_matches('/')
        ),
        (None, None) => return Ok(None),
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = get(name) {
            if protocol != "http/protobuf" {
                return Err(format!(
                    "{name}: {protocol:?} is not supported; use `http/protobuf` (a collector's OTLP/HTTP port, 4318)"
                ));
            }
            break;
        }
    }
    let resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
        Some(text) => {
            resource_attributes(&text).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?
        }
        None => Vec::new(),
    };
    let service_name = get("OTEL_SERVICE_NAME")
        .or_else(|| {
            resource
                .iter()
                .find(|kv| kv.key.as_str() == "service.name")
                .map(|kv| kv.value.to_string())
        })
        .unwrap_or_else(|| default_service.to_string());
    let sampler = sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
    Ok(Some(TraceConfig {
        endpoint,
        service_name,
        sampler,
        resource,
    }))
}

fn http_url(name: &str, url: &str) -> Result<String, String> {
    let parsed: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("{name}: {url:?} is not a URL ({e})"))?;
    match parsed.scheme_str() {
        Some("http" | "https") if parsed.host().is_some() => Ok(url.to_string()),
        _ => Err(format!(
            "{name}: {url:?} is not an http:// or https:// URL with a host"
        )),
    }
}

/// `key=value,key2=value2`, values percent-encoded (W3C Baggage octets).
fn resource_attributes(text: &str) -> Result<Vec<KeyValue>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("{pair:?} has an empty key"));
            }
            Ok(KeyValue::new(k.to_string(), percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{text:?} has a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, String> {
    // Checked whenever set, even for a sampler that does not read it: a typo there is still
    // a mistake to report.
    let ratio = match &arg {
        None => 1.0,
        Some(a) => a
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG: {a:?} is not a ratio from 0 to 1"))?,
    };
    Ok(match name.as_deref().unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: {other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ))
        }
    })
}

impl TraceConfig {
    /// The provider: a batch processor on its own thread, exporting over OTLP/HTTP.
    pub(crate) fn provider(self) -> Result<SdkTracerProvider, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(self.endpoint.clone())
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot make the exporter: {e}"))?;
        let resource = Resource::builder_empty()
            .with_attributes(self.resource)
            .with_service_name(self.service_name)
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(Counted::new(exporter, self.endpoint))
            .with_sampler(self.sampler)
            .with_resource(resource)
            .build())
    }
}

/// The tracer the export layer uses.
pub(crate) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("meeting-events")
}

/// An exporter that counts what it could not send and says so once per outage: export runs
/// on the batch processor's thread, so a collector that is down never holds up a request or
/// the consumer, and a batch it refuses is dropped, not retried.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> Counted<E> {
    fn new(inner: E, endpoint: String) -> Self {
        Self {
            inner,
            endpoint,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                crate::metric::trace_spans_exported_total().increment(n);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "the trace collector takes spans again");
                }
            }
            Err(e) => {
                crate::metric::trace_export_failures_total().increment(1);
                crate::metric::trace_spans_dropped_total().increment(n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "cannot export spans to the trace collector; they are dropped (counted in trace_spans_dropped_total) until it answers");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint_and_on_with_one() {
        assert!(config_from(env(&[]), "s").unwrap().is_none());
        let on = config_from(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            "s",
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, "http://c:4318/v1/traces");
        assert_eq!(on.service_name, "s");
        let exact = config_from(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
                ("OTEL_SERVICE_NAME", "named"),
            ]),
            "s",
        )
        .unwrap()
        .unwrap();
        assert_eq!(exact.endpoint, "http://t:9/x");
        assert_eq!(exact.service_name, "named");
        assert!(config_from(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            "s"
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let with = |extra: (&'static str, &'static str)| {
            config_from(
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), extra]),
                "s",
            )
            .unwrap_err()
        };
        assert!(with(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
            .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"));
        assert!(with(("OTEL_TRACES_SAMPLER", "sometimes")).starts_with("OTEL_TRACES_SAMPLER:"));
        assert!(with(("OTEL_TRACES_SAMPLER_ARG", "2")).starts_with("OTEL_TRACES_SAMPLER_ARG:"));
        assert!(
            with(("OTEL_RESOURCE_ATTRIBUTES", "novalue")).starts_with("OTEL_RESOURCE_ATTRIBUTES:")
        );
        assert!(with(("OTEL_TRACES_EXPORTER", "zipkin")).starts_with("OTEL_TRACES_EXPORTER:"));
        let bad = config_from(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
            "s",
        );
        assert!(bad.unwrap_err().starts_with("OTEL_EXPORTER_OTLP_ENDPOINT:"));
    }

    #[test]
    fn resource_attributes_are_percent_decoded_and_may_name_the_service() {
        let cfg = config_from(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=from-attrs,team=a%20b",
                ),
            ]),
            "s",
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.service_name, "from-attrs");
        assert!(cfg
            .resource
            .iter()
            .any(|kv| kv.key.as_str() == "team" && kv.value.as_str() == "a b"));
    }
}
