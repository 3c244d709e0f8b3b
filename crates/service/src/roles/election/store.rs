//! Election tables: `elections` and `nominations`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool};

use crate::domain::{ElectionStatus, Outcome};
use crate::envelope::now_rfc3339;
use crate::store::{for_update, placeholders, Json};

/// How an election ended, as stored and shown: cancelled (no candidates), or counted from
/// its ballot.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(super) struct ElectionResult {
    pub outcome: Outcome,
    pub winners: Vec<String>,
    pub tally: BTreeMap<String, u64>,
    /// The ballot counted (absent when cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub votes_cast: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ballot_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(super) struct Election {
    pub id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub title: String,
    pub seats: i64,
    pub status: ElectionStatus,
    pub result: Option<Json<ElectionResult>>,
    pub created_at: String,
    pub updated_at: String,
}

pub(super) async fn by_id(
    db: impl sqlx::any::AnyExecutor<'_>,
    id: &str,
) -> sqlx::Result<Option<Election>> {
    crate::store::row_by_id(db, "elections", id, "").await
}

/// The election, its row locked until the transaction ends (nominations, the start and the
/// result queue behind each other on every replica).
pub(super) async fn by_id_locked(
    tx: &mut AnyConnection,
    id: &str,
) -> sqlx::Result<Option<Election>> {
    let lock = for_update(tx);
    crate::store::row_by_id(tx, "elections", id, lock).await
}

/// The election of an agenda item, its row locked until the transaction ends.
pub(super) async fn by_item_locked(
    tx: &mut AnyConnection,
    meeting_id: &str,
    item_id: &str,
) -> sqlx::Result<Option<Election>> {
    let sql = format!(
        "SELECT * FROM elections WHERE meeting_id = $1 AND agenda_item_id = $2{}",
        for_update(tx)
    );
    sqlx::query_as(&sql)
        .bind(meeting_id)
        .bind(item_id)
        .fetch_optional(tx)
        .await
}

/// Elections, filtered by the given fields.
pub(super) async fn list(
    pool: &AnyPool,
    meeting_id: Option<&str>,
    agenda_item_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Election>> {
    let filters = [
        ("meeting_id", meeting_id),
        ("agenda_item_id", agenda_item_id),
    ];
    crate::store::page_of(pool, "elections", filters, limit, offset).await
}

/// Insert a new election in `nominating`; `false` when the item already has one.
pub(super) async fn insert(
    tx: &mut AnyConnection,
    id: &str,
    meeting_id: &str,
    item_id: &str,
    title: &str,
    seats: u32,
) -> sqlx::Result<bool> {
    let now = now_rfc3339();
    let r = sqlx::query(
        "INSERT INTO elections (id, meeting_id, agenda_item_id, title, seats, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (meeting_id, agenda_item_id) DO NOTHING",
    )
    .bind(id)
    .bind(meeting_id)
    .bind(item_id)
    .bind(title)
    .bind(i64::from(seats))
    .bind(ElectionStatus::Nominating)
    .bind(&now)
    .bind(&now)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub(super) async fn set_status(
    tx: &mut AnyConnection,
    id: &str,
    status: ElectionStatus,
    result: Option<&ElectionResult>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE elections SET status = $1, result = COALESCE($2, result), updated_at = $3 WHERE id = $4")
        .bind(status)
        .bind(result.map(Json))
        .bind(now_rfc3339())
        .bind(id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Candidates in nomination order.
pub(super) async fn candidates(
    db: impl sqlx::any::AnyExecutor<'_>,
    election_id: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT candidate FROM nominations WHERE election_id = $1 ORDER BY position")
        .bind(election_id)
        .fetch_all(db)
        .await
}

/// The candidates of each election of `ids`, in nomination order, in one query.
pub(super) async fn candidates_of(
    pool: &AnyPool,
    ids: &[&str],
) -> sqlx::Result<HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT election_id, candidate FROM nominations WHERE election_id IN ({})
         ORDER BY election_id, position",
        placeholders(ids.len())
    );
    let mut query = sqlx::query_as::<_, (String, String)>(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    for (election, candidate) in query.fetch_all(pool).await? {
        out.entry(election).or_default().push(candidate);
    }
    Ok(out)
}

/// Add a nomination; `false` when the candidate already stands.
pub(super) async fn nominate(
    tx: &mut AnyConnection,
    election_id: &str,
    candidate: &str,
    by: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO nominations (election_id, candidate, nominated_by, position, created_at)
         VALUES ($1, $2, $3, (SELECT COALESCE(MAX(position), 0) + 1 FROM nominations WHERE election_id = $1), $4)
         ON CONFLICT (election_id, candidate) DO NOTHING",
    )
    .bind(election_id)
    .bind(candidate)
    .bind(by)
    .bind(now_rfc3339())
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}
