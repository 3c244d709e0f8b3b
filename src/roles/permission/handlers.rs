//! Permission event handler: `meeting.created` makes its creator a manager.

use sqlx::SqliteConnection;

use super::store;
use crate::envelope::{Envelope, Event, PermissionChange};
use crate::messaging::{outbox, EventHandler, HandleError};
use crate::roles::grants::MANAGER;

pub struct Handler {
    producer: String,
}

impl Handler {
    pub fn new(producer: String) -> Self {
        Self { producer }
    }
}

impl EventHandler for Handler {
    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), HandleError> {
        let Event::MeetingCreated(m) = event else {
            return Err(HandleError::Reject(format!(
                "permission-service does not handle {}",
                envelope.event_type
            )));
        };
        store::insert_meeting(tx, &m.meeting_id, &m.title, &m.created_by).await?;
        if store::grant(
            tx,
            &m.meeting_id,
            &m.created_by,
            MANAGER,
            &envelope.producer,
        )
        .await?
        {
            let granted = Event::PermissionGranted(PermissionChange {
                meeting_id: m.meeting_id,
                user_id: m.created_by,
                role: MANAGER.to_string(),
            });
            outbox::enqueue(tx, &Envelope::caused_by(envelope, &granted, &self.producer)).await?;
        }
        Ok(())
    }
}
