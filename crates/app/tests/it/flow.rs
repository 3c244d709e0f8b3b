//! The whole chain across the four roles: meeting → election → voting → result.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

/// Add and open an election item; wait for the election service to open nominations.
pub(crate) async fn open_election(
    urls: &Urls,
    manager: &Client,
    meeting: &str,
) -> (String, String) {
    let m = &urls.meeting;
    let (s, item) = manager
        .post(
            &format!("{m}/meetings/{meeting}/agenda-items"),
            json!({"title": "Chair", "kind": "election"}),
        )
        .await;
    assert_eq!(s, 201, "{item}");
    let item = item["id"].as_str().unwrap().to_string();
    let (s, opened) = manager
        .post(
            &format!("{m}/meetings/{meeting}/agenda-items/{item}/open"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{opened}");
    assert_eq!(opened["status"], "open");
    let url = format!(
        "{}/elections?meeting_id={meeting}&agenda_item_id={item}",
        urls.election
    );
    let election = eventually(WAIT, || async {
        let (_, list) = manager.get(&url).await;
        list.as_array()?.first()?["id"].as_str().map(String::from)
    })
    .await
    .expect("agenda.election.create reached the election service");
    (item, election)
}

pub(crate) async fn nominate(urls: &Urls, user: &Client, election: &str, who: &[&str]) {
    for c in who {
        let (s, b) = user
            .post(
                &format!("{}/elections/{election}/nominations", urls.election),
                json!({"candidate": c}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

pub(crate) async fn start(urls: &Urls, manager: &Client, meeting: &str, item: &str) {
    let (s, b) = manager
        .post(
            &format!(
                "{}/meetings/{meeting}/agenda-items/{item}/start-election",
                urls.meeting
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "voting");
}

pub(crate) async fn ballot_of(urls: &Urls, user: &Client, election: &str) -> Value {
    let url = format!("{}/ballots?election_id={election}", urls.voting);
    eventually(WAIT, || async {
        let (_, list) = user.get(&url).await;
        list.as_array()?.first().cloned()
    })
    .await
    .expect("voting.create reached the voting service")
}

pub(crate) async fn vote(urls: &Urls, user: &Client, ballot: &str, choice: &str) -> (u16, Value) {
    user.post(
        &format!("{}/ballots/{ballot}/votes", urls.voting),
        json!({"choice": choice}),
    )
    .await
}

/// Wait for the agenda item to be done and return its result.
pub(crate) async fn item_result(urls: &Urls, user: &Client, meeting: &str, item: &str) -> Value {
    let url = format!("{}/meetings/{meeting}", urls.meeting);
    eventually(WAIT, || async {
        let (_, m) = user.get(&url).await;
        let it = m["agenda"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == item)?
            .clone();
        (it["status"] == "done").then(|| it["result"].clone())
    })
    .await
    .expect("election.finalized reached the meeting")
}

#[tokio::test]
async fn a_meeting_is_carried_from_creation_to_an_elected_result() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let urls = &stack.urls();
    let bus = Bus::connect(&ctx).await;
    let mut spy = bus.spy("#").await;
    let (alice, bob, carol) = (
        Client::as_user("alice"),
        Client::as_user("bob"),
        Client::as_user("carol"),
    );

    let meeting = meeting_with_manager(urls, &alice, "Annual meeting").await;
    let (item, election) = open_election(urls, &alice, &meeting).await;
    nominate(urls, &alice, &election, &["ada", "grace"]).await;
    start(urls, &alice, &meeting, &item).await;

    let (_, e) = eventually(WAIT, || async {
        let r = alice
            .get(&format!("{}/elections/{election}", urls.election))
            .await;
        (r.1["status"] == "voting").then_some(r)
    })
    .await
    .expect("election moved to voting");
    assert_eq!(e["candidates"], json!(["ada", "grace"]));

    let ballot = ballot_of(urls, &alice, &election).await;
    let ballot_id = ballot["id"].as_str().unwrap();
    assert_eq!(ballot["options"], json!(["ada", "grace"]));
    for (who, choice) in [(&alice, "ada"), (&bob, "ada"), (&carol, "grace")] {
        assert_eq!(vote(urls, who, ballot_id, choice).await.0, 201);
    }
    let (_, open) = alice
        .get(&format!("{}/ballots/{ballot_id}", urls.voting))
        .await;
    assert_eq!(open["votes_cast"], 3);
    assert_eq!(open["tally"], Value::Null, "no running tally while open");

    let (s, closed) = alice
        .post(
            &format!("{}/ballots/{ballot_id}/close", urls.voting),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{closed}");
    assert_eq!(closed["tally"], json!({"ada": 2, "grace": 1}));

    let result = item_result(urls, &alice, &meeting, &item).await;
    assert_eq!(result["outcome"], "elected");
    assert_eq!(result["winners"], json!(["ada"]));
    assert_eq!(result["tally"], json!({"ada": 2, "grace": 1}));
    let (_, e) = alice
        .get(&format!("{}/elections/{election}", urls.election))
        .await;
    assert_eq!(e["status"], "finalized");

    // Every event of the chain went over the bus exactly once, in one correlated chain.
    assert!(
        spy.until(WAIT, |seen| seen
            .iter()
            .any(|e| e.event_type == "election.finalized"))
            .await
    );
    spy.collect_for(Duration::from_millis(300)).await;
    for t in [
        "meeting.created",
        "permission.granted",
        "agenda.election.create",
        "agenda.election.start",
        "voting.create",
        "voting.completed",
        "election.finalized",
    ] {
        assert_eq!(
            spy.of_type(t).len(),
            1,
            "{t} seen {} times",
            spy.of_type(t).len()
        );
    }
    crate::contract::assert_conforms(&spy.seen);
    let (_, metrics) = Client::anonymous()
        .get(&format!("{}/metrics", urls.meeting))
        .await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let meeting_q = ctx.queue(&MEETING);
    for needle in [
        format!("events_published_total{{service=\"{meeting_q}\",event_type=\"meeting.created\"}}"),
        format!("events_consumed_total{{service=\"{meeting_q}\",event_type=\"election.finalized\",outcome=\"applied\"}}"),
        format!("broker_connected{{service=\"{meeting_q}\"}} 1"),
        format!("consumer_attached{{service=\"{meeting_q}\"}} 1"),
        "event_handler_duration_seconds_bucket".to_string(),
        "http_requests_total".to_string(),
        "outbox_backlog".to_string(),
    ] {
        assert!(metrics.contains(&needle), "/metrics lacks {needle}");
    }
    let start_ev = spy.of_type("agenda.election.start")[0];
    let create = spy.of_type("voting.create")[0];
    assert_eq!(
        create.causation_id.as_deref(),
        Some(start_ev.event_id.as_str())
    );
    assert_eq!(
        create.correlation_id.as_deref(),
        Some(start_ev.event_id.as_str())
    );
    stack.stop().await;
}

/// Run one election to its end with the given votes; returns the item's result.
async fn election_with(candidates: &[&str], votes: &[(&str, &str)]) -> Value {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let urls = &stack.urls();
    let bus = Bus::connect(&ctx).await;
    let mut spy = bus.spy("#").await;
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(urls, &alice, "Outcomes").await;
    let (item, election) = open_election(urls, &alice, &meeting).await;
    nominate(urls, &alice, &election, candidates).await;
    start(urls, &alice, &meeting, &item).await;
    if !candidates.is_empty() {
        let ballot = ballot_of(urls, &alice, &election).await;
        let id = ballot["id"].as_str().unwrap();
        for (user, choice) in votes {
            assert_eq!(vote(urls, &Client::as_user(user), id, choice).await.0, 201);
        }
        let (s, _) = alice
            .post(&format!("{}/ballots/{id}/close", urls.voting), json!({}))
            .await;
        assert_eq!(s, 200);
    }
    let result = item_result(urls, &alice, &meeting, &item).await;
    // Every outcome's election.finalized matches the contract.
    assert!(
        spy.until(WAIT, |seen| seen
            .iter()
            .any(|e| e.event_type == "election.finalized"))
            .await
    );
    crate::contract::assert_conforms(&spy.seen);
    let (_, e) = alice
        .get(&format!("{}/elections/{election}", urls.election))
        .await;
    let expected_status = if candidates.is_empty() {
        "cancelled"
    } else {
        "finalized"
    };
    assert_eq!(e["status"], expected_status);
    stack.stop().await;
    result
}

#[tokio::test]
async fn a_shared_lead_is_a_tie_won_by_every_tied_candidate() {
    let r = election_with(
        &["ada", "bob", "cy"],
        &[
            ("u1", "ada"),
            ("u2", "bob"),
            ("u3", "ada"),
            ("u4", "bob"),
            ("u5", "cy"),
        ],
    )
    .await;
    assert_eq!(r["outcome"], "tie");
    assert_eq!(r["winners"], json!(["ada", "bob"]));
    assert_eq!(r["tally"], json!({"ada": 2, "bob": 2, "cy": 1}));
}

#[tokio::test]
async fn a_ballot_closed_without_votes_has_no_winner() {
    let r = election_with(&["ada", "bob"], &[]).await;
    assert_eq!(r["outcome"], "no_votes");
    assert_eq!(r["winners"], json!([]));
    assert_eq!(r["tally"], json!({"ada": 0, "bob": 0}));
}

#[tokio::test]
async fn an_election_started_without_candidates_is_cancelled_and_the_meeting_moves_on() {
    let r = election_with(&[], &[]).await;
    assert_eq!(r["outcome"], "cancelled");
    assert_eq!(r["winners"], json!([]));
}
