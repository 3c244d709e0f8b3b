//! The live routes (docs/architecture.md §12): the event streams, the cookie a browser's
//! `EventSource` authenticates with, and the meeting page.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::hub::{Hub, Position};
use super::subscriber::{self, Seat, Subscriber};
use crate::config::{LiveSettings, Secret};
use crate::http::auth::{bearer, Verified};
use crate::http::{ApiError, ApiPath, AppState, Auth, ErrorBody, UserName};
use crate::messaging::{unix_seconds, Broker};

/// The cookie `POST /live/session` sets: the bearer token itself, for `/live` only.
const COOKIE: &str = "live_session";
/// Meetings one stream may follow.
const MAX_MEETINGS: usize = 20;
/// Streams reading the broker's stream from an older offset at once, per replica.
const REPLAYS: usize = 32;
/// The most a stream asks for `reauth` ahead of its credential's expiry.
const REAUTH_AHEAD: Duration = Duration::from_secs(30);

/// What every live route shares.
pub(super) struct Live {
    pub(super) hub: Arc<Hub>,
    pub(super) broker: Broker,
    pub(super) settings: LiveSettings,
    pub(super) pool: AnyPool,
    auth: Arc<Auth>,
    /// Signs sign-in tokens in development mode only.
    dev_key: Option<Secret>,
    pub(super) stop: CancellationToken,
    /// Streams open per user.
    pub(super) per_user: Mutex<HashMap<String, usize>>,
    /// Streams reading the broker's stream for a resume.
    pub(super) replays: Arc<Semaphore>,
}

impl Live {
    pub(super) fn new(state: &AppState, hub: Arc<Hub>, stop: CancellationToken) -> Self {
        Self {
            hub,
            broker: state.broker.clone(),
            settings: state.settings.live.clone(),
            pool: state.pool.clone(),
            auth: state.auth.clone(),
            dev_key: state
                .settings
                .development
                .then(|| state.settings.auth.jwt_secret.clone())
                .flatten(),
            stop,
            per_user: Mutex::new(HashMap::new()),
            replays: Arc::new(Semaphore::new(REPLAYS)),
        }
    }

    fn development(&self) -> bool {
        self.dev_key.is_some()
    }
}

/// `POST /live/session`, behind the bearer token like any API route.
pub(super) fn session_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(open_session))
}

/// The streams (cookie or bearer, checked here), the page and its settings.
pub(super) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(follow_many))
        .routes(routes!(follow_one))
        .routes(routes!(close_session))
        .routes(routes!(dev_session))
        .routes(routes!(page_config))
        .routes(routes!(super::page::html))
        .routes(routes!(super::page::html_slash))
        .routes(routes!(super::page::script))
        .routes(routes!(super::page::style))
}

/// Whose cookie was set, and until when.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionView {
    user: String,
    /// When the cookie and the token end, in Unix seconds.
    expires_at: u64,
}

/// Set the stream's cookie from the bearer token.
#[utoipa::path(post, path = "/live/session", operation_id = "openLiveSession", tag = "live",
    security(("bearer" = [])),
    responses((status = 200, description = "The `live_session` cookie is set (`HttpOnly`, `SameSite=Strict`, `Path=/live`, `Secure` outside development mode), valid as long as the token",
        body = SessionView,
        headers(("Set-Cookie" = String, description = "live_session=<token>; Path=/live; HttpOnly; SameSite=Strict; Max-Age=<the token's remaining life>")))))]
async fn open_session(
    Extension(live): Extension<Arc<Live>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))??;
    let verified = live.auth.verify_token(token)?;
    let max_age = verified.expires_at.saturating_sub(unix_seconds());
    let secure = if live.development() { "" } else { "; Secure" };
    let cookie = format!(
        "{COOKIE}={token}; Path=/live; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    let mut response = Json(SessionView {
        user: verified.user,
        expires_at: verified.expires_at,
    })
    .into_response();
    let value = HeaderValue::from_str(&cookie)
        .map_err(|_| ApiError::BadRequest("the token cannot be set as a cookie".into()))?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

/// `DELETE /live/session`: forget the cookie.
#[utoipa::path(delete, path = "/live/session", operation_id = "closeLiveSession", tag = "live",
    responses((status = 204, description = "The cookie is cleared",
        headers(("Set-Cookie" = String, description = "live_session=; Max-Age=0")))))]
