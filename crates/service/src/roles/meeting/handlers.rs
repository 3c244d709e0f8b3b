//! Meeting event handlers: `election.finalized` and the `permission.*` copy.

use sqlx::AnyConnection;

use super::store::{self, AgendaItem};
use crate::domain::{decide, votes_counted, ItemKind, ItemStatus, Outcome};
use crate::envelope::Envelope;
use crate::events::{ElectionFinalized, Event};
use crate::messaging::{HandleError, HandlerResult, Work};
use crate::roles::grants;

/// The meeting role's [`crate::messaging::EventHandler`]: records election results and keeps the copy of grants.
pub(super) async fn handle(tx: &mut Work, _cause: &Envelope, event: Event) -> HandlerResult {
    match event {
        Event::ElectionFinalized(done) => finalized(tx, &done).await,
        Event::PermissionGranted(change) => grants::apply(tx, &change, true).await,
        Event::PermissionRevoked(change) => grants::apply(tx, &change, false).await,
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
    if !check_result(&item, done).map_err(HandleError::Reject)? {
        return Ok(()); // this result is already recorded
    }
    let result = store::ItemResult {
        election_id: done.election_id.clone(),
        outcome: done.outcome,
        winners: done.winners.clone(),
        tally: done.tally.clone(),
    };
    store::finish_item(tx, &item.id, &done.election_id, &result).await?;
    if meeting.and_then(|m| m.current_item_id).as_deref() == Some(item.id.as_str()) {
        store::set_current_item(tx, &done.meeting_id, None).await?;
    }
    Ok(())
}

/// Whether `done` applies to `item`: `true` to record it, `false` when it is already
/// recorded, an error when it cannot be this item's result — the item is not an election,
/// its vote is not running, or the outcome does not follow from the tally.
fn check_result(item: &AgendaItem, done: &ElectionFinalized) -> Result<bool, String> {
    if item.kind != ItemKind::Election {
        return Err(format!("agenda item {} is not an election", item.id));
    }
    match item.status {
        ItemStatus::Voting => {}
        ItemStatus::Done if item.election_id.as_deref() == Some(done.election_id.as_str()) => {
            return Ok(false)
        }
        other => {
            return Err(format!(
                "agenda item {} is {other}; only a running election takes a result",
                item.id
            ))
        }
    }
    let follows = match done.outcome {
        Outcome::Cancelled => done.tally.is_empty() && done.winners.is_empty(),
        _ => {
            let seats = u32::try_from(item.seats).unwrap_or(1);
            decide(&done.tally, votes_counted(&done.tally), seats)
                == (done.outcome, done.winners.clone())
        }
    };
    if !follows {
        return Err(format!(
            "the outcome {} with winners {:?} does not follow from the tally",
            done.outcome,
            done.winners
                .iter()
                .take(5)
                .map(|w| crate::text::short(w))
                .collect::<Vec<_>>()
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn item(status: ItemStatus, election_id: Option<&str>) -> AgendaItem {
        AgendaItem {
            id: "i".into(),
            meeting_id: "m".into(),
            position: 1,
            title: "Chair".into(),
            kind: ItemKind::Election,
            seats: 1,
            status,
            election_id: election_id.map(String::from),
            result: None,
        }
    }

    fn finalized(tally: &[(&str, u64)], winners: &[&str], outcome: Outcome) -> ElectionFinalized {
        ElectionFinalized {
            election_id: "e".into(),
            meeting_id: "m".into(),
            agenda_item_id: "i".into(),
            winners: winners.iter().map(|w| w.to_string()).collect(),
            tally: tally
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
                .collect::<BTreeMap<_, _>>(),
            outcome,
        }
    }

    #[test]
    fn only_the_running_election_takes_a_result_that_follows_from_its_tally() {
        let good = finalized(&[("ada", 2), ("bob", 1)], &["ada"], Outcome::Elected);
        assert_eq!(
            check_result(&item(ItemStatus::Voting, None), &good),
            Ok(true)
        );
        assert_eq!(
            check_result(&item(ItemStatus::Done, Some("e")), &good),
            Ok(false)
        );
        for status in [ItemStatus::Pending, ItemStatus::Open] {
            assert!(
                check_result(&item(status, None), &good).is_err(),
                "{status}"
            );
        }
        assert!(check_result(&item(ItemStatus::Done, Some("other")), &good).is_err());
        let mallory = finalized(&[("ada", 2)], &["mallory"], Outcome::Elected);
        assert!(check_result(&item(ItemStatus::Voting, None), &mallory).is_err());
        let cancelled = finalized(&[], &[], Outcome::Cancelled);
        assert_eq!(
            check_result(&item(ItemStatus::Voting, None), &cancelled),
            Ok(true)
        );
        let mut discussion = item(ItemStatus::Voting, None);
        discussion.kind = ItemKind::Discussion;
        assert!(check_result(&discussion, &good).is_err());
    }
}
