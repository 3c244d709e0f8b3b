//! Meeting routes (docs/architecture.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, AgendaItem, Meeting};
use crate::domain::{ItemKind, ItemStatus};
use crate::envelope::now_rfc3339;
use crate::events::{
    AgendaItemAdded, AgendaItemOpened, ElectionCreate, ElectionStart, Event, MeetingCreated,
};
use crate::http::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, Paging, Title, User};
use crate::messaging::Work;
use crate::roles::grants;

/// The meeting routes, described as they are served.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_meeting, list_meetings))
        .routes(routes!(get_meeting))
        .routes(routes!(add_item))
        .routes(routes!(open_item))
        .routes(routes!(start_election))
}

/// A meeting to create.
#[derive(Deserialize, utoipa::ToSchema)]
struct NewMeeting {
    /// 1–200 characters, no control characters.
    #[schema(inline)]
    title: Title,
}

/// An agenda item to add.
#[derive(Deserialize, utoipa::ToSchema)]
struct NewItem {
    /// 1–200 characters, no control characters.
    #[schema(inline)]
    title: Title,
    /// `election` or `discussion`.
    kind: ItemKind,
    /// How many the election fills, 1–50 (an election item only); default 1.
    #[schema(minimum = 1, maximum = 50)]
    #[serde(default)]
    seats: Option<u32>,
}

/// The most seats one election may fill.
const MAX_SEATS: u32 = 50;

/// A meeting with its agenda and the managers known here.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct MeetingView {
    id: String,
    title: String,
    created_by: String,
    created_at: String,
    current_item_id: Option<String>,
    /// Replicated from the permission service; empty until the creator's grant arrives.
    managers: Vec<String>,
    agenda: Vec<AgendaItem>,
}

impl MeetingView {
    fn new(m: Meeting, managers: Vec<String>, agenda: Vec<AgendaItem>) -> Self {
        Self {
            id: m.id,
            title: m.title,
            created_by: m.created_by,
            created_at: m.created_at,
            current_item_id: m.current_item_id,
            managers,
            agenda,
        }
    }
}

/// The meeting with its agenda and the managers known here.
async fn view(state: &AppState, meeting: Meeting) -> Result<MeetingView, ApiError> {
    let agenda = store::agenda(&state.pool, &meeting.id).await?;
    let managers = grants::managers(&state.pool, &meeting.id).await?;
    Ok(MeetingView::new(meeting, managers, agenda))
}

async fn find_meeting(state: &AppState, id: &str) -> Result<Meeting, ApiError> {
    store::meeting(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no meeting {id}")))
}

/// A unit of work on a meeting that exists and that `user` manages.
async fn managed_work(state: &AppState, id: &str, user: &User) -> Result<Work, ApiError> {
    find_meeting(state, id).await?;
    grants::managed_work(state, id, user).await
}

/// Create a meeting; its creator becomes its manager once the grant comes back.
#[utoipa::path(post, path = "/meetings", operation_id = "createMeeting", tag = "meeting",
    security(("bearer" = [])),
    request_body = NewMeeting,
    responses((status = 201, description = "Created (no agenda yet; `managers` fills in when the grant arrives)", body = MeetingView)))]
async fn create_meeting(
    State(state): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<NewMeeting>,
) -> Result<(StatusCode, Json<MeetingView>), ApiError> {
    let meeting = Meeting {
        id: crate::domain::new_id(),
        title: body.title.into_string(),
        created_by: user.0,
        created_at: now_rfc3339(),
        current_item_id: None,
    };
    let mut work = state.outbox.begin().await?;
    store::insert_meeting(&mut work, &meeting).await?;
    work.emit(Event::MeetingCreated(MeetingCreated {
        meeting_id: meeting.id.clone(),
        title: meeting.title.clone(),
        created_by: meeting.created_by.clone(),
    }))
    .await?;
    work.commit().await?;
    // New: no agenda yet, and the creator's grant is still on its way back.
    Ok((
        StatusCode::CREATED,
        Json(MeetingView::new(meeting, Vec::new(), Vec::new())),
    ))
}

