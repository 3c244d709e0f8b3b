//! How spans leave the process (docs/architecture.md §13): the settings read from the
//! standard `OTEL_*` variables, the tracer, and an exporter that counts what the collector
//! took and what it did not.

use super::*;

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
        get(crate::config::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
        get(crate::config::OTEL_EXPORTER_OTLP_ENDPOINT),
    ) {
        (Some(url), _) => http_url(crate::config::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, &url)?,
        (None, Some(base)) => format!(
            "{}/v1/traces",
            http_url(crate::config::OTEL_EXPORTER_OTLP_ENDPOINT, &base)?.trim_end_matches('/')
        ),
        (None, None) => return Ok(None),
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        crate::config::OTEL_EXPORTER_OTLP_PROTOCOL,
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
    let resource = match get(crate::config::OTEL_RESOURCE_ATTRIBUTES) {
        Some(text) => {
            resource_attributes(&text).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?
        }
        None => Vec::new(),
    };
    let service_name = get(crate::config::OTEL_SERVICE_NAME)
        .or_else(|| {
            resource
                .iter()
                .find(|kv| kv.key.as_str() == "service.name")
                .map(|kv| kv.value.to_string())
        })
        .unwrap_or_else(|| default_service.to_string());
    let sampler = sampler(
        get(crate::config::OTEL_TRACES_SAMPLER),
        get(crate::config::OTEL_TRACES_SAMPLER_ARG),
    )?;
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