async fn close_session(Extension(live): Extension<Arc<Live>>) -> Response {
    let secure = if live.development() { "" } else { "; Secure" };
    let cookie = format!("{COOKIE}=; Path=/live; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A user name to sign in as (development mode).
#[derive(Deserialize, utoipa::ToSchema)]
struct DevSignIn {
    /// 1–200 characters.
    #[schema(inline)]
    user: UserName,
    /// Seconds the token lives, 5–86400; default an hour.
    #[schema(minimum = 5, maximum = 86400)]
    #[serde(default, deserialize_with = "whole_number")]
    ttl_seconds: Option<u64>,
}

/// A whole number as JSON Schema's `integer` allows it: `117` or `117.0`.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole, non-negative number"
        ))),
    }
}

/// A token signed with the development key.
#[derive(Serialize, utoipa::ToSchema)]
struct DevToken {
    token: String,
    expires_at: u64,
}

/// `POST /live/dev-session`: in development mode only, a token for a user name (what
/// `app token --dev` signs), so the page can sign in without an identity provider.
#[utoipa::path(post, path = "/live/dev-session", operation_id = "devSession", tag = "live",
    request_body = DevSignIn,
    responses(
        (status = 200, description = "A token for that user", body = DevToken),
        (status = 404, description = "`not_found`: not in development mode", body = ErrorBody)))]
async fn dev_session(
    Extension(live): Extension<Arc<Live>>,
    crate::http::ApiJson(body): crate::http::ApiJson<DevSignIn>,
) -> Result<Json<DevToken>, ApiError> {
    let Some(key) = &live.dev_key else {
        return Err(ApiError::NotFound(
            "no such route (sign-in by user name exists in development mode only)".into(),
        ));
    };
    let user = body.user.into_string();
    let ttl = body.ttl_seconds.unwrap_or(3600);
    if !(5..=86_400).contains(&ttl) {
        return Err(ApiError::Invalid(
            "ttl_seconds must be from 5 to 86400".into(),
        ));
    }
    let token = crate::http::auth::issue(key, &user, Duration::from_secs(ttl))
        .map_err(|e| ApiError::Internal(e.context("cannot sign a token")))?;
    Ok(Json(DevToken {
        token,
        expires_at: unix_seconds() + ttl,
    }))
}

/// What the meeting page needs to know.
#[derive(Serialize, utoipa::ToSchema)]
struct PageConfig {
    development: bool,
    #[schema(value_type = u64)]
    keepalive_ms: u128,
    /// Where the page reaches each role's API; a role not listed is on the page's origin.
    api: HashMap<String, String>,
}

/// `GET /live/config`: what the page needs to know.
#[utoipa::path(get, path = "/live/config", operation_id = "livePageConfig", tag = "live",
    responses((status = 200, description = "The page's settings", body = PageConfig)))]
async fn page_config(Extension(live): Extension<Arc<Live>>) -> Json<PageConfig> {
    Json(PageConfig {
        development: live.development(),
        keepalive_ms: live.settings.keepalive.as_millis(),
        api: live
            .settings
            .api_origins
            .iter()
            .map(|o| (o.role.name.to_string(), o.origin.clone()))
            .collect(),
    })
}

/// Which meetings, and where to resume.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Follow {
    /// The meetings' ids, comma-separated (1–20).
    ids: Option<String>,
    /// Resume after this event id (`<offset>-<tag>`), for a new `EventSource`; the
    /// `Last-Event-ID` header wins when both are sent.
    last_event_id: Option<String>,
}

/// Where to resume.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Resume {
    /// Resume after this event id (`<offset>-<tag>`), for a new `EventSource`; the
    /// `Last-Event-ID` header wins when both are sent.
    last_event_id: Option<String>,
}

/// What a stream answers: `text/event-stream`, each message with `id:` (its stream position),
/// `event:` (the routing key, or `resync` / `reauth`) and `data:` (the event's data with its
/// `event_id` and `timestamp`, as JSON).
const STREAM: &str = "A stream of server-sent events: a comment at once, then each event the user may read as `id:`, `event:` (the routing key) and `data:` (JSON), keep-alives, `event: resync` when the id to resume from is gone, `event: reauth` before the credential expires";

/// `GET /live/meetings/{id}`: follow one meeting.
#[utoipa::path(get, path = "/live/meetings/{id}", operation_id = "followMeeting", tag = "live",
    security(("live_session" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "The meeting's id"), Resume,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (the browser sends it when it reconnects)")),
    responses(
        (status = 200, description = STREAM, content_type = "text/event-stream", body = String),
        (status = 401, description = "`unauthorized`: no valid cookie or bearer token", body = ErrorBody),
        (status = 429, description = "`too_many`: the user holds `LIVE_STREAMS_PER_USER` streams on this replica", body = ErrorBody)))]
