//! Permission routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::store::{self, Permission};
use sqlx::AnyConnection;

use crate::domain::MeetingRole;
use crate::events::{Event, PermissionChange};
use crate::http::{page, text_field, ApiError, ApiJson, ApiPath, ApiQuery, AppState, User};

pub(super) fn router() -> Router<AppState> {
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

/// A grant made.
#[derive(Serialize)]
pub(super) struct GrantView {
    meeting_id: String,
    user_id: String,
    role: MeetingRole,
    granted_by: String,
}

#[derive(Deserialize)]
struct Grant {
    user_id: String,
    role: String,
}

async fn known_meeting(db: impl sqlx::any::AnyExecutor<'_>, id: &str) -> Result<(), ApiError> {
    known(id, store::meeting_known(db, id).await?)
}

/// The meeting, locked for a change of its permissions.
async fn locked_meeting(tx: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
    known(id, store::meeting_known_locked(tx, id).await?)
}

fn known(id: &str, known: bool) -> Result<(), ApiError> {
    if known {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no meeting {id} is known to the permission service"
        )))
    }
}

async fn require_manager(
    db: impl sqlx::any::AnyExecutor<'_>,
    id: &str,
    user: &User,
) -> Result<(), ApiError> {
    if store::holds(db, id, &user.0, MeetingRole::Manager).await? {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{} is not a manager of meeting {id}",
            user.0
        )))
    }
}

fn known_role(role: &str) -> Result<MeetingRole, ApiError> {
    role.parse().map_err(|e: crate::domain::UnknownWord| {
        ApiError::Invalid(format!(
            "role must be one of {:?}, not {role:?}",
            e.expected
        ))
    })
}

/// Whether a holder of `role` may lose it when `holders` users hold it: a meeting keeps
/// at least one manager.
fn may_revoke(role: MeetingRole, holders: i64) -> bool {
    match role {
        MeetingRole::Manager => holders > 1,
    }
}

async fn list(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Vec<Permission>>, ApiError> {
    let (limit, offset) = page(q.limit, q.offset)?;
    known_meeting(&state.pool, &id).await?;
    // Who manages a meeting is for its managers to see.
    require_manager(&state.pool, &id, &user).await?;
    Ok(Json(store::list(&state.pool, &id, limit, offset).await?))
}

async fn grant(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Grant>,
) -> Result<(StatusCode, Json<GrantView>), ApiError> {
    let mut tx = state.outbox.begin().await?;
    locked_meeting(&mut tx, &id).await?;
    require_manager(&mut *tx, &id, &user).await?;
    let user_id = text_field("user_id", &body.user_id, 200)?;
    let role = known_role(&body.role)?;
    if !store::grant(&mut tx, &id, &user_id, role, &user.0).await? {
        return Err(ApiError::Conflict(format!(
            "{user_id} already holds {role} on meeting {id}"
        )));
    }
    let version = store::next_version(&mut tx, &id, &user_id, role).await?;
    tx.emit(Event::PermissionGranted(PermissionChange {
        meeting_id: id.clone(),
        user_id: user_id.clone(),
        role,
        version,
    }))
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantView {
            meeting_id: id,
            user_id,
            role,
            granted_by: user.0,
        }),
    ))
}

async fn revoke(
    State(state): State<AppState>,
    user: User,
    ApiPath((id, user_id, role)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.outbox.begin().await?;
    locked_meeting(&mut tx, &id).await?;
    require_manager(&mut *tx, &id, &user).await?;
    let role = known_role(&role)?;
    if !store::holds(&mut *tx, &id, &user_id, role).await? {
        return Err(ApiError::NotFound(format!(
            "{user_id} does not hold {role} on meeting {id}"
        )));
    }
    if !may_revoke(role, store::count_role(&mut *tx, &id, role).await?) {
        return Err(ApiError::Conflict(format!(
            "{user_id} is the last {role} of meeting {id}; grant another first"
        )));
    }
    store::revoke(&mut tx, &id, &user_id, role).await?;
    let version = store::next_version(&mut tx, &id, &user_id, role).await?;
    tx.emit(Event::PermissionRevoked(PermissionChange {
        meeting_id: id,
        user_id,
        role,
        version,
    }))
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_manager_stays() {
        assert!(!may_revoke(MeetingRole::Manager, 1));
        assert!(!may_revoke(MeetingRole::Manager, 0));
        assert!(may_revoke(MeetingRole::Manager, 2));
    }

    #[test]
    fn only_known_roles_are_granted() {
        assert_eq!(known_role("manager").unwrap(), MeetingRole::Manager);
        let err = known_role("owner").unwrap_err().to_string();
        assert_eq!(err, "role must be one of [\"manager\"], not \"owner\"");
    }
}
