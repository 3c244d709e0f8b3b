//! The live routes (docs/architecture.md §12): the event streams, the cookie a browser's
//! `EventSource` authenticates with, and the meeting page.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::hub::{Attach, Hub, Item, Position, Shown, Signal};
use super::stream::Replay;
use crate::config::{LiveSettings, Secret};
use crate::domain::MeetingRole;
use crate::http::auth::{bearer, Verified};
use crate::http::{ApiError, ApiPath, AppState, Auth, ErrorBody};
use crate::messaging::{unix_seconds, Broker};
use crate::roles::grants;

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
    hub: Arc<Hub>,
    broker: Broker,
    settings: LiveSettings,
    pool: AnyPool,
    auth: Arc<Auth>,
    /// Signs sign-in tokens in development mode only.
    dev_key: Option<Secret>,
    stop: CancellationToken,
    per_user: Mutex<HashMap<String, usize>>,
    replays: Arc<Semaphore>,
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
                .then(|| state.settings.jwt_secret.clone())
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
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    user: String,
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
    let user = crate::http::text_field("user", &body.user, 200)?;
    let ttl = body.ttl_seconds.unwrap_or(3600);
    if !(5..=86_400).contains(&ttl) {
        return Err(ApiError::Invalid(
            "ttl_seconds must be from 5 to 86400".into(),
        ));
    }
    let token = crate::http::auth::issue(key, &user, Duration::from_secs(ttl))
        .map_err(|e| ApiError::Internal(format!("cannot sign a token: {e}")))?;
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
        api: live.settings.api_origins.iter().cloned().collect(),
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
                crate::telemetry::short(id)
            )));
        }
    }
    Ok(ids.into_iter().collect())
}

/// Answer a stream: check the credential, the meetings and the id to resume from, take a
/// seat for the user and start the connection's task.
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
    let (tx, rx) = mpsc::channel::<Bytes>(live.settings.client_buffer.max(4));
    // A first byte at once: proxies and browsers see the stream open before any event.
    let _ = tx.try_send(Bytes::from_static(b": connected\n\n"));
    match credential {
        Credential::Expired => {
            metrics::counter!("live_reauths_total").increment(1);
            let _ = tx.try_send(reauth_frame());
        }
        Credential::Valid(verified) => {
            let seat = Seat::take(&live, &verified.user)?;
            let now = unix_seconds();
            let left = Duration::from_secs(verified.expires_at.saturating_sub(now));
            let reauth_in = left.saturating_sub(REAUTH_AHEAD.min(left / 4));
            let connection = Connection {
                live: live.clone(),
                user: verified.user,
                meetings,
                denied: HashSet::new(),
                granted: HashSet::new(),
                covered: resume,
                shown_id: resume,
                tx,
                spoke: AtomicBool::new(false),
                _seat: seat,
            };
            tokio::spawn(connection.run(resume, Instant::now() + reauth_in));
        }
    }
    Ok(sse_response(rx))
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn reauth_frame() -> Bytes {
    Bytes::from_static(
        b"event: reauth\ndata: {\"reason\":\"the credential expires: POST /live/session again and reconnect with ?last_event_id=\"}\n\n",
    )
}

fn resync_frame(why: &str) -> Bytes {
    let data = serde_json::json!({ "reason": why });
    Bytes::from(format!("event: resync\ndata: {data}\n\n"))
}

/// One of the streams a user may hold open on this replica.
struct Seat {
    live: Arc<Live>,
    user: String,
}

impl Seat {
    fn take(live: &Arc<Live>, user: &str) -> Result<Self, ApiError> {
        let mut open = live.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(user.to_string()).or_default();
        if *held >= live.settings.streams_per_user {
            metrics::counter!("live_streams_refused_total").increment(1);
            return Err(ApiError::TooMany(format!(
                "{} already holds {held} open streams on this replica (LIVE_STREAMS_PER_USER); one stream follows several meetings",
                crate::telemetry::short(user)
            )));
        }
        *held += 1;
        metrics::gauge!("live_streams_open").increment(1.0);
        Ok(Self {
            live: live.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut open = self.live.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.user) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.user);
            }
        }
        metrics::gauge!("live_streams_open").decrement(1.0);
    }
}

