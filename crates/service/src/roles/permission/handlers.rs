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
    if !store::insert_meeting(tx, &m.meeting_id, &m.title, &m.created_by).await? {
        // Known already: a replay grants nothing, whoever it names as creator.
        return if store::creator(&mut **tx, &m.meeting_id).await?.as_deref()
            == Some(m.created_by.as_str())
        {
            Ok(())
        } else {
            Err(HandleError::Reject(format!(
                "meeting {} is known already, with another creator; nobody is granted anything",
                crate::text::short(&m.meeting_id)
            )))
        };
    }
    if store::grant(
        tx,
        &m.meeting_id,
        &m.created_by,
        MeetingRole::Manager,
        &envelope.producer,
    )
    .await?
    {
        let version =
            store::next_version(tx, &m.meeting_id, &m.created_by, MeetingRole::Manager).await?;
        tx.emit(Event::PermissionGranted(PermissionChange {
            meeting_id: m.meeting_id,
            user_id: m.created_by,
            role: MeetingRole::Manager,
            version,
        }))
        .await?;
    }
    Ok(())
}
