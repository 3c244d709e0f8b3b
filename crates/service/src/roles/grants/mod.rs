//! The local copy of `permission.*` kept by roles that enforce "manager only", and the check
//! itself. Answers come from this table, never from a call to the permission service
//! (docs/architecture.md §2).

use sqlx::{AnyConnection, AnyPool};

use crate::domain::MeetingRole;
use crate::events::PermissionChange;
use crate::http::ApiError;
use crate::store::Migrations;

/// The `grants` table (versions 50–99), for roles that keep the copy.
pub(super) static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./src/roles/grants/migrations/sqlite"),
    postgres: sqlx::migrate!("./src/roles/grants/migrations/postgres"),
};

/// Apply `permission.granted` (`granted = true`) or `permission.revoked`.
pub(crate) async fn apply(
    tx: &mut AnyConnection,
    change: &PermissionChange,
    granted: bool,
) -> sqlx::Result<()> {
    let sql = if granted {
        "INSERT INTO grants (meeting_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM grants WHERE meeting_id = $1 AND user_id = $2 AND role = $3"
    };
    sqlx::query(sql)
        .bind(&change.meeting_id)
        .bind(&change.user_id)
        .bind(change.role)
        .execute(tx)
        .await?;
    Ok(())
}

/// The managers of a meeting, as known here.
pub(crate) async fn managers(pool: &AnyPool, meeting_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM grants WHERE meeting_id = $1 AND role = $2 ORDER BY user_id",
    )
    .bind(meeting_id)
    .bind(MeetingRole::Manager)
    .fetch_all(pool)
    .await
}

/// 403 unless `user` manages `meeting_id`.
pub(crate) async fn require_manager(
    pool: &AnyPool,
    meeting_id: &str,
    user: &str,
) -> Result<(), ApiError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM grants WHERE meeting_id = $1 AND user_id = $2 AND role = $3",
    )
    .bind(meeting_id)
    .bind(user)
    .bind(MeetingRole::Manager)
    .fetch_optional(pool)
    .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ApiError::Forbidden(format!(
            "{user} is not a manager of meeting {meeting_id}"
        ))),
    }
}
