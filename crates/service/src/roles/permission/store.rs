//! Permission tables: `meetings` (known from `meeting.created`) and `permissions`.

use serde::Serialize;
use sqlx::{AnyConnection, AnyPool};

use crate::domain::MeetingRole;
use crate::envelope::now_rfc3339;
use crate::store::for_update;

/// A role held on a meeting.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(super) struct Permission {
    pub meeting_id: String,
    pub user_id: String,
    pub role: MeetingRole,
    pub granted_by: String,
    pub granted_at: String,
}

pub(super) async fn meeting_known(
    db: impl sqlx::any::AnyExecutor<'_>,
    id: &str,
) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM meetings WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

/// Whether the meeting is known, its row locked until the transaction ends: grants and
/// revocations of one meeting queue behind each other on every replica, so "not the last
/// manager" holds.
pub(super) async fn meeting_known_locked(tx: &mut AnyConnection, id: &str) -> sqlx::Result<bool> {
    let sql = format!("SELECT 1 FROM meetings WHERE id = $1{}", for_update(tx));
    let found: Option<i64> = sqlx::query_scalar(&sql).bind(id).fetch_optional(tx).await?;
    Ok(found.is_some())
}

/// The next version of `user`'s `role` on a meeting: each grant and revocation takes one,
/// under the meeting's lock, and its event carries it.
pub(super) async fn next_version(
    tx: &mut AnyConnection,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
) -> sqlx::Result<u64> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO permission_versions (meeting_id, user_id, role, version) VALUES ($1, $2, $3, 1)
         ON CONFLICT (meeting_id, user_id, role) DO UPDATE SET version = permission_versions.version + 1
         RETURNING version",
    )
    .bind(meeting_id)
    .bind(user)
    .bind(role)
    .fetch_one(tx)
    .await?;
    Ok(u64::try_from(version).unwrap_or(0))
}

/// Who created a known meeting.
pub(super) async fn creator(
    db: impl sqlx::any::AnyExecutor<'_>,
    id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT created_by FROM meetings WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Remember a meeting; `false` when it was known.
pub(super) async fn insert_meeting(
    tx: &mut AnyConnection,
    id: &str,
    title: &str,
    created_by: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO meetings (id, title, created_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(title)
    .bind(created_by)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub(super) async fn list(
    pool: &AnyPool,
    meeting_id: &str,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Permission>> {
    sqlx::query_as("SELECT * FROM permissions WHERE meeting_id = $1 ORDER BY granted_at, user_id, role LIMIT $2 OFFSET $3")
        .bind(meeting_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
}

pub(super) async fn holds(
    db: impl sqlx::any::AnyExecutor<'_>,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM permissions WHERE meeting_id = $1 AND user_id = $2 AND role = $3",
    )
    .bind(meeting_id)
    .bind(user)
    .bind(role)
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

pub(super) async fn count_role(
    db: impl sqlx::any::AnyExecutor<'_>,
    meeting_id: &str,
    role: MeetingRole,
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM permissions WHERE meeting_id = $1 AND role = $2")
        .bind(meeting_id)
        .bind(role)
        .fetch_one(db)
        .await
}

/// Grant; `false` when already held.
pub(super) async fn grant(
    tx: &mut AnyConnection,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
    by: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO permissions (meeting_id, user_id, role, granted_by, granted_at) VALUES ($1, $2, $3, $4, $5)
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
    tx: &mut AnyConnection,
    meeting_id: &str,
    user: &str,
    role: MeetingRole,
) -> sqlx::Result<bool> {
    let r =
        sqlx::query("DELETE FROM permissions WHERE meeting_id = $1 AND user_id = $2 AND role = $3")
            .bind(meeting_id)
            .bind(user)
            .bind(role)
            .execute(tx)
            .await?;
    Ok(r.rows_affected() == 1)
}
