//! The meeting page the live role serves: plain HTML, CSS and JavaScript, no build step, no
//! framework, no third-party script — the example a front-end team reads to wire its own
//! `EventSource`, resume, `resync` and `reauth`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Only this origin's scripts and styles; `connect-src` widened by the page's settings at
/// request time is not needed: the APIs it calls are listed in `LIVE_API_ORIGINS`, whose
/// CORS the roles answer.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src *; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The meeting page.
#[utoipa::path(get, path = "/live", operation_id = "livePage", tag = "live",
    responses((status = 200, description = "The meeting page", content_type = "text/html", body = String)))]
pub(super) async fn html() -> Response {
    asset(include_str!("page/index.html"), "text/html; charset=utf-8")
}

/// The meeting page, at its folder's address.
#[utoipa::path(get, path = "/live/", operation_id = "livePageFolder", tag = "live",
    responses((status = 200, description = "The meeting page", content_type = "text/html", body = String)))]
pub(super) async fn html_slash() -> Response {
    html().await
}

/// The page's script.
#[utoipa::path(get, path = "/live/page.js", operation_id = "livePageScript", tag = "live",
    responses((status = 200, description = "The page's script", content_type = "text/javascript", body = String)))]
pub(super) async fn script() -> Response {
    asset(
        include_str!("page/page.js"),
        "text/javascript; charset=utf-8",
    )
}

/// The page's style sheet.
#[utoipa::path(get, path = "/live/page.css", operation_id = "livePageStyle", tag = "live",
    responses((status = 200, description = "The page's style sheet", content_type = "text/css", body = String)))]
pub(super) async fn style() -> Response {
    asset(include_str!("page/page.css"), "text/css; charset=utf-8")
}
