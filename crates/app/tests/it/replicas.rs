//! Two replicas of a role on one store and one queue: the invariants the store holds hold
//! under concurrent requests sent to both at once, and competing consumers apply each event
//! once (docs/architecture.md §7). Run on SQLite and, by scripts/test.sh, on PostgreSQL.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use meeting_events::envelope::Envelope;
use meeting_events::events::{Event, MeetingCreated};
use serde_json::json;

use crate::flow::{ballot_of, nominate, open_election, start};
use crate::helpers::*;

/// A meeting with alice as its manager and an open ballot over ada and bob.
async fn open_ballot(stack: &Stack, alice: &Client) -> String {
    let urls = stack.urls();
    let meeting = meeting_with_manager(&urls, alice, "Replicas").await;
    let (item, election) = open_election(&urls, alice, &meeting).await;
    nominate(&urls, alice, &election, &["ada", "bob"]).await;
    start(&urls, alice, &meeting, &item).await;
    ballot_of(&urls, alice, &election).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn one_user_votes_once_however_many_replicas_take_the_vote() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let voting2 = Running::spawn(&ctx, &VOTING).await;
    let alice = Client::as_user("alice");
    let ballot = open_ballot(&stack, &alice).await;
    let carol = Client::as_user("carol");
    let answers = join_all((0..16).map(|i| {
        let base = if i % 2 == 0 {
            &stack.voting.base
        } else {
            &voting2.base
        };
        let url = format!("{base}/ballots/{ballot}/votes");
        let carol = carol.clone();
        async move { carol.post(&url, json!({"choice": "ada"})).await.0 }
    }))
    .await;
    assert_eq!(
        answers.iter().filter(|s| **s == 201).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|s| **s == 409).count(),
        15,
        "{answers:?}"
    );
    voting2.stop().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn every_accepted_vote_is_in_the_tally_when_a_close_races_the_votes() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let voting2 = Running::spawn(&ctx, &VOTING).await;
    let alice = Client::as_user("alice");
    let ballot = open_ballot(&stack, &alice).await;
    let bases = [stack.voting.base.clone(), voting2.base.clone()];
    let votes = (0..24).map(|i| {
        let url = format!("{}/ballots/{ballot}/votes", bases[i % 2]);
        async move {
            Client::as_user(&format!("voter{i}"))
                .post(&url, json!({"choice": "bob"}))
                .await
                .0
        }
    });
    let close_url = format!("{}/ballots/{ballot}/close", bases[1]);
    let close = async {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        alice.post(&close_url, json!({})).await
    };
    let (answers, (status, closed)) = tokio::join!(join_all(votes), close);
    assert_eq!(status, 200, "{closed}");
    let accepted = answers.iter().filter(|s| **s == 201).count() as u64;
    assert!(
        answers.iter().all(|s| *s == 201 || *s == 409),
        "{answers:?}"
    );
    assert_eq!(
        closed["votes_cast"].as_u64(),
        Some(accepted),
        "a 201 vote is counted, a refused one is not: {closed}"
    );
    assert_eq!(closed["tally"]["bob"].as_u64(), Some(accepted));
    voting2.stop().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn agenda_positions_stay_unique_when_two_replicas_add_items_at_once() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let meeting2 = Running::spawn(&ctx, &MEETING).await;
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&stack.urls(), &alice, "Positions").await;
    // The second replica learns the grant from its share of the queue; wait until it has.
    let seen = format!("{}/meetings/{meeting}", meeting2.base);
    eventually(std::time::Duration::from_secs(10), || async {
        (!alice.get(&seen).await.1["managers"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let bases = [stack.meeting.base.clone(), meeting2.base.clone()];
    let answers = join_all((0..20).map(|i| {
        let url = format!("{}/meetings/{meeting}/agenda-items", bases[i % 2]);
        let alice = alice.clone();
        async move {
            alice
                .post(
                    &url,
                    json!({"title": format!("item {i}"), "kind": "discussion"}),
                )
                .await
        }
    }))
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
    }
    let positions: BTreeSet<i64> = answers
        .iter()
        .map(|(_, b)| b["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, (1..=20).collect(), "each position taken once");
    meeting2.stop().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn a_meeting_keeps_a_manager_when_its_managers_revoke_each_other_on_two_replicas() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let permission2 = Running::spawn(&ctx, &PERMISSION).await;
    let (alice, bob) = (Client::as_user("alice"), Client::as_user("bob"));
    let p = [stack.permission.base.clone(), permission2.base.clone()];
    for round in 0..6 {
        let meeting = meeting_with_manager(&stack.urls(), &alice, &format!("Round {round}")).await;
        let perms = format!("{}/meetings/{meeting}/permissions", p[0]);
        let (s, b) = alice
            .post(&perms, json!({"user_id": "bob", "role": "manager"}))
            .await;
        assert_eq!(s, 201, "{b}");
        let revoke_bob = format!("{}/meetings/{meeting}/permissions/bob/manager", p[0]);
        let revoke_alice = format!("{}/meetings/{meeting}/permissions/alice/manager", p[1]);
        let (a, b) = tokio::join!(alice.delete(&revoke_bob), bob.delete(&revoke_alice));
        let statuses = [a.0, b.0];
        assert_eq!(
            statuses.iter().filter(|s| **s == 204).count(),
            1,
            "exactly one revocation wins: {a:?} {b:?}"
        );
        // The list is for managers: read it as whoever is left.
        let (_, list) = if statuses[1] == 204 {
            bob.get(&perms).await
        } else {
            alice.get(&perms).await
        };
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(1),
            "one manager remains: {list}"
        );
    }
    permission2.stop().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn an_event_delivered_to_two_competing_consumers_is_applied_once() {
    let ctx = Ctx::new();
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let permission2 = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let events: Vec<Envelope> = (0..40)
        .map(|i| {
            Envelope::new(
                &Event::MeetingCreated(MeetingCreated {
                    meeting_id: format!("m-{i}"),
                    title: "T".into(),
                    created_by: "alice".into(),
                }),
                "meeting-service",
            )
        })
        .collect();
    // Every event three times, interleaved: copies land on both replicas at once.
    for _ in 0..3 {
        for e in &events {
            bus.publish(e).await;
        }
    }
    let store = ctx.store(&PERMISSION).await;
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&store)
                .await
                .unwrap()
        }
    };
    eventually(std::time::Duration::from_secs(15), || async {
        (count("SELECT COUNT(*) FROM inbox").await == 40).then_some(())
    })
    .await
    .expect("every event applied");
    // Let any copy still in flight arrive.
    eventually(std::time::Duration::from_secs(5), || async {
        (bus.queue_len(&ctx.queue(&PERMISSION)).await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count("SELECT COUNT(*) FROM meetings").await, 40);
    assert_eq!(
        count("SELECT COUNT(*) FROM permissions").await,
        40,
        "one grant each"
    );
    assert_eq!(count("SELECT COUNT(*) FROM inbox").await, 40);
    permission.stop().await.unwrap();
    permission2.stop().await.unwrap();
}
