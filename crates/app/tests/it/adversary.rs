//! Events checked against what the consumer knows, whoever sent them: forged or replayed
//! events with the right shape and the wrong content are parked with their reason, and
//! change nothing.

use std::time::Duration;

use meeting_events::domain::{MeetingRole, Outcome};
use meeting_events::envelope::Envelope;
use meeting_events::events::{
    ElectionFinalized, Event, MeetingCreated, PermissionChange, VotingCompleted,
};
use meeting_events::messaging::topology::dead_letter_queue;
use serde_json::json;

use crate::flow::{ballot_of, nominate, open_election, start};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

/// Wait for one message in `role`'s dead-letter queue and return its `x-reason`.
async fn parked_reason(ctx: &Ctx, bus: &Bus, role: Role) -> String {
    let dlq = dead_letter_queue(&ctx.queue(role));
    bus.parked_reasons(&dlq, 1).await.remove(0)
}

#[tokio::test]
async fn a_forged_ballot_result_is_parked_and_elects_nobody() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&urls, &alice, "Forgery").await;
    let (item, election) = open_election(&urls, &alice, &meeting).await;
    nominate(&urls, &alice, &election, &["ada", "bob"]).await;
    start(&urls, &alice, &meeting, &item).await;
    ballot_of(&urls, &alice, &election).await;
    let bus = Bus::connect(&ctx).await;
    bus.publish(&Envelope::new(
        &Event::VotingCompleted(VotingCompleted {
            ballot_id: "made-up".into(),
            election_id: election.clone(),
            meeting_id: meeting.clone(),
            tally: [("mallory".to_string(), 999)].into(),
            votes_cast: 999,
        }),
        "voting-service",
    ))
    .await;
    let why = parked_reason(&ctx, &bus, &ELECTION).await;
    assert!(
        why.starts_with("rejected: ") && why.contains("mallory"),
        "{why}"
    );
    let (_, e) = alice
        .get(&format!("{}/elections/{election}", urls.election))
        .await;
    assert_eq!(e["status"], "voting", "no result recorded: {e}");
    stack.stop().await;
}

#[tokio::test]
async fn a_result_for_an_item_that_is_not_voting_is_parked() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&urls, &alice, "Pending").await;
    let (_, item) = alice
        .post(
            &format!("{}/meetings/{meeting}/agenda-items", urls.meeting),
            json!({"title": "Chair", "kind": "election"}),
        )
        .await;
    let item = item["id"].as_str().unwrap().to_string();
    let bus = Bus::connect(&ctx).await;
    bus.publish(&Envelope::new(
        &Event::ElectionFinalized(ElectionFinalized {
            election_id: "e-forged".into(),
            meeting_id: meeting.clone(),
            agenda_item_id: item.clone(),
            winners: vec!["mallory".into()],
            tally: [("mallory".to_string(), 1)].into(),
            outcome: Outcome::Elected,
        }),
        "election-service",
    ))
    .await;
    let why = parked_reason(&ctx, &bus, &MEETING).await;
    assert!(why.contains("pending"), "{why}");
    let (_, m) = alice
        .get(&format!("{}/meetings/{meeting}", urls.meeting))
        .await;
    assert_eq!(m["agenda"][0]["status"], "pending", "{m}");
    assert!(m["agenda"][0]["result"].is_null(), "{m}");
    stack.stop().await;
}

#[tokio::test]
async fn a_replayed_meeting_created_with_another_creator_grants_nothing() {
    let ctx = Ctx::new();
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let created = |by: &str| {
        Envelope::new(
            &Event::MeetingCreated(MeetingCreated {
                meeting_id: "m-replay".into(),
                title: "T".into(),
                created_by: by.into(),
            }),
            "meeting-service",
        )
    };
    bus.publish(&created("alice")).await;
    let alice = Client::as_user("alice");
    let perms = format!("{}/meetings/m-replay/permissions", permission.base);
    eventually(WAIT, || async {
        (alice.get(&perms).await.1.as_array()?.len() == 1).then_some(())
    })
    .await
    .expect("alice became manager");
    bus.publish(&created("mallory")).await;
    let why = parked_reason(&ctx, &bus, &PERMISSION).await;
    assert!(why.contains("another creator"), "{why}");
    let (_, list) = alice.get(&perms).await;
    let users: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice"], "mallory got nothing");
    permission.stop().await.unwrap();
}

#[tokio::test]
async fn a_stale_grant_replayed_after_a_revocation_does_not_bring_it_back() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&urls, &alice, "Stale").await;
    let perms = format!("{}/meetings/{meeting}/permissions", urls.permission);
    // Watch the grant go by, to replay it later.
    let bus = Bus::connect(&ctx).await;
    let mut spy = bus.spy("permission.#").await;
    let (s, b) = alice
        .post(&perms, json!({"user_id": "bob", "role": "manager"}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = alice.delete(&format!("{perms}/bob/manager")).await;
    assert_eq!(s, 204);
    let managers = format!("{}/meetings/{meeting}", urls.meeting);
    eventually(WAIT, || async {
        let (_, m) = alice.get(&managers).await;
        (m["managers"] == json!(["alice"])).then_some(())
    })
    .await
    .expect("the revocation reached the meeting service");
    assert!(
        spy.until(WAIT, |seen| seen.iter().any(|e| e.event_type
            == "permission.granted"
            && e.data["user_id"] == "bob"))
            .await
    );
    let grant = spy
        .of_type("permission.granted")
        .into_iter()
        .find(|e| e.data["user_id"] == "bob")
        .unwrap()
        .clone();
    // The same grant as a new event (as a dead-letter replay of a copy would arrive).
    let mut replay = Envelope::new(
        &Event::PermissionGranted(
            serde_json::from_value::<PermissionChange>(grant.data.clone()).unwrap(),
        ),
        "permission-service",
    );
    replay.correlation_id = grant.correlation_id.clone();
    bus.publish(&replay).await;
    let meeting_why = parked_reason(&ctx, &bus, &MEETING).await;
    assert!(meeting_why.contains("stale"), "{meeting_why}");
    let (_, m) = alice.get(&managers).await;
    assert_eq!(m["managers"], json!(["alice"]), "bob stays revoked: {m}");
    assert_eq!(
        serde_json::from_value::<PermissionChange>(grant.data)
            .unwrap()
            .role,
        MeetingRole::Manager
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_event_id_reused_with_another_body_is_parked_as_a_conflict() {
    let ctx = Ctx::new();
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let first = Envelope::new(
        &Event::MeetingCreated(MeetingCreated {
            meeting_id: "m-first".into(),
            title: "T".into(),
            created_by: "alice".into(),
        }),
        "meeting-service",
    );
    bus.publish(&first).await;
    let alice = Client::as_user("alice");
    let perms = format!("{}/meetings/m-first/permissions", permission.base);
    eventually(WAIT, || async {
        (alice.get(&perms).await.0 == 200).then_some(())
    })
    .await
    .expect("applied");
    // A plain duplicate is acknowledged quietly…
    bus.publish(&first).await;
    // …the same id with another body is not.
    let mut other = first.clone();
    other.data = json!({"meeting_id": "m-other", "title": "T", "created_by": "mallory"});
    bus.publish(&other).await;
    let why = parked_reason(&ctx, &bus, &PERMISSION).await;
    assert!(why.starts_with("conflict: "), "{why}");
    let (s, _) = alice
        .get(&format!("{}/meetings/m-other/permissions", permission.base))
        .await;
    assert_eq!(s, 404, "m-other was never applied");
    permission.stop().await.unwrap();
}