/// The meetings, oldest first.
#[utoipa::path(get, path = "/meetings", operation_id = "listMeetings", tag = "meeting",
    security(("bearer" = [])),
    params(Paging),
    responses((status = 200, description = "A page of meetings", body = Vec<Meeting>)))]
async fn list_meetings(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Vec<Meeting>>, ApiError> {
    let (limit, offset) = q.bounds()?;
    Ok(Json(
        store::list_meetings(&state.pool, limit, offset).await?,
    ))
}

/// One meeting with its agenda and its managers.
#[utoipa::path(get, path = "/meetings/{id}", operation_id = "getMeeting", tag = "meeting",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The meeting's id")),
    responses(
        (status = 200, description = "The meeting", body = MeetingView),
        (status = 404, description = "`not_found`: no such meeting", body = ErrorBody)))]
async fn get_meeting(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MeetingView>, ApiError> {
    let meeting = find_meeting(&state, &id).await?;
    Ok(Json(view(&state, meeting).await?))
}

/// Add an item at the end of the agenda (managers only).
#[utoipa::path(post, path = "/meetings/{id}/agenda-items", operation_id = "addAgendaItem", tag = "meeting",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The meeting's id")),
    request_body = NewItem,
    responses(
        (status = 201, description = "Added, pending", body = AgendaItem),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: no such meeting", body = ErrorBody),
        (status = 409, description = "`conflict`: the election's seats cannot be said in the version of `agenda.election.create` this service emits (`EVENT_EMIT_VERSIONS`)", body = ErrorBody)))]
async fn add_item(
    State(state): State<AppState>,
    user: User,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewItem>,
) -> Result<(StatusCode, Json<AgendaItem>), ApiError> {
    let (title, kind) = (body.title.into_string(), body.kind);
    let seats = match (kind, body.seats) {
        (_, None) => 1,
        (ItemKind::Election, Some(n @ 1..=MAX_SEATS)) => n,
        (ItemKind::Election, Some(n)) => {
            return Err(ApiError::Invalid(format!(
                "seats must be 1 to {MAX_SEATS}, not {n}"
            )))
        }
        (ItemKind::Discussion, Some(_)) => {
            return Err(ApiError::Invalid("seats is for election items only".into()))
        }
    };
    let mut tx = managed_work(&state, &id, &user).await?;
    let item_id = crate::domain::new_id();
    if kind == ItemKind::Election {
        // Refused now, while the gate holds the election's event back, rather than when
        // the item is opened.
        tx.sayable(&election_create(&id, &item_id, &title, seats))?;
    }
    // The next position is read and taken under the meeting's lock.
    store::meeting_locked(&mut tx, &id).await?;
    store::insert_item(
        &mut tx,
        &AgendaItem {
            id: item_id.clone(),
            meeting_id: id.clone(),
            position: 0,
            title,
            kind,
            seats: i64::from(seats),
            status: ItemStatus::Pending,
            election_id: None,
            result: None,
        },
    )
    .await?;
    let item = store::item(&mut *tx, &id, &item_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("agenda item vanished after insert")))?;
    tx.emit(Event::AgendaItemAdded(AgendaItemAdded {
        meeting_id: id.clone(),
        agenda_item_id: item_id.clone(),
        position: item.position,
        title: item.title.clone(),
        kind: item.kind,
    }))
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(item)))
}

/// The event that opens an election item's election.
fn election_create(meeting_id: &str, item_id: &str, title: &str, seats: u32) -> Event {
    Event::ElectionCreate(ElectionCreate {
        meeting_id: meeting_id.to_string(),
        agenda_item_id: item_id.to_string(),
        title: title.to_string(),
        seats,
    })
}

async fn find_item(
    db: impl sqlx::any::AnyExecutor<'_>,
    meeting_id: &str,
    item_id: &str,
) -> Result<AgendaItem, ApiError> {
    store::item(db, meeting_id, item_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("no agenda item {item_id} in meeting {meeting_id}"))
    })
}

