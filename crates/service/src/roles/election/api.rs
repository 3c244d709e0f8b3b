//! Election routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Election, ElectionResult};
use crate::domain::ElectionStatus;
use crate::events::{Event, NominationAccepted};
use crate::http::{page, ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, Text, User};
use crate::roles::grants;

/// The election routes, described as they are served.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(nominate))
}

/// Which elections, and a page of them.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Only this meeting's.
    meeting_id: Option<String>,
    /// Only this agenda item's.
    agenda_item_id: Option<String>,
    /// How many, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// How many to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A candidate to nominate.
#[derive(Deserialize, utoipa::ToSchema)]
struct Nomination {
    /// 1–100 characters: yourself, or anyone if you manage the meeting.
    #[schema(inline)]
    candidate: Text<100>,
}

/// An election as clients see it: its row and its candidates in nomination order.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ElectionView {
    id: String,
    meeting_id: String,
    agenda_item_id: String,
    title: String,
    /// How many the election fills (1 unless the item asked for more).
    #[schema(minimum = 1)]
    seats: i64,
    status: ElectionStatus,
    candidates: Vec<String>,
    /// `election.finalized`'s result once the ballot is counted.
    #[schema(value_type = Option<ElectionResult>)]
    result: Option<crate::store::Json<ElectionResult>>,
    created_at: String,
    updated_at: String,
}

impl ElectionView {
    fn new(e: Election, candidates: Vec<String>) -> Self {
        Self {
            id: e.id,
            meeting_id: e.meeting_id,
            agenda_item_id: e.agenda_item_id,
            title: e.title,
            seats: e.seats,
            status: e.status,
            candidates,
            result: e.result,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A nomination accepted.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NominationView {
    election_id: String,
    candidate: String,
    nominated_by: String,
}

/// The elections, oldest first, with their candidates.
#[utoipa::path(get, path = "/elections", operation_id = "listElections", tag = "election",
    security(("bearer" = [])),
    params(Filter),
    responses((status = 200, description = "A page of elections", body = Vec<ElectionView>)))]
async fn list(
    State(state): State<AppState>,
    ApiQuery(f): ApiQuery<Filter>,
) -> Result<Json<Vec<ElectionView>>, ApiError> {
    let (limit, offset) = page(f.limit, f.offset)?;
    let elections = store::list(
        &state.pool,
        f.meeting_id.as_deref(),
        f.agenda_item_id.as_deref(),
        limit,
        offset,
    )
    .await?;
    // The page's candidates in one query, not one per election.
    let ids: Vec<&str> = elections.iter().map(|e| e.id.as_str()).collect();
    let mut candidates = store::candidates_of(&state.pool, &ids).await?;
    Ok(Json(
        elections
            .into_iter()
            .map(|e| {
                let standing = candidates.remove(&e.id).unwrap_or_default();
                ElectionView::new(e, standing)
            })
            .collect(),
    ))
}

/// One election with its candidates in nomination order.
#[utoipa::path(get, path = "/elections/{id}", operation_id = "getElection", tag = "election",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The election's id")),
    responses(
        (status = 200, description = "The election", body = ElectionView),
        (status = 404, description = "`not_found`: no such election", body = ErrorBody)))]
async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ElectionView>, ApiError> {
    let e = store::by_id(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no election {id}")))?;
    let candidates = store::candidates(&state.pool, &e.id).await?;
    Ok(Json(ElectionView::new(e, candidates)))
}

/// Nominate a candidate while the election is nominating.
#[utoipa::path(post, path = "/elections/{id}/nominations", operation_id = "nominate", tag = "election",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The election's id")),
    request_body = Nomination,
    responses(
        (status = 201, description = "Nominated", body = NominationView),
        (status = 403, description = "`forbidden`: only managers nominate others", body = ErrorBody),
        (status = 404, description = "`not_found`: no such election", body = ErrorBody),
        (status = 409, description = "`conflict`: nominations are closed, the candidate is already nominated, or the election is full", body = ErrorBody)))]
async fn nominate(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Nomination>,
) -> Result<(StatusCode, Json<NominationView>), ApiError> {
    let mut tx = state.outbox.begin().await?;
    let e = store::by_id_locked(&mut tx, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no election {id}")))?;
    if e.status != ElectionStatus::Nominating {
        return Err(ApiError::Conflict(format!(
            "election {id} is {}; nominations are closed",
            e.status
        )));
    }
    let candidate = body.candidate.into_string();
    let manager = grants::is_manager(&mut *tx, &e.meeting_id, &user.0).await?;
    if !may_nominate(manager, &user.0, &candidate) {
        return Err(ApiError::Forbidden(
            "only the meeting's managers nominate others; you may nominate yourself".into(),
        ));
    }
    let standing = store::candidates(&mut *tx, &id).await?;
    if standing.len() >= state.settings.max_candidates as usize && !standing.contains(&candidate) {
        return Err(ApiError::Conflict(format!(
            "election {id} has its maximum of {} candidates",
            state.settings.max_candidates
        )));
    }
    if !store::nominate(&mut tx, &id, &candidate, &user.0).await? {
        return Err(ApiError::Conflict(format!(
            "{candidate} is already nominated"
        )));
    }
    tx.emit(Event::NominationAccepted(NominationAccepted {
        election_id: id.clone(),
        meeting_id: e.meeting_id.clone(),
        candidate: candidate.clone(),
        nominated_by: user.0.clone(),
    }))
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(NominationView {
            election_id: id,
            candidate,
            nominated_by: user.0,
        }),
    ))
}

/// Who may nominate whom: a meeting's managers anyone, everybody else only themselves.
fn may_nominate(manager: bool, user: &str, candidate: &str) -> bool {
    manager || user == candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managers_nominate_anyone_others_only_themselves() {
        assert!(may_nominate(true, "alice", "ada"));
        assert!(may_nominate(false, "bob", "bob"));
        assert!(!may_nominate(false, "mallory", "ada"));
    }
}
