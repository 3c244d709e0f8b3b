//! Voting routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store::{self, Ballot};
use crate::domain::BallotStatus;
use crate::events::{Event, VotingCompleted};
use crate::http::{page, ApiError, ApiJson, ApiPath, ApiQuery, AppState, User};
use crate::roles::grants;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ballots", get(list))
        .route("/ballots/{id}", get(get_one))
        .route("/ballots/{id}/votes", post(vote))
        .route("/ballots/{id}/close", post(close))
}

#[derive(Deserialize)]
struct Filter {
    election_id: Option<String>,
    meeting_id: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Deserialize)]
struct Vote {
    choice: String,
}

/// The ballot as shown to clients: the tally stays hidden while the ballot is open.
async fn view(db: impl sqlx::any::AnyExecutor<'_>, b: Ballot) -> Result<Value, ApiError> {
    let votes_cast = store::votes_cast(db, &b.id).await?;
    Ok(json!({
        "id": b.id,
        "election_id": b.election_id,
        "meeting_id": b.meeting_id,
        "agenda_item_id": b.agenda_item_id,
        "status": b.status,
        "options": b.options,
        "votes_cast": votes_cast,
        "tally": b.tally,
        "created_at": b.created_at,
        "closed_at": b.closed_at,
    }))
}

async fn find(db: impl sqlx::any::AnyExecutor<'_>, id: &str) -> Result<Ballot, ApiError> {
    found(id, store::by_id(db, id).await?)
}

fn found(id: &str, ballot: Option<Ballot>) -> Result<Ballot, ApiError> {
    ballot.ok_or_else(|| ApiError::NotFound(format!("no ballot {id}")))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(f): ApiQuery<Filter>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let (limit, offset) = page(f.limit, f.offset)?;
    let ballots = store::list(
        &state.pool,
        f.election_id.as_deref(),
        f.meeting_id.as_deref(),
        limit,
        offset,
    )
    .await?;
    let mut out = Vec::with_capacity(ballots.len());
    for b in ballots {
        out.push(view(&state.pool, b).await?);
    }
    Ok(Json(out))
}

async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let b = find(&state.pool, &id).await?;
    Ok(Json(view(&state.pool, b).await?))
}

async fn vote(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Vote>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut tx = state.store.begin().await?;
    let b = found(&id, store::by_id_locked(&mut tx, &id, false).await?)?;
    if b.status != BallotStatus::Open {
        return Err(ApiError::Conflict(format!("ballot {id} is closed")));
    }
    if !b.options.0.contains(&body.choice) {
        return Err(ApiError::Invalid(format!(
            "{:?} is not an option of ballot {id}: {:?}",
            crate::telemetry::short(&body.choice),
            b.options
                .0
                .iter()
                .take(10)
                .map(|o| crate::telemetry::short(o))
                .collect::<Vec<_>>()
        )));
    }
    if !store::cast(&mut tx, &id, &user.0, &body.choice).await? {
        return Err(ApiError::Conflict(format!(
            "{} has already voted on ballot {id}",
            user.0
        )));
    }
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"ballot_id": id, "user_id": user.0, "choice": body.choice})),
    ))
}

async fn close(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let b = find(&state.pool, &id).await?;
    grants::require_manager(&state.pool, &b.meeting_id, &user.0).await?;
    let mut tx = state.outbox.begin().await?;
    let b = found(&id, store::by_id_locked(&mut tx, &id, true).await?)?;
    if b.status != BallotStatus::Open {
        return Err(ApiError::Conflict(format!("ballot {id} is already closed")));
    }
    let (tally, votes_cast) = store::close(&mut tx, &b).await?;
    tx.emit(Event::VotingCompleted(VotingCompleted {
        ballot_id: b.id.clone(),
        election_id: b.election_id.clone(),
        meeting_id: b.meeting_id.clone(),
        tally,
        votes_cast,
    }))
    .await?;
    tx.commit().await?;
    let b = find(&state.pool, &id).await?;
    Ok(Json(view(&state.pool, b).await?))
}
