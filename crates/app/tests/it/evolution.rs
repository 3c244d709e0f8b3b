//! Changing an event without downtime (docs/architecture.md §3, docs/operating.md "Rolling
//! out a new event version"): a rolling deploy of `agenda.election.create` version 2
//! (`seats`) against a real broker, on the suite's store (SQLite, or PostgreSQL with
//! `TEST_STORE=postgres`).
//!
//! 1. The election role reads only version 1 (`EVENT_READ_VERSIONS`), the meeting role emits
//!    version 1 (`EVENT_EMIT_VERSIONS`): a three-seat item is refused 409, a one-seat
//!    election walks to one winner.
//! 2. Version 1 rows wait in the meeting role's outbox (nothing is bound for the event while
//!    the election role's binding is away) when the meeting role restarts with the gate
//!    lifted; a three-seat item is then accepted, and its version 2 row waits too.
//! 3. The old election role comes back: the version 1 row is read, the version 2 row is
//!    parked `unknown_version` with the versions in its reason, never read as one seat.
//! 4. The election role is upgraded, `app dlq replay` delivers the parked row again, and the
//!    three-seat election walks to three winners. Nothing lost, nothing misread.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Row;

use crate::flow::{ballot_of, item_result, nominate, start, vote};
use crate::helpers::*;
use crate::operator::app;

const WAIT: Duration = Duration::from_secs(20);
const CREATE: &str = "agenda.election.create";

/// Add an election item of `seats` (none: the default) to `meeting`.
async fn add_item(
    urls: &Urls,
    manager: &Client,
    meeting: &str,
    seats: Option<u32>,
) -> (u16, Value) {
    let mut body = json!({"title": "Board", "kind": "election"});
    if let Some(n) = seats {
        body["seats"] = json!(n);
    }
    manager
        .post(
            &format!("{}/meetings/{meeting}/agenda-items", urls.meeting),
            body,
        )
        .await
}

/// Add and open an election item of `seats`; its id.
async fn open_item(urls: &Urls, manager: &Client, meeting: &str, seats: Option<u32>) -> String {
    let (s, item) = add_item(urls, manager, meeting, seats).await;
    assert_eq!(s, 201, "{item}");
    let item = item["id"].as_str().expect("an item id").to_string();
    let url = format!(
        "{}/meetings/{meeting}/agenda-items/{item}/open",
        urls.meeting
    );
    let (s, opened) = manager.post(&url, json!({})).await;
    assert_eq!(s, 200, "{opened}");
    item
}

