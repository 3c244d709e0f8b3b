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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Verifies tokens with the configured key.
pub(crate) struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub(crate) fn new(secret: &Secret, leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Only HS256 (so neither `none` nor another algorithm), `nbf` honoured, and only
        // a few seconds of clock skew.
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        Self {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// The user id of a valid token.
    pub(crate) fn verify(&self, token: &str) -> Result<String, ApiError> {
        Ok(self.verify_token(token)?.user)
    }

    /// The user of a valid token and when it expires.
    pub(crate) fn verify_token(&self, token: &str) -> Result<Verified, ApiError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?;
        valid_user(&data.claims.sub)?;
        Ok(Verified {
            user: data.claims.sub,
            expires_at: data.claims.exp,
        })
    }

    /// Whether `token` is signed with this key and valid but for its expiry (the live
    /// stream answers such a cookie with `reauth`, not 401).
    pub(crate) fn expired_only(&self, token: &str) -> bool {
        let mut lenient = self.validation.clone();
        lenient.validate_exp = false;
        decode::<Claims>(token, &self.key, &lenient)
            .is_ok_and(|d| valid_user(&d.claims.sub).is_ok())
    }
}

/// A token that verified.
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    pub(crate) user: String,
    /// `exp`, in Unix seconds.
    pub(crate) expires_at: u64,
}

/// The token of an `Authorization: Bearer <token>` header; `None` without the header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<Result<&str, ApiError>> {
    let header = headers.get(axum::http::header::AUTHORIZATION)?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    Some(
        header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be: Bearer <token>".into())),
    )
}

/// A user id from a token: not empty, no surrounding space, no control characters, at most
/// 200 characters.
fn valid_user(sub: &str) -> Result<(), ApiError> {
    let bad = if sub.is_empty() {
        Some("is empty")
    } else if sub.trim() != sub {
        Some("has surrounding space")
    } else if sub.chars().any(char::is_control) {
        Some("has control characters")
    } else if sub.chars().count() > 200 {
        Some("is over 200 characters")
    } else {
        None
    };
    match bad {
        Some(why) => Err(ApiError::Unauthorized(format!("the token's sub {why}"))),
        None => Ok(()),
    }
}

/// Sign a token for `user`, valid for `ttl`.
pub(crate) fn issue(secret: &Secret, user: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = crate::messaging::unix_seconds();
    let claims = Claims {
        sub: user.to_string(),
        iat: Some(now),
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
    let token = bearer(request.headers())
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))??;
    let user = state.auth.verify(token)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            &Secret::new("a-test-key-of-at-least-thirty-two-bytes"),
            Duration::from_secs(5),
        )
    }

    fn signed(claims: serde_json::Value, alg: Algorithm, key: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn only_valid_hs256_tokens_with_a_clean_sub_pass() {
        let key = "a-test-key-of-at-least-thirty-two-bytes";
        let now = crate::messaging::unix_seconds();
        let good = signed(
            serde_json::json!({"sub": "alice", "exp": now + 60}),
            Algorithm::HS256,
            key,
        );
        assert_eq!(auth().verify(&good).unwrap(), "alice");
        let cases = [
            (
                "expired",
                signed(
                    serde_json::json!({"sub": "alice", "exp": now - 30}),
                    Algorithm::HS256,
                    key,
                ),
            ),
            (
                "not yet valid",
                signed(
                    serde_json::json!({"sub": "alice", "exp": now + 60, "nbf": now + 30}),
                    Algorithm::HS256,
                    key,
                ),
            ),
            (
                "other key",
                signed(
                    serde_json::json!({"sub": "alice", "exp": now + 60}),
                    Algorithm::HS256,
                    "another-key-another-key-another-key",
                ),
            ),
            (
                "HS512",
                signed(
                    serde_json::json!({"sub": "alice", "exp": now + 60}),
                    Algorithm::HS512,
                    key,
                ),
            ),
            (
                "no exp",
                signed(serde_json::json!({"sub": "alice"}), Algorithm::HS256, key),
            ),
            (
                "padded sub",
                signed(
                    serde_json::json!({"sub": " alice", "exp": now + 60}),
                    Algorithm::HS256,
                    key,
                ),
            ),
            (
                "control in sub",
                signed(
                    serde_json::json!({"sub": "al\nice", "exp": now + 60}),
                    Algorithm::HS256,
                    key,
                ),
            ),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none","typ":"JWT"}"#),
                    b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now + 60))
                ),
            ),
        ];
        for (what, token) in cases {
            assert!(auth().verify(&token).is_err(), "{what} passed");
        }
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
