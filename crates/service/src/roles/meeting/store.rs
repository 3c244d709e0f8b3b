//! Meeting tables: `meetings` and `agenda_items`.

use serde::Serialize;
use sqlx::{SqliteConnection, SqlitePool};

use crate::domain::{ItemKind, ItemStatus};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(super) struct Meeting {
    pub id: String,
    pub title: String,
    pub created_by: String,
    pub created_at: String,
    pub current_item_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(super) struct AgendaItem {
    pub id: String,
    pub meeting_id: String,
    pub position: i64,
    pub title: String,
    pub kind: ItemKind,
    pub status: ItemStatus,
    pub election_id: Option<String>,
    #[sqlx(json(nullable))]
    pub result: Option<serde_json::Value>,
}

pub(super) async fn meeting(
    db: impl sqlx::SqliteExecutor<'_>,
    id: &str,
) -> sqlx::Result<Option<Meeting>> {
    sqlx::query_as("SELECT * FROM meetings WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub(super) async fn list_meetings(
    pool: &SqlitePool,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Meeting>> {
    sqlx::query_as("SELECT * FROM meetings ORDER BY created_at, id LIMIT ? OFFSET ?")
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
}

pub(super) async fn insert_meeting(tx: &mut SqliteConnection, m: &Meeting) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO meetings (id, title, created_by, created_at) VALUES (?, ?, ?, ?)")
        .bind(&m.id)
        .bind(&m.title)
        .bind(&m.created_by)
        .bind(&m.created_at)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn set_current_item(
    tx: &mut SqliteConnection,
    meeting_id: &str,
    item_id: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE meetings SET current_item_id = ? WHERE id = ?")
        .bind(item_id)
        .bind(meeting_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn agenda(
    db: impl sqlx::SqliteExecutor<'_>,
    meeting_id: &str,
) -> sqlx::Result<Vec<AgendaItem>> {
    sqlx::query_as("SELECT * FROM agenda_items WHERE meeting_id = ? ORDER BY position")
        .bind(meeting_id)
        .fetch_all(db)
        .await
}

pub(super) async fn item(
    db: impl sqlx::SqliteExecutor<'_>,
    meeting_id: &str,
    item_id: &str,
) -> sqlx::Result<Option<AgendaItem>> {
    sqlx::query_as("SELECT * FROM agenda_items WHERE meeting_id = ? AND id = ?")
        .bind(meeting_id)
        .bind(item_id)
        .fetch_optional(db)
        .await
}

pub(super) async fn insert_item(tx: &mut SqliteConnection, item: &AgendaItem) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO agenda_items (id, meeting_id, position, title, kind, status)
         VALUES (?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM agenda_items WHERE meeting_id = ?), ?, ?, ?)",
    )
    .bind(&item.id)
    .bind(&item.meeting_id)
    .bind(&item.meeting_id)
    .bind(&item.title)
    .bind(item.kind)
    .bind(item.status)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn set_item_status(
    tx: &mut SqliteConnection,
    item_id: &str,
    status: ItemStatus,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE agenda_items SET status = ? WHERE id = ?")
        .bind(status)
        .bind(item_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn finish_item(
    tx: &mut SqliteConnection,
    item_id: &str,
    election_id: &str,
    result: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE agenda_items SET status = ?, election_id = ?, result = ? WHERE id = ?")
        .bind(ItemStatus::Done)
        .bind(election_id)
        .bind(result.to_string())
        .bind(item_id)
        .execute(tx)
        .await?;
    Ok(())
}
