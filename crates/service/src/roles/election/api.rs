//! Election routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::store::{self, Election, ElectionResult};
use crate::domain::ElectionStatus;
use crate::events::{Event, NominationAccepted};
use crate::http::{page, text_field, ApiError, ApiJson, ApiPath, ApiQuery, AppState, User};
use crate::roles::grants;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/elections", get(list))
        .route("/elections/{id}", get(get_one))
        .route("/elections/{id}/nominations", post(nominate))
}

#[derive(Deserialize)]
struct Filter {
    meeting_id: Option<String>,
    agenda_item_id: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Deserialize)]
struct Nomination {
    candidate: String,
}

/// An election as clients see it: its row and its candidates in nomination order.
#[derive(Serialize)]
pub(super) struct ElectionView {
    id: String,
    meeting_id: String,
    agenda_item_id: String,
    title: String,
    status: ElectionStatus,
    candidates: Vec<String>,
    /// `election.finalized`'s result once the ballot is counted.
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
            status: e.status,
            candidates,
            result: e.result,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A nomination accepted.
#[derive(Serialize)]
pub(super) struct NominationView {
    election_id: String,
    candidate: String,
    nominated_by: String,
}

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
    let candidate = text_field("candidate", &body.candidate, 100)?;
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
