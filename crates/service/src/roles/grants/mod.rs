//! The local copy of `permission.*` kept by roles that enforce "manager only", and the check
//! itself. Answers come from this table, never from a call to the permission service
//! (docs/architecture.md §2).

use sqlx::{AnyConnection, AnyPool};

use crate::domain::MeetingRole;
use crate::events::PermissionChange;
use crate::http::ApiError;
use crate::messaging::HandleError;
use crate::store::{migrations, Migrations};

/// The `grants` table (versions 50–99), for roles that keep the copy.
pub(super) static MIGRATIONS: Migrations = migrations!(
    "src/roles/grants/migrations",
    ["0050_grants", "0051_grant_versions"]
);

/// Apply `permission.granted` (`granted = true`) or `permission.revoked`, in the order the
/// permission service made them: a change older than the last one applied for this user and
/// role (a replay from the dead-letter queue, a late retry) is refused and changes nothing.
///
/// One statement: the upsert changes an existing row only when the change is newer — a
/// higher version, or both unversioned (0, from producers that do not number them: they
/// follow each other in arrival order and never override a numbered one). The conflicting
/// row is locked while its version is compared, on PostgreSQL as under SQLite's one writer,
/// so two replicas applying changes to one grant queue behind each other.
pub(crate) async fn apply(
    tx: &mut AnyConnection,
    change: &PermissionChange,
    granted: bool,
) -> Result<(), HandleError> {
    let version = i64::try_from(change.version).unwrap_or(i64::MAX);
    let applied = sqlx::query(
        "INSERT INTO grants (meeting_id, user_id, role, version, active) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (meeting_id, user_id, role) DO UPDATE SET version = excluded.version, active = excluded.active
         WHERE excluded.version > grants.version OR (excluded.version = 0 AND grants.version = 0)",
    )
    .bind(&change.meeting_id)
    .bind(&change.user_id)
    .bind(change.role)
    .bind(version)
    .bind(i64::from(granted))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if applied == 1 {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar(
        "SELECT version FROM grants WHERE meeting_id = $1 AND user_id = $2 AND role = $3",
    )
    .bind(&change.meeting_id)
    .bind(&change.user_id)
    .bind(change.role)
    .fetch_one(&mut *tx)
    .await?;
    Err(HandleError::Reject(format!(
        "stale: version {version} of {}'s {} on meeting {} is not newer than version {last}, already applied",
        crate::text::short(&change.user_id),
        change.role,
        crate::text::short(&change.meeting_id),
    )))
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
    use crate::store::{Store, COMMON};

    /// The order rule, as the store applies it: the outcome of each change and the grant
    /// it leaves.
    #[tokio::test]
    async fn only_a_newer_change_applies() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/g.db", dir.path().display());
        let store = Store::open(
            &url,
            1,
            std::time::Duration::from_secs(3),
            &[&COMMON, &MIGRATIONS],
        )
        .await
        .unwrap();
        let change = |user: &str, version: u64| PermissionChange {
            meeting_id: "m".into(),
            user_id: user.into(),
            role: MeetingRole::Manager,
            version,
        };
        let cases = [
            ("a", 1, true, true, "the first change"),
            ("a", 2, false, true, "a newer revocation"),
            ("a", 1, true, false, "a stale grant after the revocation"),
            ("a", 2, true, false, "the same version again"),
            ("b", 0, true, true, "an unversioned change"),
            ("b", 0, false, true, "unversioned ones in arrival order"),
            ("b", 3, true, true, "a numbered one after them"),
            ("b", 0, false, false, "never unversioned over numbered"),
        ];
        for (user, version, granted, applies, what) in cases {
            let mut tx = store.begin().await.unwrap();
            match apply(&mut tx, &change(user, version), granted).await {
                Ok(()) => assert!(applies, "{what}: applied"),
                Err(HandleError::Reject(why)) => {
                    assert!(!applies && why.starts_with("stale:"), "{what}: {why}")
                }
                Err(other) => panic!("{what}: {other:?}"),
            }
            tx.commit().await.unwrap();
        }
        let manages = |user| is_manager(store.pool(), "m", user);
        assert!(!manages("a").await.unwrap(), "a revoked at 2");
        assert!(manages("b").await.unwrap(), "b granted at 3");
    }
}
