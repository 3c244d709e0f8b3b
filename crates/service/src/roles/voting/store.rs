//! Voting tables: `ballots` and `votes`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::{AnyConnection, AnyPool};

use crate::domain::BallotStatus;
use crate::envelope::now_rfc3339;
use crate::store::{for_share, for_update, placeholders, Json};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(super) struct Ballot {
    pub id: String,
    pub election_id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub options: Json<Vec<String>>,
    pub status: BallotStatus,
    pub tally: Option<Json<BTreeMap<String, u64>>>,
    pub created_at: String,
    pub closed_at: Option<String>,
}

pub(super) async fn by_id(
    db: impl sqlx::any::AnyExecutor<'_>,
    id: &str,
) -> sqlx::Result<Option<Ballot>> {
    crate::store::row_by_id(db, "ballots", id, "").await
}

/// The ballot, locked until the transaction ends: `exclusive` to close it, shared to vote,
/// so a vote either commits before the tally is taken or finds the ballot closed.
pub(super) async fn by_id_locked(
    tx: &mut AnyConnection,
    id: &str,
    exclusive: bool,
) -> sqlx::Result<Option<Ballot>> {
    let lock = if exclusive {
        for_update(tx)
    } else {
        for_share(tx)
    };
    crate::store::row_by_id(tx, "ballots", id, lock).await
}

pub(super) async fn list(
    pool: &AnyPool,
    election_id: Option<&str>,
    meeting_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Ballot>> {
    let filters = [("election_id", election_id), ("meeting_id", meeting_id)];
    crate::store::page_of(pool, "ballots", filters, limit, offset).await
}

/// Open a ballot for an election; `false` when it already has one.
pub(super) async fn insert(tx: &mut AnyConnection, b: &Ballot) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO ballots (id, election_id, meeting_id, agenda_item_id, options, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (election_id) DO NOTHING",
    )
    .bind(&b.id)
    .bind(&b.election_id)
    .bind(&b.meeting_id)
    .bind(&b.agenda_item_id)
    .bind(&b.options)
    .bind(b.status)
    .bind(&b.created_at)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub(super) async fn votes_cast(
    db: impl sqlx::any::AnyExecutor<'_>,
    ballot_id: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM votes WHERE ballot_id = $1")
        .bind(ballot_id)
        .fetch_one(db)
        .await
}

/// Votes cast on each ballot of `ids` (absent: none), in one query.
pub(super) async fn votes_cast_of(
    pool: &AnyPool,
    ids: &[&str],
) -> sqlx::Result<HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT ballot_id, COUNT(*) FROM votes WHERE ballot_id IN ({}) GROUP BY ballot_id",
        placeholders(ids.len())
    );
    let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    Ok(query.fetch_all(pool).await?.into_iter().collect())
}

/// Record a vote; `false` when the user has voted already.
pub(super) async fn cast(
    tx: &mut AnyConnection,
    ballot_id: &str,
    user: &str,
    choice: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO votes (ballot_id, user_id, choice, cast_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (ballot_id, user_id) DO NOTHING",
    )
    .bind(ballot_id)
    .bind(user)
    .bind(choice)
    .bind(now_rfc3339())
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Count the votes (every option present, zero included) and close the ballot.
pub(super) async fn close(
    tx: &mut AnyConnection,
    ballot: &Ballot,
) -> sqlx::Result<(BTreeMap<String, u64>, u64)> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT choice, COUNT(*) FROM votes WHERE ballot_id = $1 GROUP BY choice")
            .bind(&ballot.id)
            .fetch_all(&mut *tx)
            .await?;
    let mut tally: BTreeMap<String, u64> =
        ballot.options.0.iter().map(|o| (o.clone(), 0)).collect();
    for (choice, n) in rows {
        tally.insert(choice, n as u64);
    }
    let cast = tally.values().sum();
    sqlx::query("UPDATE ballots SET status = $1, tally = $2, closed_at = $3 WHERE id = $4")
        .bind(BallotStatus::Closed)
        .bind(Json(&tally))
        .bind(now_rfc3339())
        .bind(&ballot.id)
        .execute(&mut *tx)
        .await?;
    Ok((tally, cast))
}
