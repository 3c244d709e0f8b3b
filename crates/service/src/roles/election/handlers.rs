//! Election event handlers: create (open nominations), start (hand candidates to voting, or
//! cancel when there are none), and the ballot's completion (decide the outcome).

use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;

use super::store;
use crate::domain::{ElectionStatus, Outcome};
use crate::envelope::Envelope;
use crate::events::{ElectionFinalized, Event, VotingCreate};
use crate::messaging::{HandleError, HandlerResult, Work};

/// Who won, from a tally: the candidates with the most votes (all of them on a tie).
pub(super) fn decide(tally: &BTreeMap<String, u64>, votes_cast: u64) -> (Outcome, Vec<String>) {
    let top = tally.values().copied().max().unwrap_or(0);
    if votes_cast == 0 || top == 0 {
        return (Outcome::NoVotes, vec![]);
    }
    let winners: Vec<String> = tally
        .iter()
        .filter(|(_, n)| **n == top)
        .map(|(c, _)| c.clone())
        .collect();
    let outcome = if winners.len() == 1 {
        Outcome::Elected
    } else {
        Outcome::Tie
    };
    (outcome, winners)
}

/// The election role's [`crate::messaging::EventHandler`]: runs an election from its create to its result.
pub(super) async fn handle(tx: &mut Work, _cause: &Envelope, event: Event) -> HandlerResult {
    match event {
        Event::ElectionCreate(c) => {
            store::insert(
                tx,
                &Uuid::new_v4().to_string(),
                &c.meeting_id,
                &c.agenda_item_id,
                &c.title,
            )
            .await?;
            Ok(())
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
                let result = json!({"outcome": Outcome::Cancelled, "winners": [], "tally": {}});
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
                ElectionStatus::Finalized | ElectionStatus::Cancelled => return Ok(()),
                other @ ElectionStatus::Nominating => {
                    return Err(HandleError::Reject(format!(
                        "election {} is {other}, not voting",
                        e.id
                    )))
                }
            }
            let (outcome, winners) = decide(&v.tally, v.votes_cast);
            let result = json!({"outcome": outcome, "winners": winners, "tally": v.tally, "votes_cast": v.votes_cast, "ballot_id": v.ballot_id});
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
        other => Err(HandleError::Reject(format!(
            "the election role does not handle {}",
            other.event_type()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    #[test]
    fn one_leader_is_elected() {
        assert_eq!(
            decide(&tally(&[("ada", 2), ("bob", 1)]), 3),
            (Outcome::Elected, vec!["ada".into()])
        );
    }

    #[test]
    fn a_shared_lead_is_a_tie_with_every_tied_candidate_winning() {
        assert_eq!(
            decide(&tally(&[("ada", 2), ("bob", 2), ("cy", 1)]), 5),
            (Outcome::Tie, vec!["ada".into(), "bob".into()])
        );
    }

    #[test]
    fn no_votes_means_no_winner() {
        assert_eq!(
            decide(&tally(&[("ada", 0), ("bob", 0)]), 0),
            (Outcome::NoVotes, vec![])
        );
        assert_eq!(decide(&BTreeMap::new(), 0), (Outcome::NoVotes, vec![]));
    }
}
