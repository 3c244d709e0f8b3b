//! Bearer tokens: HS256 JWTs whose `sub` is the user id.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::http::{ApiError, AppState};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Verifies tokens with the configured key.
pub(crate) struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub(crate) fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// The user id of a valid token.
    pub(crate) fn verify(&self, token: &str) -> Result<String, ApiError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?;
        if data.claims.sub.trim().is_empty() {
            return Err(ApiError::Unauthorized("token has an empty sub".into()));
        }
        Ok(data.claims.sub)
    }
}

/// Sign a token for `user`, valid for `ttl`.
pub(crate) fn issue(secret: &Secret, user: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = crate::messaging::unix_seconds();
    let claims = Claims {
        sub: user.to_string(),
        iat: now,
        exp: now + ttl.as_secs(),
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub(crate) struct User(pub(crate) String);

/// Middleware on every API route: rejects requests without a valid bearer token.
pub(crate) async fn require_user(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be: Bearer <token>".into()))?;
    let user = state.auth.verify(token.trim())?;
    request.extensions_mut().insert(User(user));
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))
    }
}
