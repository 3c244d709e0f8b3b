//! HTTP plumbing shared by every role (docs/architecture.md §4): state, router assembly,
//! health, readiness, metrics, request metrics, CORS and auth.

pub(crate) mod auth;
mod error;
mod fields;
pub(crate) mod openapi;
mod serve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::AnyPool;
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;
use tracing::Instrument;

pub(crate) use auth::{Auth, User};
use error::LostRace;
pub(crate) use error::{page, ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, Paging};
pub(crate) use fields::{Text, Title, UserName};
pub(crate) use serve::{serve, Limits};

use crate::messaging::{Broker, Outbox};

/// The most a request's target and headers may take (as they are written on the wire);
/// a larger head is answered 431 with the JSON reason.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What every request handler of a role can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) service: Arc<str>,
    /// For reads; writes go through [`Outbox::begin`] or [`Store::begin`].
    pub(crate) pool: AnyPool,
    pub(crate) broker: Broker,
    pub(crate) auth: Arc<Auth>,
    /// Units of work whose events are committed with them.
    pub(crate) outbox: Outbox,
    /// The role's settings (limits the handlers enforce).
    pub(crate) settings: Arc<crate::config::Settings>,
    /// A role's own readiness check, if it has one: why it is not ready.
    pub(crate) role_ready: Arc<std::sync::OnceLock<RoleReady>>,
}

/// A role's own readiness check (the live role: its stream reader attached).
pub(crate) type RoleReady = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The role's routes behind auth, plus the probe routes, fallbacks and layers.
pub(crate) fn app(
    state: AppState,
    api: Router<AppState>,
    open: Router<AppState>,
    contract: String,
    settings: &crate::config::Settings,
) -> Router {
    let cors_origins = &settings.http.cors_allowed_origins;
    let (max_body, request_timeout) = (settings.http.max_body_bytes, settings.http.request_timeout);
    let api = api
        .route_layer(middleware::from_fn(move |request: Request, next: Next| {
            retry_lost_races(max_body, request, next)
        }))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_user,
        ));
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(openapi_json).layer(axum::Extension(Contract(contract.into()))),
        )
        .merge(api)
        .merge(open)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(error::ErrorBody {
                    error: error::ErrorCode::MethodNotAllowed,
                    message: "method not allowed on this route".into(),
                }),
            )
        })
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            within(request_timeout, request, next)
        }))
        .layer(middleware::from_fn(head_within_limit))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            track_requests,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state);
    if !cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                ])
                .max_age(Duration::from_secs(600)),
        );
    }
    router
}

/// The liveness probe's body.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// The readiness probe's body: `ready`, or `not_ready` with the reasons.
#[derive(Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    /// What an operator should know that does not stop the role taking work: the broker
    /// blocking its publishes during a resource alarm (events wait in the outbox).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// Whom the consumer believes (`MQ_TRUST`).
    #[schema(value_type = String, example = "strict")]
    trust: &'static str,
}

/// This role's OpenAPI document, rendered once at start.
#[derive(Clone)]
struct Contract(Arc<str>);

/// This role's HTTP contract (`app openapi` prints every role's as one document).
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "probes",
    responses((status = 200, description = "The OpenAPI 3.1 document of this role's routes", content_type = "application/json", body = Object)))]
