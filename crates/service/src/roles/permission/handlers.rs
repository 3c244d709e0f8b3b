//! Permission event handler: `meeting.created` makes its creator a manager.

use async_trait::async_trait;

use super::store;
use crate::domain::MeetingRole;
use crate::envelope::Envelope;
use crate::events::{Event, PermissionChange};
use crate::messaging::{EventHandler, HandleError, Work};

pub(super) struct Handler;

#[async_trait]
impl EventHandler for Handler {
    async fn handle(
        &self,
        tx: &mut Work,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), HandleError> {
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
}