async fn follow_one(
    Extension(live): Extension<Arc<Live>>,
    ApiPath(id): ApiPath<String>,
    Query(q): Query<Resume>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    open_stream(live, vec![id], q.last_event_id, &headers)
}

/// `GET /live/meetings?ids=a,b`: follow several meetings on one stream.
#[utoipa::path(get, path = "/live/meetings", operation_id = "followMeetings", tag = "live",
    security(("live_session" = []), ("bearer" = [])),
    params(Follow,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (the browser sends it when it reconnects)")),
    responses(
        (status = 200, description = STREAM, content_type = "text/event-stream", body = String),
        (status = 401, description = "`unauthorized`: no valid cookie or bearer token", body = ErrorBody),
        (status = 429, description = "`too_many`: the user holds `LIVE_STREAMS_PER_USER` streams on this replica", body = ErrorBody)))]
async fn follow_many(
    Extension(live): Extension<Arc<Live>>,
    Query(q): Query<Follow>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ids = q
        .ids
        .as_deref()
        .map(|ids| {
            ids.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    open_stream(live, ids, q.last_event_id, &headers)
}

/// The caller's credential: a bearer header, else the cookie.
enum Credential {
    Valid(Verified),
    /// A cookie of ours whose token has expired: the page is asked to renew it.
    Expired,
}

fn credential(live: &Live, headers: &HeaderMap) -> Result<Credential, ApiError> {
    if let Some(token) = bearer(headers) {
        return Ok(Credential::Valid(live.auth.verify_token(token?)?));
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty());
    let Some(token) = cookie else {
        return Err(ApiError::Unauthorized(
            "no credential: POST /live/session with the bearer token first (it sets the stream's cookie), or send Authorization: Bearer <token>"
                .into(),
        ));
    };
    match live.auth.verify_token(&token) {
        Ok(v) => Ok(Credential::Valid(v)),
        Err(_) if live.auth.expired_only(&token) => Ok(Credential::Expired),
        Err(e) => Err(e),
    }
}

fn check_meetings(ids: Vec<String>) -> Result<HashSet<String>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::BadRequest(
            "name the meetings to follow: /live/meetings/{id} or /live/meetings?ids=a,b".into(),
        ));
    }
    if ids.len() > MAX_MEETINGS {
        return Err(ApiError::Invalid(format!(
            "one stream follows at most {MAX_MEETINGS} meetings, not {}",
            ids.len()
        )));
    }
    for id in &ids {
        if id.len() > 100 || id.chars().any(char::is_control) {
            return Err(ApiError::Invalid(format!(
                "{:?} is not a meeting id",
                crate::text::short(id)
            )));
        }
    }
    Ok(ids.into_iter().collect())
}

/// Answer a stream: check the credential, the meetings and the id to resume from, take a
/// seat for the user; the response's body is the stream.
fn open_stream(
    live: Arc<Live>,
    ids: Vec<String>,
    query_id: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let credential = credential(&live, headers)?;
    let meetings = check_meetings(ids)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or(query_id)
        .filter(|s| !s.trim().is_empty())
        .map(|s| Position::parse(&s))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let body = match credential {
        Credential::Expired => subscriber::expired(),
        Credential::Valid(verified) => {
            let seat = Seat::take(&live, &verified.user)?;
            let now = unix_seconds();
            let left = Duration::from_secs(verified.expires_at.saturating_sub(now));
            let reauth_in = left.saturating_sub(REAUTH_AHEAD.min(left / 4));
            Subscriber::new(
                live.clone(),
                seat,
                verified.user,
                meetings,
                resume,
                Instant::now() + reauth_in,
            )
            .into_body()
        }
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(body: &str) -> Result<Option<u64>, String> {
        serde_json::from_str::<DevSignIn>(body)
            .map(|b| b.ttl_seconds)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_whole_number_of_seconds_may_be_written_as_json_schema_allows() {
        assert_eq!(ttl(r#"{"user": "a", "ttl_seconds": 117}"#), Ok(Some(117)));
        assert_eq!(ttl(r#"{"user": "a", "ttl_seconds": 117.0}"#), Ok(Some(117)));
        assert_eq!(ttl(r#"{"user": "a"}"#), Ok(None));
        assert_eq!(ttl(r#"{"user": "a", "ttl_seconds": null}"#), Ok(None));
        assert!(ttl(r#"{"user": "a", "ttl_seconds": 117.5}"#).is_err());
        assert!(ttl(r#"{"user": "a", "ttl_seconds": -5}"#).is_err());
    }
}
