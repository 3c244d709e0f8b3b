//! Permission routes (design §5, port 8084).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store::{self, Permission};
use crate::envelope::{Event, PermissionChange};
use crate::http::{page, text_field, ApiError, ApiJson, ApiQuery, AppState, User};
use crate::roles::grants::MANAGER;

/// Roles this service grants. Only `manager` is enforced anywhere today.
const ROLES: &[&str] = &[MANAGER];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/meetings/{id}/permissions", get(list).post(grant))
        .route(
            "/meetings/{id}/permissions/{user_id}/{role}",
            delete(revoke),
        )
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Deserialize)]
struct Grant {
    user_id: String,
    role: String,
}

async fn known_meeting(db: impl sqlx::SqliteExecutor<'_>, id: &str) -> Result<(), ApiError> {
    if store::meeting_known(db, id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no meeting {id} is known to the permission service"
        )))
    }
}

async fn require_manager(
    db: impl sqlx::SqliteExecutor<'_>,
    id: &str,
    user: &User,
) -> Result<(), ApiError> {
    if store::holds(db, id, &user.0, MANAGER).await? {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{} is not a manager of meeting {id}",
            user.0
        )))
    }
}

fn known_role(role: &str) -> Result<(), ApiError> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "role must be one of {ROLES:?}, not {role:?}"
        )))
    }
}

async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Vec<Permission>>, ApiError> {
    let (limit, offset) = page(q.limit, q.offset)?;
    known_meeting(&state.pool, &id).await?;
    Ok(Json(store::list(&state.pool, &id, limit, offset).await?))
}

async fn grant(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Grant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut tx = crate::store::begin(&state.pool).await?;
    known_meeting(&mut *tx, &id).await?;
    require_manager(&mut *tx, &id, &user).await?;
    let user_id = text_field("user_id", &body.user_id, 200)?;
    known_role(&body.role)?;
    if !store::grant(&mut tx, &id, &user_id, &body.role, &user.0).await? {
        return Err(ApiError::Conflict(format!(
            "{user_id} already holds {} on meeting {id}",
            body.role
        )));
    }
    let change = PermissionChange {
        meeting_id: id.clone(),
        user_id: user_id.clone(),
        role: body.role.clone(),
    };
    state
        .commit_with(tx, &[Event::PermissionGranted(change)])
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"meeting_id": id, "user_id": user_id, "role": body.role, "granted_by": user.0}),
        ),
    ))
}

async fn revoke(
    State(state): State<AppState>,
    user: User,
    Path((id, user_id, role)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = crate::store::begin(&state.pool).await?;
    known_meeting(&mut *tx, &id).await?;
    require_manager(&mut *tx, &id, &user).await?;
    known_role(&role)?;
    if !store::holds(&mut *tx, &id, &user_id, &role).await? {
        return Err(ApiError::NotFound(format!(
            "{user_id} does not hold {role} on meeting {id}"
        )));
    }
    if role == MANAGER && store::count_role(&mut *tx, &id, MANAGER).await? <= 1 {
        return Err(ApiError::Conflict(format!(
            "{user_id} is the last manager of meeting {id}; grant another first"
        )));
    }
    store::revoke(&mut tx, &id, &user_id, &role).await?;
    let change = PermissionChange {
        meeting_id: id,
        user_id,
        role,
    };
    state
        .commit_with(tx, &[Event::PermissionRevoked(change)])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
