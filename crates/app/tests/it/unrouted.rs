//! A deployment without the live role (docs/architecture.md §5, "Unroutable events"): the
//! four roles of the original guide walk a meeting to its result and a stream of meetings;
//! every outbox is empty within seconds, and the events only the live role would have
//! watched are held by the broker in `<exchange>.unrouted`, as many as the roles counted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::flow::{ballot_of, item_result, nominate, open_election, start, vote};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

/// Rows left in a role's outbox.
async fn outbox_rows(ctx: &Ctx, role: Role) -> i64 {
    let pool = ctx.store(role).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("the outbox");
    pool.close().await;
    n
}

/// The sum of `events_unrouted_total` over every series of a scrape.
fn unrouted_counted(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("events_unrouted_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn without_the_live_role_outboxes_empty_and_the_broker_holds_what_nobody_takes() {
    let ctx = Ctx::new();
    let roles = [&PERMISSION, &MEETING, &ELECTION, &VOTING];
    let (permission, meeting, election, voting) = tokio::join!(
        Running::spawn(&ctx, roles[0]),
        Running::spawn(&ctx, roles[1]),
        Running::spawn(&ctx, roles[2]),
        Running::spawn(&ctx, roles[3]),
    );
    let urls = Urls {
        meeting: meeting.base.clone(),
        election: election.base.clone(),
        voting: voting.base.clone(),
        permission: permission.base.clone(),
        live: String::new(),
    };
    let alice = Client::as_user("alice");

    // A walk to an elected result.
    let walked = meeting_with_manager(&urls, &alice, "No live role").await;
    let (item, election_id) = open_election(&urls, &alice, &walked).await;
    nominate(&urls, &alice, &election_id, &["ada", "bob"]).await;
    start(&urls, &alice, &walked, &item).await;
    let ballot = ballot_of(&urls, &alice, &election_id).await;
    let ballot = ballot["id"].as_str().expect("a ballot id");
    for (who, choice) in [("v1", "ada"), ("v2", "ada"), ("v3", "bob")] {
        assert_eq!(
            vote(&urls, &Client::as_user(who), ballot, choice).await.0,
            201
        );
    }
    let url = format!("{}/ballots/{ballot}/close", urls.voting);
    assert_eq!(alice.post(&url, json!({})).await.0, 200);
    let result = item_result(&urls, &alice, &walked, &item).await;
    assert_eq!(result["winners"], json!(["ada"]), "{result}");

    // A stream of meetings, each with an item: every one granted to its creator.
    const STREAM: usize = 20;
    for n in 0..STREAM {
        let id = meeting_with_manager(&urls, &alice, &format!("Meeting {n}")).await;
        let (s, body) = alice
            .post(
                &format!("{}/meetings/{id}/agenda-items", urls.meeting),
                json!({"title": "Minutes", "kind": "discussion"}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }

    // Every outbox empties within seconds of the last request.
    let emptied = std::time::Instant::now();
    let left = eventually(WAIT, || async {
        let mut left = BTreeMap::new();
        for role in roles {
            left.insert(role.name, outbox_rows(&ctx, role).await);
        }
        left.values().all(|n| *n == 0).then_some(left)
    })
    .await;
    let left = left.expect("every outbox empty");

    // The broker holds the events only the live role watches, as many as were counted.
    let bus = Bus::connect(&ctx).await;
    let queue = meeting_events::messaging::topology::unrouted_queue(&ctx.exchange);
    let counted = unrouted_counted(&metrics_text(&meeting.base).await);
    let held = bus.drain(&queue).await;
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for m in &held {
        let env =
            meeting_events::envelope::Envelope::from_bytes(&m.delivery.data).expect("an envelope");
        *by_type.entry(env.event_type).or_default() += 1;
        let reason = meeting_events::messaging::headers::text(
            &m.delivery.properties,
            meeting_events::messaging::headers::REASON,
        );
        assert!(reason.is_some_and(|r| r.contains("NO_ROUTE")), "its reason");
    }
    let expected: BTreeMap<String, u64> = [
        ("agenda.item.added", STREAM as u64 + 1),
        ("agenda.item.opened", 1),
        ("election.nomination.accepted", 2),
        ("election.opened", 1),
        ("voting.ballot.opened", 1),
        ("voting.vote.counted", 3),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(by_type, expected, "what only the live role watches");
    assert_eq!(held.len() as u64, counted, "held as counted");
    eprintln!(
        "without the live role: outboxes {left:?} {:.1} s after the last request; \
         {} events held in {queue} ({by_type:?}), events_unrouted_total {counted}",
        emptied.elapsed().as_secs_f64(),
        held.len()
    );
    for r in [meeting, election, voting, permission] {
        r.stop().await.expect("a clean stop");
    }
}
