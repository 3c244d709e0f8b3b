//! Meeting tables: `meetings` and `agenda_items`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool};

use crate::domain::{ItemKind, ItemStatus, Outcome};
use crate::store::{for_update, Json};

/// A meeting as listed (without its agenda).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(super) struct Meeting {
    pub id: String,
    pub title: String,
    pub created_by: String,
    pub created_at: String,
    pub current_item_id: Option<String>,
}

/// The result an election item carries once `election.finalized` is recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(super) struct ItemResult {
    pub election_id: String,
    pub outcome: Outcome,
    pub winners: Vec<String>,
    pub tally: BTreeMap<String, u64>,
}

/// An item of a meeting's agenda.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(super) struct AgendaItem {
    pub id: String,
    pub meeting_id: String,
    pub position: i64,
    pub title: String,
    pub kind: ItemKind,
    /// How many an election item's election fills; 1 for a discussion.
    #[schema(minimum = 1)]
    pub seats: i64,
    pub status: ItemStatus,
    pub election_id: Option<String>,
    /// The election's result, once `election.finalized` is recorded.
    #[schema(value_type = Option<ItemResult>)]
    pub result: Option<Json<ItemResult>>,
}

pub(super) async fn meeting(
    db: impl sqlx::any::AnyExecutor<'_>,
    id: &str,
) -> sqlx::Result<Option<Meeting>> {
    sqlx::query_as("SELECT * FROM meetings WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The meeting, its row locked until the transaction ends: changes to its agenda queue
/// behind each other on every replica.
pub(super) async fn meeting_locked(
    tx: &mut AnyConnection,
    id: &str,
) -> sqlx::Result<Option<Meeting>> {
    let sql = format!("SELECT * FROM meetings WHERE id = $1{}", for_update(tx));
    sqlx::query_as(&sql).bind(id).fetch_optional(tx).await
}

pub(super) async fn list_meetings(
    pool: &AnyPool,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Meeting>> {
    sqlx::query_as("SELECT * FROM meetings ORDER BY created_at, id LIMIT $1 OFFSET $2")
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
}

pub(super) async fn insert_meeting(tx: &mut AnyConnection, m: &Meeting) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO meetings (id, title, created_by, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&m.id)
        .bind(&m.title)
        .bind(&m.created_by)
        .bind(&m.created_at)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn set_current_item(
    tx: &mut AnyConnection,
    meeting_id: &str,
    item_id: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE meetings SET current_item_id = $1 WHERE id = $2")
        .bind(item_id)
        .bind(meeting_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn agenda(
    db: impl sqlx::any::AnyExecutor<'_>,
    meeting_id: &str,
) -> sqlx::Result<Vec<AgendaItem>> {
    sqlx::query_as("SELECT * FROM agenda_items WHERE meeting_id = $1 ORDER BY position")
        .bind(meeting_id)
        .fetch_all(db)
        .await
}

pub(super) async fn item(
    db: impl sqlx::any::AnyExecutor<'_>,
    meeting_id: &str,
    item_id: &str,
) -> sqlx::Result<Option<AgendaItem>> {
    sqlx::query_as("SELECT * FROM agenda_items WHERE meeting_id = $1 AND id = $2")
        .bind(meeting_id)
        .bind(item_id)
        .fetch_optional(db)
        .await
}

pub(super) async fn insert_item(tx: &mut AnyConnection, item: &AgendaItem) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO agenda_items (id, meeting_id, position, title, kind, seats, status)
         VALUES ($1, $2, (SELECT COALESCE(MAX(position), 0) + 1 FROM agenda_items WHERE meeting_id = $3), $4, $5, $6, $7)",
    )
    .bind(&item.id)
    .bind(&item.meeting_id)
    .bind(&item.meeting_id)
    .bind(&item.title)
    .bind(item.kind)
    .bind(item.seats)
    .bind(item.status)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn set_item_status(
    tx: &mut AnyConnection,
    item_id: &str,
    status: ItemStatus,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE agenda_items SET status = $1 WHERE id = $2")
        .bind(status)
        .bind(item_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn finish_item(
    tx: &mut AnyConnection,
    item_id: &str,
    election_id: &str,
    result: &ItemResult,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE agenda_items SET status = $1, election_id = $2, result = $3 WHERE id = $4")
        .bind(ItemStatus::Done)
        .bind(election_id)
        .bind(Json(result))
        .bind(item_id)
        .execute(tx)
        .await?;
    Ok(())
}
