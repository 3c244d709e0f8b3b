//! The API error: one enum mapped to a status and a JSON body `{"error", "message"}`.
//! Internal failures are logged with their cause and answered without it.

use crate::messaging::EmitError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: the body or query does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one that does not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 408: the request took too long (a slow client).
    #[error("{0}")]
    Timeout(String),
    /// 413: the body is over `HTTP_MAX_BODY_BYTES`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 431: the request's target and headers are over [`super::MAX_HEAD_BYTES`].
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 415: the body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 409: the resource is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// 429: the caller holds as many of a resource as it may (open live streams).
    #[error("{0}")]
    TooMany(String),
    /// 422: well-formed, but a value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// 500: ours, not the caller's; the error and its sources are logged, never answered.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// 500: the store failed; the source is logged, never answered. A transaction that lost
    /// a race with another replica is run again by [`super::retry_lost_races`]; if it keeps
    /// losing, 503 `busy` with `Retry-After`.
    #[error("{}", match .0 {
        e if crate::store::is_retryable(e) => "the store is busy with concurrent changes; try again",
        e if crate::store::is_unavailable(e) => "the store is not answering; try again",
        _ => "internal error",
    })]
    Store(#[from] sqlx::Error),
}

/// The body of every error response: a stable code and a sentence for people.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, for programs: one of a fixed set of codes.
    pub(crate) error: ErrorCode,
    /// What went wrong, for people; its wording may change.
    pub(crate) message: String,
}

/// The stable error codes of the JSON error body (docs/http-api.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// 400: the body, path or query does not parse.
    BadRequest,
    /// 401: no credential, or one that does not verify.
    Unauthorized,
    /// 403: authenticated, but not allowed.
    Forbidden,
    /// 404: no such resource or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 408: the request took longer than `HTTP_REQUEST_TIMEOUT`.
    RequestTimeout,
    /// 409: the resource is not in a state that allows this.
    Conflict,
    /// 413: the body is over `HTTP_MAX_BODY_BYTES`.
    PayloadTooLarge,
    /// 431: the request's target and headers are over 16 KiB.
    HeadersTooLarge,
    /// 415: the body is not sent as `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed, but a value is not acceptable.
    Invalid,
    /// 429: the caller holds as many of a resource as it may.
    TooMany,
    /// 500: a failure of ours; the cause is logged, not answered.
    Internal,
    /// 503 with `Retry-After`: the store is busy with concurrent changes.
    Busy,
    /// 503 with `Retry-After`: the store is not answering.
    StoreUnavailable,
}

/// A response whose request lost a store race and may simply be run again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LostRace;

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::HeadersTooLarge,
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooMany),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Invalid),
            ApiError::Store(e) if crate::store::is_retryable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy)
            }
            ApiError::Store(e) if crate::store::is_unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
            ApiError::Internal(_) | ApiError::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let lost_race = matches!(&self, ApiError::Store(e) if crate::store::is_retryable(e));
        let unavailable = matches!(&self, ApiError::Store(e) if crate::store::is_unavailable(e));
        match &self {
            ApiError::Store(_) if lost_race => {}
            ApiError::Store(e) if unavailable => {
                tracing::warn!(cause = %crate::text::Chain(e), "request refused: the store is not answering")
            }
            ApiError::Internal(e) => {
                tracing::error!(cause = %crate::text::Chain(e.as_ref()), "request failed")
            }
            ApiError::Store(e) => {
                tracing::error!(cause = %crate::text::Chain(e), "request failed: store")
            }
            _ => {}
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message: self.to_string(),
            }),
        )
            .into_response();
        if unavailable {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if lost_race {
            // Marks the answer for `retry_lost_races`, which runs the request again.
            response.extensions_mut().insert(LostRace);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let text = crate::text::short(&r.body_text());
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".into(),
            ),
            _ => ApiError::BadRequest(text),
        }
    }
}

impl From<EmitError> for ApiError {
    fn from(e: EmitError) -> Self {
        match e {
            unsayable @ EmitError::Unsayable(_) => ApiError::Conflict(unsayable.to_string()),
            EmitError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(crate::text::short(&r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(crate::text::short(&r.body_text()))
    }
}

/// Path parameters whose rejections are answered as [`ApiError::BadRequest`].
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

/// A JSON object body whose parse errors are answered as [`ApiError::BadRequest`]. Only an
/// object is taken: serde would also read a struct from an array of its fields in order
/// (`["AGM"]` as `{"title": "AGM"}`), which the contract (`openapi.json`) does not allow.
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) =
            axum::Json::<serde_json::Value>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(body_error)
    }
}

/// A body that does not fit its type: 422 `invalid` when a field's value is refused (a
/// [`super::fields::Text`] out of bounds, a word not of its set), 400 otherwise.
fn body_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    // The path of the field, `title` or `agenda[2].title`; `.` is the body itself.
    let field = match e.path().to_string() {
        root if root == "." => "the body".to_string(),
        path => path,
    };
    let message = e.inner().to_string();
    if let Some(reason) = message.strip_prefix(super::fields::INVALID_VALUE) {
        return ApiError::Invalid(crate::text::short(&format!("{field} {reason}")));
    }
    if message.starts_with("unknown variant") {
        return ApiError::Invalid(crate::text::short(&format!("{field}: {message}")));
    }
    ApiError::BadRequest(crate::text::short(&format!(
        "the JSON body does not fit ({field}): {message}"
    )))
}

/// A query string whose parse errors are answered as [`ApiError::BadRequest`].
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

/// The query of a list endpoint that takes only a page.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Paging {
    /// How many, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// How many to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

impl Paging {
    /// `(limit, offset)`, checked as [`page`] does.
    pub(crate) fn bounds(&self) -> Result<(i64, i64), ApiError> {
        page(self.limit, self.offset)
    }
}

/// `limit` (default 100, 1–1000) and `offset` (default 0) of list endpoints.
pub(crate) fn page(limit: Option<i64>, offset: Option<i64>) -> Result<(i64, i64), ApiError> {
    let limit = limit.unwrap_or(100);
    let offset = offset.unwrap_or(0);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit must be from 1 to 1000".into()));
    }
    if offset < 0 {
        return Err(ApiError::Invalid("offset must not be negative".into()));
    }
    Ok((limit, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        title: super::super::Title,
        kind: crate::domain::ItemKind,
    }

    fn answer(body: serde_json::Value) -> (StatusCode, String) {
        let e = serde_path_to_error::deserialize::<_, Body>(body).unwrap_err();
        let error = body_error(e);
        (error.status_and_code().0, error.to_string())
    }

    #[test]
    fn a_refused_value_is_422_with_its_field_and_a_misfit_400() {
        use serde_json::json;
        assert_eq!(
            answer(json!({"title": " ", "kind": "election"})),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "title must not be empty".into()
            )
        );
        let (status, text) = answer(json!({"title": "AGM", "kind": "party"}));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(text.starts_with("kind: unknown variant `party`"), "{text}");
        let (status, text) = answer(json!({"title": 42, "kind": "election"}));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("(title)"), "{text}");
        let (status, text) = answer(json!({"kind": "election"}));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("(the body): missing field `title`"), "{text}");
    }
}