async fn openapi_json(axum::Extension(Contract(doc)): axum::Extension<Contract>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// `200 {"status":"ok"}` while the process lives (the liveness probe).
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "probes",
    responses((status = 200, description = "The process lives", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// 200 only when the broker is connected, the consumer attached and the store answers.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, with the reasons", body = Readiness)))]
async fn ready(State(state): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if !state.broker.is_connected() {
        reasons.push("broker: not connected".to_string());
    }
    if let Err(why) = state.broker.consumer_status() {
        reasons.push(format!("consumer: {why}"));
    }
    if let Some(why) = state.role_ready.get().and_then(|check| check()) {
        reasons.push(why);
    }
    let store = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await;
    match store {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => reasons.push(format!("store: {}", crate::text::Chain(&e))),
        Err(_) => reasons.push("store: no answer within 2s".to_string()),
    }
    let trust = state.broker.settings().trust.as_str();
    let warnings: Vec<String> = state.broker.blocked().into_iter().collect();
    if reasons.is_empty() {
        Json(Readiness {
            status: "ready",
            reasons,
            warnings,
            trust,
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not_ready",
                reasons,
                warnings,
                trust,
            }),
        )
            .into_response()
    }
}

/// Prometheus text exposition of this process's metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
async fn metrics() -> Response {
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    crate::metric::runtime_tasks_alive().set(tasks as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::prometheus().render(),
    )
        .into_response()
}

/// Count requests by route and status, and time them.
async fn track_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // A closed set: an invented method must not become a new series.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let span = server_span(method, &route, &request);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    if !span.is_disabled() {
        let code = response.status().as_u16();
        crate::trace::set_int(&span, crate::trace::attr::HTTP_STATUS, i64::from(code));
        if code >= 500 {
            crate::trace::fail(&span, &code.to_string(), "server error");
        }
    }
    let status = response.status().as_u16().to_string();
    let service = state.service.to_string();
    crate::metric::http_requests_total(service.clone(), method, route.clone(), status).increment(1);
    crate::metric::http_request_duration_seconds(service, method, route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The SERVER span of a request (when traces are exported), named by its route template and
/// continuing the caller's `traceparent`.
fn server_span(method: &str, route: &str, request: &Request) -> tracing::Span {
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(target: crate::trace::TARGET, "request",
        otel.name = %format_args!("{method} {route}"), otel.kind = "server",
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    let parent = crate::trace::Carrier::from_http(request.headers()).context();
    crate::trace::set(
        &span,
        &[
            (crate::trace::attr::HTTP_METHOD, method.to_string()),
            (crate::trace::attr::HTTP_ROUTE, route.to_string()),
            (
                crate::trace::attr::URL_PATH,
                request.uri().path().to_string(),
            ),
        ],
    );
    crate::trace::start(&span, Some(&parent), false);
    span
}

/// Answer 431 when the request's target and headers are over [`MAX_HEAD_BYTES`], counted
/// as HTTP/1.1 writes them (hyper's own ceiling, above this, answers without a body).
async fn head_within_limit(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if target + headers > MAX_HEAD_BYTES {
        return ApiError::HeadersTooLarge(format!(
            "the request's target and headers take {} bytes; at most {MAX_HEAD_BYTES} are read",
            target + headers
        ))
        .into_response();
    }
    next.run(request).await
}

/// Answer 408 when a request, body included, takes longer than `limit`.
async fn within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::Timeout(format!("the request took longer than {limit:?}")).into_response()
        }
    }
}

/// Run a request again when its transaction lost a race with another replica (PostgreSQL
/// serialization failure or deadlock), a bounded number of times, so the caller sees the
/// result of a clean run rather than the race. Reads never write, so only writes are kept
/// for a second run.
async fn retry_lost_races(max_body: usize, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, max_body).await else {
        return ApiError::PayloadTooLarge(format!("the request body is over {max_body} bytes"))
            .into_response();
    };
    let mut attempt = 0;
    loop {
        let mut again = Request::new(axum::body::Body::from(bytes.clone()));
        *again.method_mut() = parts.method.clone();
        *again.uri_mut() = parts.uri.clone();
        *again.version_mut() = parts.version;
        *again.headers_mut() = parts.headers.clone();
        *again.extensions_mut() = parts.extensions.clone();
        let response = next.clone().run(again).await;
        if response.extensions().get::<LostRace>().is_none()
            || attempt >= crate::store::RACE_RETRIES
        {
            return response;
        }
        crate::store::race_backoff(attempt).await;
        attempt += 1;
    }
}
