//! Voting routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Ballot};
use crate::domain::BallotStatus;
use crate::events::{Event, VoteCounted, VotingCompleted};
use crate::http::{page, ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, User};
use crate::roles::grants;

/// The voting routes, described as they are served.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(vote))
        .routes(routes!(close))
}

/// Which ballots, and a page of them.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Only this election's.
    election_id: Option<String>,
    /// Only this meeting's.
    meeting_id: Option<String>,
    /// How many, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// How many to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A vote.
#[derive(Deserialize, utoipa::ToSchema)]
struct Vote {
    /// One of the ballot's options.
    choice: String,
}

/// The ballot as shown to clients: how many have voted, never who; the tally stays empty
/// (`null`) while the ballot is open.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BallotView {
    id: String,
    election_id: String,
    meeting_id: String,
    agenda_item_id: String,
    status: BallotStatus,
    /// The candidates, as the election opened the ballot.
    #[schema(value_type = Vec<String>)]
    options: crate::store::Json<Vec<String>>,
    votes_cast: i64,
    /// Votes per option, once closed.
    #[schema(value_type = Option<BTreeMap<String, u64>>)]
    tally: Option<crate::store::Json<BTreeMap<String, u64>>>,
    created_at: String,
    closed_at: Option<String>,
}

impl BallotView {
    fn new(b: Ballot, votes_cast: i64) -> Self {
        Self {
            id: b.id,
            election_id: b.election_id,
            meeting_id: b.meeting_id,
            agenda_item_id: b.agenda_item_id,
            status: b.status,
            options: b.options,
            votes_cast,
            tally: b.tally,
            created_at: b.created_at,
            closed_at: b.closed_at,
        }
    }
}

/// A vote accepted, shown to the voter who cast it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct VoteView {
    ballot_id: String,
    user_id: String,
    choice: String,
}

/// The ballot with its count of votes.
async fn view(db: impl sqlx::any::AnyExecutor<'_>, b: Ballot) -> Result<BallotView, ApiError> {
    let votes_cast = store::votes_cast(db, &b.id).await?;
    Ok(BallotView::new(b, votes_cast))
}

async fn find(db: impl sqlx::any::AnyExecutor<'_>, id: &str) -> Result<Ballot, ApiError> {
    found(id, store::by_id(db, id).await?)
}

fn found(id: &str, ballot: Option<Ballot>) -> Result<Ballot, ApiError> {
    ballot.ok_or_else(|| ApiError::NotFound(format!("no ballot {id}")))
}

/// The ballots, oldest first, with how many voted (never who).
#[utoipa::path(get, path = "/ballots", operation_id = "listBallots", tag = "voting",
    security(("bearer" = [])),
    params(Filter),
    responses((status = 200, description = "A page of ballots", body = Vec<BallotView>)))]
async fn list(
    State(state): State<AppState>,
    ApiQuery(f): ApiQuery<Filter>,
) -> Result<Json<Vec<BallotView>>, ApiError> {
    let (limit, offset) = page(f.limit, f.offset)?;
    let ballots = store::list(
        &state.pool,
        f.election_id.as_deref(),
        f.meeting_id.as_deref(),
        limit,
        offset,
    )
    .await?;
    // The page's vote counts in one query, not one per ballot.
    let ids: Vec<&str> = ballots.iter().map(|b| b.id.as_str()).collect();
    let counts = store::votes_cast_of(&state.pool, &ids).await?;
    Ok(Json(
        ballots
            .into_iter()
            .map(|b| {
                let cast = counts.get(&b.id).copied().unwrap_or(0);
                BallotView::new(b, cast)
            })
            .collect(),
    ))
}

/// One ballot.
#[utoipa::path(get, path = "/ballots/{id}", operation_id = "getBallot", tag = "voting",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The ballot's id")),
    responses(
        (status = 200, description = "The ballot", body = BallotView),
        (status = 404, description = "`not_found`: no such ballot", body = ErrorBody)))]
async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BallotView>, ApiError> {
    let b = find(&state.pool, &id).await?;
    Ok(Json(view(&state.pool, b).await?))
}

/// Vote once on an open ballot.
#[utoipa::path(post, path = "/ballots/{id}/votes", operation_id = "vote", tag = "voting",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The ballot's id")),
    request_body = Vote,
    responses(
        (status = 201, description = "Counted", body = VoteView),
        (status = 404, description = "`not_found`: no such ballot", body = ErrorBody),
        (status = 409, description = "`conflict`: the ballot is closed, or you have voted", body = ErrorBody)))]
async fn vote(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Vote>,
) -> Result<(StatusCode, Json<VoteView>), ApiError> {
    // The ballot's row is held until commit, so each vote counted names its own total.
    let mut tx = state.outbox.begin().await?;
    let b = found(&id, store::by_id_locked(&mut tx, &id, true).await?)?;
    if b.status != BallotStatus::Open {
        return Err(ApiError::Conflict(format!("ballot {id} is closed")));
    }
    if !b.options.0.contains(&body.choice) {
        return Err(ApiError::Invalid(format!(
            "{:?} is not an option of ballot {id}: {:?}",
            crate::text::short(&body.choice),
            b.options
                .0
                .iter()
                .take(10)
                .map(|o| crate::text::short(o))
                .collect::<Vec<_>>()
        )));
    }
    if !store::cast(&mut tx, &id, &user.0, &body.choice).await? {
        return Err(ApiError::Conflict(format!(
            "{} has already voted on ballot {id}",
            user.0
        )));
    }
    let votes_cast = store::votes_cast(&mut *tx, &id).await?;
    tx.emit(Event::VoteCounted(VoteCounted {
        ballot_id: id.clone(),
        meeting_id: b.meeting_id.clone(),
        votes_cast: u64::try_from(votes_cast).unwrap_or_default(),
    }))
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(VoteView {
            ballot_id: id,
            user_id: user.0,
            choice: body.choice,
        }),
    ))
}

/// Close the ballot and count it (the meeting's managers only).
#[utoipa::path(post, path = "/ballots/{id}/close", operation_id = "closeBallot", tag = "voting",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The ballot's id")),
    responses(
        (status = 200, description = "Closed, with its tally", body = BallotView),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: no such ballot", body = ErrorBody),
        (status = 409, description = "`conflict`: already closed", body = ErrorBody)))]
async fn close(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BallotView>, ApiError> {
    let b = find(&state.pool, &id).await?;
    let mut tx = grants::managed_work(&state, &b.meeting_id, &user).await?;
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