#[utoipa::path(post, path = "/meetings/{id}/agenda-items/{item_id}/open", operation_id = "openAgendaItem", tag = "meeting",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The meeting's id"),
        ("item_id" = String, Path, description = "The agenda item's id")),
    responses(
        (status = 200, description = "The item, now open (an election item's election is being created)", body = AgendaItem),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: no such meeting or item", body = ErrorBody),
        (status = 409, description = "`conflict`: the item is not pending, an election is still running, or its seats cannot be said in the version of `agenda.election.create` this service emits", body = ErrorBody)))]
/// Make an item the current one. The previous current item, if a discussion, is done; an
/// election still running blocks the move.
async fn open_item(
    State(state): State<AppState>,
    user: User,
    ApiPath((id, item_id)): ApiPath<(String, String)>,
) -> Result<Json<AgendaItem>, ApiError> {
    let mut tx = managed_work(&state, &id, &user).await?;
    // Read again under the write lock: the checks and the change see the same state.
    let meeting = store::meeting_locked(&mut tx, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no meeting {id}")))?;
    let item = find_item(&mut *tx, &id, &item_id).await?;
    if item.status != ItemStatus::Pending {
        return Err(ApiError::Conflict(format!(
            "agenda item {item_id} is {}, only a pending item can be opened",
            item.status
        )));
    }
    if let Some(current_id) = meeting.current_item_id.as_deref() {
        let current = find_item(&mut *tx, &id, current_id).await?;
        if current.kind == ItemKind::Election && current.status != ItemStatus::Done {
            return Err(ApiError::Conflict(format!(
                "election item {current_id} is still {}; it must finish before another item opens",
                current.status
            )));
        }
        if current.status != ItemStatus::Done {
            store::set_item_status(&mut tx, current_id, ItemStatus::Done).await?;
        }
    }
    store::set_item_status(&mut tx, &item_id, ItemStatus::Open).await?;
    store::set_current_item(&mut tx, &id, Some(&item_id)).await?;
    tx.emit(Event::AgendaItemOpened(AgendaItemOpened {
        meeting_id: id.clone(),
        agenda_item_id: item_id.clone(),
        kind: item.kind,
        previous_item_id: meeting.current_item_id.clone(),
    }))
    .await?;
    if item.kind == ItemKind::Election {
        let seats = u32::try_from(item.seats).unwrap_or(1);
        tx.emit(election_create(&id, &item_id, &item.title, seats))
            .await?;
    }
    tx.commit().await?;
    Ok(Json(find_item(&state.pool, &id, &item_id).await?))
}

#[utoipa::path(post, path = "/meetings/{id}/agenda-items/{item_id}/start-election", operation_id = "startElection", tag = "meeting",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The meeting's id"),
        ("item_id" = String, Path, description = "The election item's id")),
    responses(
        (status = 200, description = "The item, now voting", body = AgendaItem),
        (status = 403, description = "`forbidden`: not a manager of the meeting", body = ErrorBody),
        (status = 404, description = "`not_found`: no such meeting or item", body = ErrorBody),
        (status = 409, description = "`conflict`: not an election item, or not open", body = ErrorBody)))]
/// Close nominations and start the vote of the open election item.
async fn start_election(
    State(state): State<AppState>,
    user: User,
    ApiPath((id, item_id)): ApiPath<(String, String)>,
) -> Result<Json<AgendaItem>, ApiError> {
    let mut tx = managed_work(&state, &id, &user).await?;
    store::meeting_locked(&mut tx, &id).await?;
    let item = find_item(&mut *tx, &id, &item_id).await?;
    if item.kind != ItemKind::Election {
        return Err(ApiError::Conflict(format!(
            "agenda item {item_id} is a {}, not an election",
            item.kind
        )));
    }
    if item.status != ItemStatus::Open {
        return Err(ApiError::Conflict(format!(
            "election item {item_id} is {}; only an open election can start",
            item.status
        )));
    }
    store::set_item_status(&mut tx, &item_id, ItemStatus::Voting).await?;
    tx.emit(Event::ElectionStart(ElectionStart {
        meeting_id: id.clone(),
        agenda_item_id: item_id.clone(),
    }))
    .await?;
    tx.commit().await?;
    Ok(Json(find_item(&state.pool, &id, &item_id).await?))
}
