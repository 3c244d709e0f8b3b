//! Permission event handler: `meeting.created` makes its creator a manager.

use super::store;
use crate::domain::MeetingRole;
use crate::envelope::Envelope;
use crate::events::{Event, PermissionChange};
use crate::messaging::{HandleError, HandlerResult, Work};

/// The permission role's [`crate::messaging::EventHandler`]: makes a new meeting's creator its manager.
pub(super) async fn handle(tx: &mut Work, envelope: &Envelope, event: Event) -> HandlerResult {
    let Event::MeetingCreated(m) = event else {
        return Err(HandleError::Reject(format!(
            "the permission role does not handle {}",
            envelope.event_type
        )));
    };
    store::insert_meeting(tx, &m.meeting_id, &m.title, &m.created_by).await?;
    if store::grant(
        tx,
        &m.meeting_id,
        &m.created_by,
        MeetingRole::Manager,
        &envelope.producer,
    )
    .await?
    {
        tx.emit(Event::PermissionGranted(PermissionChange {
            meeting_id: m.meeting_id,
            user_id: m.created_by,
            role: MeetingRole::Manager,
        }))
        .await?;
    }
    Ok(())
}
