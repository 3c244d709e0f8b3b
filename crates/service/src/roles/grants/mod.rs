//! The local copy of `permission.*` kept by roles that enforce "manager only", and the check
//! itself. Answers come from this table, never from a call to the permission service
//! (docs/architecture.md §2).

use sqlx::{AnyConnection, AnyPool};

use crate::domain::MeetingRole;
use crate::events::PermissionChange;
use crate::http::ApiError;
use crate::messaging::HandleError;
use crate::store::for_update;
use crate::store::{migrations, Migrations};

/// The `grants` table (versions 50–99), for roles that keep the copy.
pub(super) static MIGRATIONS: Migrations = migrations!(
    "src/roles/grants/migrations",
    ["0050_grants", "0051_grant_versions"]
);

/// Apply `permission.granted` (`granted = true`) or `permission.revoked`, in the order the
/// permission service made them: a change older than the last one applied for this user and
/// role (a replay from the dead-letter queue, a late retry) is refused and changes nothing.
pub(crate) async fn apply(
    tx: &mut AnyConnection,
    change: &PermissionChange,
    granted: bool,
) -> Result<(), HandleError> {
    let sql = format!(
        "SELECT version FROM grants WHERE meeting_id = $1 AND user_id = $2 AND role = $3{}",
        for_update(tx)
    );
    let last: Option<i64> = sqlx::query_scalar(&sql)
        .bind(&change.meeting_id)
        .bind(&change.user_id)
        .bind(change.role)
        .fetch_optional(&mut *tx)
        .await?;
    let version = i64::try_from(change.version).unwrap_or(i64::MAX);
    match last {
        Some(last) if !is_newer(version, last) => Err(HandleError::Reject(format!(
            "stale: version {version} of {}'s {} on meeting {} is not newer than version {last}, already applied",
            crate::text::short(&change.user_id),
            change.role,
            crate::text::short(&change.meeting_id),
        ))),
        _ => {
            sqlx::query(
                "INSERT INTO grants (meeting_id, user_id, role, version, active) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (meeting_id, user_id, role) DO UPDATE SET version = $4, active = $5",
            )
            .bind(&change.meeting_id)
            .bind(&change.user_id)
            .bind(change.role)
            .bind(version)
            .bind(i64::from(granted))
            .execute(&mut *tx)
            .await?;
            Ok(())
        }
    }
}

/// Whether a change of `version` comes after the last one applied. Unversioned changes (0,
/// from producers that do not number them) follow each other in arrival order, and never
/// override a numbered one.
fn is_newer(version: i64, last: i64) -> bool {
    version > last || (version == 0 && last == 0)
}

/// The managers of a meeting, as known here.
pub(crate) async fn managers(pool: &AnyPool, meeting_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM grants WHERE meeting_id = $1 AND role = $2 AND active = 1 ORDER BY user_id",
    )
    .bind(meeting_id)
    .bind(MeetingRole::Manager)
    .fetch_all(pool)
    .await
}

/// Whether `user` manages `meeting_id`, as known here.
pub(crate) async fn is_manager(
    db: impl sqlx::any::AnyExecutor<'_>,
    meeting_id: &str,
    user: &str,
) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM grants WHERE meeting_id = $1 AND user_id = $2 AND role = $3 AND active = 1",
    )
    .bind(meeting_id)
    .bind(user)
    .bind(MeetingRole::Manager)
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

/// 403 unless `user` manages `meeting_id`.
pub(crate) async fn require_manager(
    pool: &AnyPool,
    meeting_id: &str,
    user: &str,
) -> Result<(), ApiError> {
    if is_manager(pool, meeting_id, user).await? {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{} is not a manager of meeting {}",
            crate::text::short(user),
            crate::text::short(meeting_id)
        )))
    }
}

/// A unit of work for a change to `meeting_id` that only its managers may make: 403 unless
/// `user` manages it.
pub(crate) async fn managed_work(
    state: &crate::http::AppState,
    meeting_id: &str,
    user: &crate::http::User,
) -> Result<crate::messaging::outbox::Work, ApiError> {
    require_manager(&state.pool, meeting_id, &user.0).await?;
    Ok(state.outbox.begin().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_newer_change_applies() {
        assert!(is_newer(2, 1));
        assert!(!is_newer(1, 2), "a stale grant after a revocation");
        assert!(!is_newer(3, 3), "the same change again");
        assert!(is_newer(0, 0), "unversioned changes in arrival order");
        assert!(
            !is_newer(0, 4),
            "an unversioned change never overrides a numbered one"
        );
    }
}
