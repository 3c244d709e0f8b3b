//! Permission tables: `meetings` (known from `meeting.created`) and `permissions`.

use serde::Serialize;
use sqlx::{SqliteConnection, SqlitePool};

use crate::domain::MeetingRole;
use crate::envelope::now_rfc3339;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(super) struct Permission {
    pub meeting_id: String,
    pub user_id: String,
    pub role: MeetingRole,
    pub granted_by: String,
    pub granted_at: String,
}

pub(super) async fn meeting_known(
    db: impl sqlx::SqliteExecutor<'_>,
    id: &str,
) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM meetings WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

/// Remember a meeting; `false` when it was known.
pub(super) async fn insert_meeting(
    tx: &mut SqliteConnection,
    id: &str,
    title: &str,
    created_by: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO meetings (id, title, created_by) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(title)
    .bind(created_by)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub(super) async fn list(
    pool: &SqlitePool,
    meeting_id: &str,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Permission>> {
    sqlx::query_as("SELECT * FROM permissions WHERE meeting_id = ? ORDER BY granted_at, user_id, role LIMIT ? OFFSET ?")
        .bind(meeting_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
}

pub(super) async fn holds(
    db: impl sqlx::SqliteExecutor<'_>,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM permissions WHERE meeting_id = ? AND user_id = ? AND role = ?",
    )
    .bind(meeting_id)
    .bind(user)
    .bind(role)
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

pub(super) async fn count_role(
    db: impl sqlx::SqliteExecutor<'_>,
    meeting_id: &str,
    role: MeetingRole,
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM permissions WHERE meeting_id = ? AND role = ?")
        .bind(meeting_id)
        .bind(role)
        .fetch_one(db)
        .await
}

/// Grant; `false` when already held.
pub(super) async fn grant(
    tx: &mut SqliteConnection,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
    by: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO permissions (meeting_id, user_id, role, granted_by, granted_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT DO NOTHING",
    )
    .bind(meeting_id)
    .bind(user)
    .bind(role)
    .bind(by)
    .bind(now_rfc3339())
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Revoke; `false` when not held.
pub(super) async fn revoke(
    tx: &mut SqliteConnection,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
) -> sqlx::Result<bool> {
    let r =
        sqlx::query("DELETE FROM permissions WHERE meeting_id = ? AND user_id = ? AND role = ?")
            .bind(meeting_id)
            .bind(user)
            .bind(role)
            .execute(tx)
            .await?;
    Ok(r.rows_affected() == 1)
}
