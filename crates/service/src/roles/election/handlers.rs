//! Election event handlers: create (open nominations), start (hand candidates to voting, or
//! cancel when there are none), and the ballot's completion (decide the outcome).

use std::collections::BTreeMap;

use super::store::{self, ElectionResult};
use crate::domain::{decide, votes_counted, ElectionStatus, Outcome};
use crate::envelope::Envelope;
use crate::events::{ElectionFinalized, ElectionOpened, Event, VotingCompleted, VotingCreate};
use crate::messaging::{HandleError, HandlerResult, Work};
use crate::roles::grants;

/// The election role's [`crate::messaging::EventHandler`]: runs an election from its create to its result.
pub(super) async fn handle(tx: &mut Work, _cause: &Envelope, event: Event) -> HandlerResult {
    match event {
        Event::ElectionCreate(c) => {
            let id = crate::domain::new_id();
            if c.seats == 0 {
                return Err(HandleError::Reject(format!(
                    "agenda item {} asks for an election of 0 seats",
                    crate::text::short(&c.agenda_item_id)
                )));
            }
            let (meeting, item) = (&c.meeting_id, &c.agenda_item_id);
            if !store::insert(tx, &id, meeting, item, &c.title, c.seats).await? {
                return Ok(()); // this item's election exists already
            }
            let opened = ElectionOpened {
                election_id: id,
                meeting_id: c.meeting_id,
                agenda_item_id: c.agenda_item_id,
                title: c.title,
                seats: c.seats,
            };
            Ok(tx.emit(Event::ElectionOpened(opened)).await?)
        }
        Event::ElectionStart(s) => {
            let Some(e) = store::by_item_locked(tx, &s.meeting_id, &s.agenda_item_id).await? else {
                // The start overtook its create: wait for it.
                return Err(HandleError::Retry(format!(
                    "no election for meeting {} item {} yet (agenda.election.create not seen)",
                    s.meeting_id, s.agenda_item_id
                )));
            };
            if e.status != ElectionStatus::Nominating {
                return Ok(()); // already started
            }
            let candidates = store::candidates(&mut **tx, &e.id).await?;
            if candidates.is_empty() {
                let result = ElectionResult {
                    outcome: Outcome::Cancelled,
                    winners: vec![],
                    tally: BTreeMap::new(),
                    votes_cast: None,
                    ballot_id: None,
                };
                store::set_status(tx, &e.id, ElectionStatus::Cancelled, Some(&result)).await?;
                let done = ElectionFinalized {
                    election_id: e.id,
                    meeting_id: e.meeting_id,
                    agenda_item_id: e.agenda_item_id,
                    winners: vec![],
                    tally: BTreeMap::new(),
                    outcome: Outcome::Cancelled,
                };
                return Ok(tx.emit(Event::ElectionFinalized(done)).await?);
            }
            store::set_status(tx, &e.id, ElectionStatus::Voting, None).await?;
            let create = VotingCreate {
                election_id: e.id,
                meeting_id: e.meeting_id,
                agenda_item_id: e.agenda_item_id,
                candidates,
            };
            Ok(tx.emit(Event::VotingCreate(create)).await?)
        }
        Event::VotingCompleted(v) => {
            let Some(e) = store::by_id_locked(tx, &v.election_id).await? else {
                return Err(HandleError::Retry(format!(
                    "no election {} (yet)",
                    v.election_id
                )));
            };
            match e.status {
                ElectionStatus::Voting => {}
                // The result already recorded, from this very ballot: nothing to do.
                ElectionStatus::Finalized
                    if e.result.as_ref().is_some_and(|r| {
                        r.0.ballot_id.as_deref() == Some(v.ballot_id.as_str())
                    }) =>
                {
                    return Ok(())
                }
                other => {
                    return Err(HandleError::Reject(format!(
                        "election {} is {other}; only a voting election takes a ballot's result",
                        e.id
                    )))
                }
            }
            if v.meeting_id != e.meeting_id {
                return Err(HandleError::Reject(format!(
                    "ballot {} names meeting {}, but election {} is of meeting {}",
                    v.ballot_id, v.meeting_id, e.id, e.meeting_id
                )));
            }
            let candidates = store::candidates(&mut **tx, &e.id).await?;
            check_tally(&candidates, &v).map_err(HandleError::Reject)?;
            let seats = u32::try_from(e.seats).unwrap_or(1);
            let (outcome, winners) = decide(&v.tally, v.votes_cast, seats);
            let result = ElectionResult {
                outcome,
                winners: winners.clone(),
                tally: v.tally.clone(),
                votes_cast: Some(v.votes_cast),
                ballot_id: Some(v.ballot_id.clone()),
            };
            store::set_status(tx, &e.id, ElectionStatus::Finalized, Some(&result)).await?;
            let done = ElectionFinalized {
                election_id: e.id,
                meeting_id: e.meeting_id,
                agenda_item_id: e.agenda_item_id,
                winners,
                tally: v.tally,
                outcome,
            };
            Ok(tx.emit(Event::ElectionFinalized(done)).await?)
        }
        Event::PermissionGranted(change) => grants::apply(tx, &change, true).await,
        Event::PermissionRevoked(change) => grants::apply(tx, &change, false).await,
        other => Err(HandleError::Reject(format!(
            "the election role does not handle {}",
            other.event_type()
        ))),
    }
}

/// Whether a ballot's tally can be this election's: the ballot's options were exactly the
/// candidates the election handed to voting (every option is counted, zero included), and
/// `votes_cast` is the sum of the counts.
fn check_tally(candidates: &[String], v: &VotingCompleted) -> Result<(), String> {
    let options: std::collections::BTreeSet<&str> = v.tally.keys().map(String::as_str).collect();
    let expected: std::collections::BTreeSet<&str> =
        candidates.iter().map(String::as_str).collect();
    if options != expected {
        let stray: Vec<&str> = options.difference(&expected).copied().take(5).collect();
        return Err(format!(
            "the tally of ballot {} does not count this election's candidates (not candidates: {stray:?})",
            crate::text::short(&v.ballot_id)
        ));
    }
    let sum = votes_counted(&v.tally);
    if sum != v.votes_cast {
        return Err(format!(
            "ballot {} says {} votes were cast but its tally counts {sum}",
            crate::text::short(&v.ballot_id),
            v.votes_cast
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn completed(tally: &[(&str, u64)], votes_cast: u64) -> VotingCompleted {
        VotingCompleted {
            ballot_id: "b".into(),
            election_id: "e".into(),
            meeting_id: "m".into(),
            tally: tally
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
                .collect::<BTreeMap<_, _>>(),
            votes_cast,
        }
    }

    #[test]
    fn a_tally_must_count_exactly_the_candidates_and_add_up() {
        let candidates = ["ada".to_string(), "bob".to_string()];
        assert!(check_tally(&candidates, &completed(&[("ada", 2), ("bob", 0)], 2)).is_ok());
        let forged = check_tally(&candidates, &completed(&[("mallory", 999)], 999)).unwrap_err();
        assert!(forged.contains("mallory"), "{forged}");
        assert!(
            check_tally(&candidates, &completed(&[("ada", 2)], 2)).is_err(),
            "bob missing"
        );
        assert!(check_tally(&candidates, &completed(&[("ada", 2), ("bob", 1)], 2)).is_err());
    }
}