/// Where a connection reads from.
enum Source {
    Live(broadcast::Receiver<Signal>),
    /// Reading the broker's stream after `from`; `checked` once the item at `from` was
    /// seen to be the one the client got.
    Replay {
        replay: Box<Replay>,
        from: Position,
        checked: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

/// Why a connection ends.
enum End {
    /// The client went away, or its stream was ended for it.
    Gone,
    /// The client fell behind.
    Slow,
}

/// One open stream.
struct Connection {
    live: Arc<Live>,
    user: String,
    meetings: HashSet<String>,
    /// Meetings whose managing role this user lost in the stream, before the copy of the
    /// grants caught up with it.
    denied: HashSet<Arc<str>>,
    /// Meetings whose managing role this user gained in the stream (the copy may lag).
    granted: HashSet<Arc<str>>,
    /// The last position handled: everything up to it was sent or was not for this client.
    covered: Option<Position>,
    /// The last id the client was given.
    shown_id: Option<Position>,
    tx: mpsc::Sender<Bytes>,
    /// A frame was queued since the keep-alive timer last looked.
    spoke: AtomicBool,
    _seat: Seat,
}

impl Connection {
    async fn run(mut self, resume: Option<Position>, reauth_at: Instant) {
        let live = self.live.clone();
        let mut source = match live.hub.attach(resume) {
            Attach::Live { backlog, rx } => {
                if resume.is_some() {
                    metrics::counter!("live_resumes_total", "from" => "memory").increment(1);
                }
                if self.send_all(backlog).await.is_err() {
                    return;
                }
                Source::Live(rx)
            }
            Attach::Replay => {
                let from = resume.expect("a replay resumes from an id");
                metrics::counter!("live_resumes_total", "from" => "stream").increment(1);
                match self.replay(from).await {
                    Some(source) => source,
                    None => return,
                }
            }
            Attach::Resync(why) => {
                self.resync(why);
                return;
            }
        };
        // Keep-alives go to idle streams only: any frame restarts the wait. The first wait
        // is drawn from half to all of the interval, so streams opened together (a replica's
        // browsers reconnecting to this one) do not all fall idle in the same instant.
        let every = live.settings.keepalive;
        let first = somewhere_between(every / 2, every);
        let mut keepalive = tokio::time::interval_at(Instant::now() + first, every);
        let reauth = tokio::time::sleep_until(reauth_at);
        tokio::pin!(reauth);
        loop {
            let end = tokio::select! {
                _ = live.stop.cancelled() => {
                    // Spread the reconnects of every browser of this replica over 1–5 s.
                    let spread = somewhere_between(Duration::from_secs(1), Duration::from_secs(5));
                    let _ = self.tx.try_send(Bytes::from(format!("retry: {}\n: this replica is stopping\n\n", spread.as_millis())));
                    return;
                }
                _ = &mut reauth => {
                    metrics::counter!("live_reauths_total").increment(1);
                    let _ = self.tx.try_send(reauth_frame());
                    return;
                }
                _ = self.tx.closed() => return,
                _ = keepalive.tick() => self.keep_alive(&mut source).await,
                next = next_item(&mut source) => match next {
                    Next::Item(item) => self.handle(&item).await,
                    Next::Replayed(item) => self.replayed(&mut source, item).await,
                    Next::Reset => {
                        self.resync("the stream was declared anew");
                        return;
                    }
                    Next::Lagged => Err(End::Slow),
                    Next::Ended => Err(End::Gone),
                }
            };
            if self.spoke.swap(false, Ordering::Relaxed) {
                keepalive.reset();
            }
            match end {
                Ok(()) => {}
                Err(End::Gone) => return,
                Err(End::Slow) => {
                    metrics::counter!("live_slow_disconnects_total").increment(1);
                    tracing::info!(user = %crate::telemetry::short(&self.user), "a live stream fell behind and was ended; it resumes by id");
                    return;
                }
            }
        }
    }

    /// Start reading the broker's stream after `from`.
    async fn replay(&mut self, from: Position) -> Option<Source> {
        let live = self.live.clone();
        let permit = tokio::select! {
            p = live.replays.clone().acquire_owned() => p.ok()?,
            _ = self.tx.closed() => return None,
        };
        match Replay::start(&live.broker, &live.settings, from.offset).await {
            Ok(replay) => Some(Source::Replay {
                replay: Box::new(replay),
                from,
                checked: false,
                _permit: permit,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the live stream for a resume; the client retries");
                None
            }
        }
    }

    /// An item read from the broker's stream during a replay.
    async fn replayed(&mut self, source: &mut Source, item: Item) -> Result<(), End> {
        let Source::Replay { from, checked, .. } = source else {
            return Ok(());
        };
        if !*checked {
            if item.position.offset < from.offset {
                return Ok(()); // the chunk holding `from` starts earlier
            }
            if item.position != *from {
                self.resync(if item.position.offset > from.offset {
                    "the id is older than the stream holds"
                } else {
                    "the id names another event of this offset"
                });
                return Err(End::Gone);
            }
            *checked = true;
            return Ok(());
        }
        self.handle(&item).await?;
        self.join_live(source).await
    }

    /// Leave the replay for the live tail once the memory reaches back far enough.
    async fn join_live(&mut self, source: &mut Source) -> Result<(), End> {
        let (Source::Replay { checked: true, .. }, Some(covered)) = (&*source, self.covered) else {
            return Ok(());
        };
        if let Some(Attach::Live { backlog, rx }) = self.live.hub.join_after(covered) {
            if let Source::Replay { replay, .. } = std::mem::replace(source, Source::Live(rx)) {
                replay.close().await;
            }
            self.send_all(backlog).await?;
        }
        Ok(())
    }

    async fn send_all(&mut self, items: Vec<Arc<Item>>) -> Result<(), End> {
        for item in items {
            self.handle(&item).await?;
        }
        Ok(())
    }

    /// Send an item if it is for this client, in order, once.
    async fn handle(&mut self, item: &Item) -> Result<(), End> {
        if self
            .covered
            .is_some_and(|c| item.position.offset <= c.offset)
        {
            return Ok(());
        }
        self.covered = Some(item.position);
        let Some(shown) = &item.event else {
            return Ok(());
        };
        if !self.may_see(shown).await {
            return Ok(());
        }
        self.offer(shown.frame.clone())?;
        self.shown_id = Some(item.position);
        metrics::counter!("live_events_sent_total").increment(1);
        Ok(())
    }

    /// The read policy, at the moment of sending: any signed-in user reads a meeting's
    /// events, as over REST; `permission.*` only its managers, by the live role's copy of
    /// the grants — and never after the stream itself showed this user's role revoked, always
    /// after it showed it granted.
    async fn may_see(&mut self, shown: &Shown) -> bool {
        if !self.meetings.contains(&*shown.meeting_id) {
            return false;
        }
        let Some(subject) = &shown.subject else {
            return true;
        };
        if subject.user == self.user && subject.role == MeetingRole::Manager {
            if subject.granted {
                self.denied.remove(&shown.meeting_id);
                self.granted.insert(shown.meeting_id.clone());
            } else {
                self.granted.remove(&shown.meeting_id);
                self.denied.insert(shown.meeting_id.clone());
            }
        }
        if self.denied.contains(&shown.meeting_id) {
            return false;
        }
        // The stream itself made this user a manager: its own grant, and what follows it, are
        // shown even before the copy of the grants (fed by the queue) has caught up.
        if self.granted.contains(&shown.meeting_id) {
            return true;
        }
        match grants::is_manager(&self.live.pool, &shown.meeting_id, &self.user).await {
            Ok(manager) => manager,
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::Chain(&e), "cannot check a manager for a live permission event; not shown");
                false
            }
        }
    }

    /// Queue a frame; a full buffer means the client fell behind.
    fn offer(&self, frame: Bytes) -> Result<(), End> {
        self.spoke.store(true, Ordering::Relaxed);
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::Slow,
            mpsc::error::TrySendError::Closed(_) => End::Gone,
        })
    }

    /// A keep-alive: the id of the last position handled when it moved (the browser then
    /// resumes from there, however long nothing was for it), else a comment.
    async fn keep_alive(&mut self, source: &mut Source) -> Result<(), End> {
        self.join_live(source).await?;
        let moved = self.covered.filter(|c| Some(*c) != self.shown_id);
        let frame = match moved {
            Some(c) => {
                self.shown_id = Some(c);
                Bytes::from(format!("id: {c}\n\n"))
            }
            None => Bytes::from_static(b": keep-alive\n\n"),
        };
        self.offer(frame)
    }

    fn resync(&self, why: &'static str) {
        metrics::counter!("live_resyncs_total").increment(1);
        let _ = self.tx.try_send(resync_frame(why));
    }
}

enum Next {
    Item(Arc<Item>),
    Replayed(Item),
    Reset,
    Lagged,
    Ended,
}

async fn next_item(source: &mut Source) -> Next {
    match source {
        Source::Live(rx) => match rx.recv().await {
            Ok(Signal::Item(item)) => Next::Item(item),
            Ok(Signal::Reset) => Next::Reset,
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => Next::Ended,
        },
        Source::Replay { replay, .. } => match replay.next().await {
            Ok(Some(item)) => Next::Replayed(item),
            Ok(None) | Err(_) => Next::Ended,
        },
    }
}

/// A duration drawn at random from `from` to `to`, so that many connections doing the same
/// thing do not do it in the same instant.
fn somewhere_between(from: Duration, to: Duration) -> Duration {
    let fraction = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
    from + to.saturating_sub(from).mul_f64(fraction)
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
