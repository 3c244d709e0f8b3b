//! Meeting event handlers: `election.finalized` and the `permission.*` copy.

use serde_json::json;
use sqlx::AnyConnection;

use super::store;
use crate::domain::{ItemKind, ItemStatus};
use crate::envelope::Envelope;
use crate::events::{ElectionFinalized, Event};
use crate::messaging::{HandleError, HandlerResult, Work};
use crate::roles::grants;

/// The meeting role's [`crate::messaging::EventHandler`]: records election results and keeps the copy of grants.
pub(super) async fn handle(tx: &mut Work, _cause: &Envelope, event: Event) -> HandlerResult {
    match event {
        Event::ElectionFinalized(done) => finalized(tx, &done).await,
        Event::PermissionGranted(change) => Ok(grants::apply(tx, &change, true).await?),
        Event::PermissionRevoked(change) => Ok(grants::apply(tx, &change, false).await?),
        other => Err(HandleError::Reject(format!(
            "the meeting role does not handle {}",
            other.event_type()
        ))),
    }
}

/// The election item gets its result and is done.
async fn finalized(tx: &mut AnyConnection, done: &ElectionFinalized) -> Result<(), HandleError> {
    let meeting = store::meeting_locked(&mut *tx, &done.meeting_id).await?;
    let Some(item) = store::item(&mut *tx, &done.meeting_id, &done.agenda_item_id).await? else {
        return Err(HandleError::Retry(format!(
            "no agenda item {} in meeting {} (yet)",
            done.agenda_item_id, done.meeting_id
        )));
    };
    if item.kind != ItemKind::Election {
        return Err(HandleError::Reject(format!(
            "agenda item {} is not an election",
            item.id
        )));
    }
    if item.status == ItemStatus::Done {
        return Ok(()); // already recorded
    }
    let result = json!({
        "election_id": done.election_id,
        "outcome": done.outcome,
        "winners": done.winners,
        "tally": done.tally,
    });
    store::finish_item(tx, &item.id, &done.election_id, &result).await?;
    if meeting.and_then(|m| m.current_item_id).as_deref() == Some(item.id.as_str()) {
        store::set_current_item(tx, &done.meeting_id, None).await?;
    }
    Ok(())
}