/// The elections the election role holds for an item (at most one, unless misread twice).
async fn elections_of(urls: &Urls, user: &Client, meeting: &str, item: &str) -> Vec<Value> {
    let url = format!(
        "{}/elections?meeting_id={meeting}&agenda_item_id={item}",
        urls.election
    );
    user.get(&url)
        .await
        .1
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn election_of(urls: &Urls, user: &Client, meeting: &str, item: &str) -> Value {
    eventually(WAIT, || async {
        elections_of(urls, user, meeting, item)
            .await
            .first()
            .cloned()
    })
    .await
    .expect("agenda.election.create reached the election role")
}

/// Nominate `candidates`, start, cast `votes` and close: the item's result.
async fn walk(
    urls: &Urls,
    manager: &Client,
    meeting: &str,
    item: &str,
    candidates: &[&str],
    votes: &[&str],
) -> Value {
    let election = election_of(urls, manager, meeting, item).await;
    let election = election["id"].as_str().expect("an election id");
    nominate(urls, manager, election, candidates).await;
    start(urls, manager, meeting, item).await;
    let ballot = ballot_of(urls, manager, election).await;
    let ballot = ballot["id"].as_str().expect("a ballot id");
    for (n, choice) in votes.iter().enumerate() {
        let voter = Client::as_user(&format!("voter-{n}"));
        assert_eq!(vote(urls, &voter, ballot, choice).await.0, 201);
    }
    let url = format!("{}/ballots/{ballot}/close", urls.voting);
    let (s, closed) = manager.post(&url, json!({})).await;
    assert_eq!(s, 200, "{closed}");
    item_result(urls, manager, meeting, item).await
}

/// The `event_version` of each `agenda.election.create` row waiting in the outbox.
async fn waiting_versions(ctx: &Ctx) -> Vec<u64> {
    let pool = ctx.store(&MEETING).await;
    let rows = sqlx::query("SELECT body FROM outbox WHERE event_type = $1 ORDER BY seq")
        .bind(CREATE)
        .fetch_all(&pool)
        .await
        .expect("the outbox");
    pool.close().await;
    rows.iter()
        .map(|r| {
            let body: Vec<u8> = r.get("body");
            let env: Value = serde_json::from_slice(&body).expect("an envelope");
            env["event_version"].as_u64().expect("a version")
        })
        .collect()
}

/// The version each applied `agenda.election.create` arrived in, as the inbox recorded it.
async fn applied_versions(ctx: &Ctx) -> Vec<i64> {
    let pool = ctx.store(&ELECTION).await;
    let rows =
        sqlx::query("SELECT event_version FROM inbox WHERE event_type = $1 ORDER BY event_version")
            .bind(CREATE)
            .fetch_all(&pool)
            .await
            .expect("the inbox");
    pool.close().await;
    rows.iter()
        .map(|r| r.get::<i64, _>("event_version"))
        .collect()
}

#[tokio::test]
async fn a_rolling_deploy_of_a_new_event_version_loses_and_misreads_nothing() {
    let mut ctx = Ctx::new();
    let pin = |var: &str| [(var.to_string(), format!("{CREATE}=1"))].into();
    ctx.per_role
        .insert(ELECTION.name, pin("EVENT_READ_VERSIONS"));
    ctx.per_role
        .insert(MEETING.name, pin("EVENT_EMIT_VERSIONS"));
    let (permission, voting, old_election, gated_meeting) = tokio::join!(
        Running::spawn(&ctx, &PERMISSION),
        Running::spawn(&ctx, &VOTING),
        Running::spawn(&ctx, &ELECTION),
        Running::spawn(&ctx, &MEETING),
    );
    let mut urls = Urls {
        meeting: gated_meeting.base.clone(),
        election: old_election.base.clone(),
        voting: voting.base.clone(),
        permission: permission.base.clone(),
        live: String::new(),
    };
    let alice = Client::as_user("alice");
    let bus = Bus::connect(&ctx).await;
    let queue = ctx.queue(&ELECTION);
    let dlq = meeting_events::messaging::topology::dead_letter_queue(&queue);

    // 1. Gated: three seats cannot be said in version 1, so they are refused before
    //    anything is written; one seat walks through the old election role.
    let meeting_a = meeting_with_manager(&urls, &alice, "Step 1").await;
    let (s, refused) = add_item(&urls, &alice, &meeting_a, Some(3)).await;
    assert_eq!(s, 409, "{refused}");
    let reason = refused["message"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("seats = 3 cannot be said in version 1")
            && reason.contains("EVENT_EMIT_VERSIONS"),
        "{reason}"
    );
    let item_a = open_item(&urls, &alice, &meeting_a, None).await;
    let result_a = walk(
        &urls,
        &alice,
        &meeting_a,
        &item_a,
        &["ada", "bob"],
        &["ada", "ada", "bob"],
    )
    .await;
    assert_eq!(result_a["winners"], json!(["ada"]), "{result_a}");

    // 2. Nothing bound for the event: the meeting role's version 1 row waits in its outbox
    //    across its restart with the gate lifted.
    bus.channel
        .queue_unbind(
            queue.as_str().into(),
            ctx.exchange.as_str().into(),
            CREATE.into(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("unbound");
    let meeting_b = meeting_with_manager(&urls, &alice, "Step 2").await;
    let item_b = open_item(&urls, &alice, &meeting_b, None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_restart = waiting_versions(&ctx).await;
    assert_eq!(before_restart, [1], "the version 1 row waits");
    gated_meeting.stop().await.expect("a clean stop");
    ctx.per_role.remove(MEETING.name);
    let meeting = Running::spawn(&ctx, &MEETING).await;
    urls.meeting = meeting.base.clone();
    let meeting_c = meeting_with_manager(&urls, &alice, "Step 2, gate lifted").await;
    let item_c = open_item(&urls, &alice, &meeting_c, Some(3)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_restart = waiting_versions(&ctx).await;
    assert_eq!(
        after_restart,
        [1, 2],
        "the old row kept its version; the new one is v2"
    );

    // 3. The old election role back (its start binds its queue again): version 1 is read,
    //    version 2 is parked with the versions in its reason, never read as one seat.
    old_election.stop().await.expect("a clean stop");
    let old_election = Running::spawn(&ctx, &ELECTION).await;
    urls.election = old_election.base.clone();
    let b = election_of(&urls, &alice, &meeting_b, &item_b).await;
    assert_eq!(b["seats"], 1, "{b}");
    eventually(WAIT, || async {
        (bus.queue_len(&dlq).await == 1).then_some(())
    })
    .await
    .expect("the version 2 event parked by the old consumer");
    let listed = String::from_utf8_lossy(&app(&ctx, &["dlq", "list", "--service", &queue]).stdout)
        .into_owned();
    assert!(
        listed.contains("unknown_version")
            && listed.contains("event_version 2 of agenda.election.create")
            && listed.contains("reads versions 1 to 1"),
        "{listed}"
    );
    assert!(
        elections_of(&urls, &alice, &meeting_c, &item_c)
            .await
            .is_empty(),
        "three seats never read as one"
    );
    // Confirmed rows are deleted together, within DELETE_AFTER (50 ms) of their confirm.
    eventually(WAIT, || async {
        waiting_versions(&ctx).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        waiting_versions(&ctx).await,
        Vec::<u64>::new(),
        "the outbox is empty"
    );

    // 4. Upgraded, and the parked event replayed: three seats, three winners.
    old_election.stop().await.expect("a clean stop");
    ctx.per_role.remove(ELECTION.name);
    let election = Running::spawn(&ctx, &ELECTION).await;
    urls.election = election.base.clone();
    let out = app(&ctx, &["dlq", "replay", "--service", &queue, "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = election_of(&urls, &alice, &meeting_c, &item_c).await;
    assert_eq!(c["seats"], 3, "{c}");
    let result_c = walk(
        &urls,
        &alice,
        &meeting_c,
        &item_c,
        &["ada", "bob", "cy", "dee"],
        &["ada", "ada", "bob", "cy", "cy", "dee", "dee", "dee"],
    )
    .await;
    assert_eq!(
        result_c["winners"],
        json!(["ada", "cy", "dee"]),
        "{result_c}"
    );
    let result_b = walk(&urls, &alice, &meeting_b, &item_b, &["eve"], &["eve"]).await;
    assert_eq!(result_b["winners"], json!(["eve"]), "{result_b}");

    // Each item has exactly one election; the inbox says which version each arrived in.
    for (m, i) in [
        (&meeting_a, &item_a),
        (&meeting_b, &item_b),
        (&meeting_c, &item_c),
    ] {
        assert_eq!(
            elections_of(&urls, &alice, m, i).await.len(),
            1,
            "one election per item"
        );
    }
    let applied = applied_versions(&ctx).await;
    assert_eq!(applied, [1, 1, 2]);
    assert_eq!(bus.queue_len(&dlq).await, 0, "nothing left parked");
    eprintln!(
        "rolling deploy: 409 while gated; waiting at the producer's restart: versions {before_restart:?}, \
         after the gate lifted: {after_restart:?}; parked by the v1 consumer: 1 (unknown_version), \
         replayed after its upgrade: 1; applied versions {applied:?}; winners A {} B {} C {}; \
         lost 0, misread 0",
        result_a["winners"], result_b["winners"], result_c["winners"]
    );
    for r in [meeting, election, voting, permission] {
        r.stop().await.expect("a clean stop");
    }
}
