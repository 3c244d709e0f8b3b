//! Voting event handlers: `voting.create` opens a ballot; `permission.*` keeps the managers.

use super::store::{self, Ballot};
use crate::domain::BallotStatus;
use crate::envelope::{now_rfc3339, Envelope};
use crate::events::{BallotOpened, Event};
use crate::messaging::{HandleError, HandlerResult, Work};
use crate::roles::grants;
use crate::store::Json;

/// The voting role's [`crate::messaging::EventHandler`]: opens ballots and keeps the copy of grants.
pub(super) async fn handle(tx: &mut Work, _cause: &Envelope, event: Event) -> HandlerResult {
    match event {
        Event::VotingCreate(c) => {
            if c.candidates.is_empty() {
                return Err(HandleError::Reject(
                    "a ballot needs at least one candidate".into(),
                ));
            }
            let mut options = c.candidates;
            options.dedup();
            let ballot = Ballot {
                id: crate::domain::new_id(),
                election_id: c.election_id,
                meeting_id: c.meeting_id,
                agenda_item_id: c.agenda_item_id,
                options: Json(options),
                status: BallotStatus::Open,
                tally: None,
                created_at: now_rfc3339(),
                closed_at: None,
            };
            if !store::insert(tx, &ballot).await? {
                return Ok(()); // this election's ballot exists already
            }
            let opened = BallotOpened {
                ballot_id: ballot.id,
                election_id: ballot.election_id,
                meeting_id: ballot.meeting_id,
                options: ballot.options.0,
            };
            Ok(tx.emit(Event::BallotOpened(opened)).await?)
        }
        Event::PermissionGranted(change) => grants::apply(tx, &change, true).await,
        Event::PermissionRevoked(change) => grants::apply(tx, &change, false).await,
        other => Err(HandleError::Reject(format!(
            "the voting role does not handle {}",
            other.event_type()
        ))),
    }
}
