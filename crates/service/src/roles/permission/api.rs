//! Permission routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Permission};
use sqlx::AnyConnection;

use crate::domain::MeetingRole;
use crate::events::{Event, PermissionChange};
use crate::http::{
    ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, Paging, User, UserName,
};

/// The permission routes, described as they are served.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, grant))
        .routes(routes!(revoke))
}

/// A grant made.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct GrantView {
    meeting_id: String,
    user_id: String,
    role: MeetingRole,
    granted_by: String,
}

/// A role to grant.
#[derive(Deserialize, utoipa::ToSchema)]
struct Grant {
    /// Who receives it (1–200 characters).
    #[schema(inline)]
    user_id: UserName,
    /// The role.
    role: MeetingRole,
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

/// Who holds which role on a meeting (its managers only).
#[utoipa::path(get, path = "/meetings/{id}/permissions", operation_id = "listPermissions", tag = "permission",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The meeting's id"), Paging),
    responses(
        (status = 200, description = "A page of roles held", body = Vec<Permission>),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: the meeting is not known here (yet)", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Vec<Permission>>, ApiError> {
    let (limit, offset) = q.bounds()?;
    known_meeting(&state.pool, &id).await?;
    // Who manages a meeting is for its managers to see.
    require_manager(&state.pool, &id, &user).await?;
    Ok(Json(store::list(&state.pool, &id, limit, offset).await?))
}

/// Grant a role on a meeting (its managers only).
#[utoipa::path(post, path = "/meetings/{id}/permissions", operation_id = "grantPermission", tag = "permission",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The meeting's id")),
    request_body = Grant,
    responses(
        (status = 201, description = "Granted", body = GrantView),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: the meeting is not known here (yet)", body = ErrorBody),
        (status = 409, description = "`conflict`: the user already holds the role", body = ErrorBody)))]
async fn grant(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Grant>,
) -> Result<(StatusCode, Json<GrantView>), ApiError> {
    let mut tx = state.outbox.begin().await?;
    locked_meeting(&mut tx, &id).await?;
    require_manager(&mut *tx, &id, &user).await?;
    let (user_id, role) = (body.user_id.into_string(), body.role);
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

/// Revoke a role (its managers only; a meeting keeps at least one manager).
#[utoipa::path(delete, path = "/meetings/{id}/permissions/{user_id}/{role}", operation_id = "revokePermission", tag = "permission",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The meeting's id"),
        ("user_id" = String, Path, description = "Who holds the role"),
        ("role" = MeetingRole, Path, description = "The role")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: the meeting is not known here, or the user does not hold the role", body = ErrorBody),
        (status = 409, description = "`conflict`: the last manager cannot be revoked", body = ErrorBody),
        (status = 422, description = "`invalid`: not a role", body = ErrorBody)))]
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
