//! Wire compatibility with the Python `mq.py` helper (pika 1.3.2), both ways
//! (docs/architecture.md §3).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) fn python(
    amqp_url: &str,
    exchange: &str,
    service: &str,
    args: &[&str],
) -> std::process::Output {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    Command::new("python3")
        .arg(dir.join("peer.py"))
        .args(args)
        .current_dir(&dir)
        .env("AMQP_URL", amqp_url)
        .env("MQ_EXCHANGE", exchange)
        .env("SERVICE_NAME", service)
        .output()
        .expect("python3 runs (pip install pika==1.3.2)")
}

/// One event of `routing_key` taken off `queue` by an mq.py consumer named `service`.
async fn consume_one(ctx: &Ctx, service: &str, queue: &str, routing_key: &str) -> Value {
    let (url, exchange) = (ctx.amqp_url.clone(), ctx.exchange.clone());
    let (service, queue, key) = (
        service.to_string(),
        queue.to_string(),
        routing_key.to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        python(
            &url,
            &exchange,
            &service,
            &["consume", &queue, &key, "1", "20"],
        )
    })
    .await
    .expect("the python consumer ran");
    assert!(
        out.status.success(),
        "python consumer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON event")
}

#[tokio::test]
async fn our_events_reach_a_consumer_built_on_mq_py() {
    let ctx = Ctx::new();
    let meeting = Running::spawn(&ctx, &MEETING).await;
    // The Python service's queue, declared exactly as mq.py declares it, so nothing is
    // published before it exists.
    let bus = Bus::connect(&ctx).await;
    let py_queue = format!("{}-py-permission", ctx.prefix);
    bus.durable_queue(&py_queue, "meeting.created").await;

    let (s, created) = Client::as_user("alice")
        .post(
            &format!("{}/meetings", meeting.base),
            json!({"title": "From Rust"}),
        )
        .await;
    assert_eq!(s, 201);
    let event = consume_one(&ctx, "py-permission", &py_queue, "meeting.created").await;
    assert_eq!(event["event_type"], "meeting.created");
    assert_eq!(event["event_version"], 1);
    assert_eq!(event["producer"], ctx.queue(&MEETING));
    assert!(event["event_id"]
        .as_str()
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));
    assert!(event["timestamp"].as_str().is_some());
    assert_eq!(
        event["data"],
        json!({"meeting_id": created["id"], "title": "From Rust", "created_by": "alice"})
    );
    meeting.stop().await.unwrap();
}

#[tokio::test]
async fn mq_py_publish_event_drives_our_election_service() {
    let ctx = Ctx::new();
    let election = Running::spawn(&ctx, &ELECTION).await;
    let data = json!({"meeting_id": "py-meeting", "agenda_item_id": "py-item", "title": "Chair (from Python)"}).to_string();
    let out = python(
        &ctx.amqp_url,
        &ctx.exchange,
        "meeting-service",
        &["publish", "agenda.election.create", &data],
    );
    assert!(
        out.status.success(),
        "python publisher: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let alice = Client::as_user("alice");
    let url = format!("{}/elections?meeting_id=py-meeting", election.base);
    let e = eventually(Duration::from_secs(15), || async {
        alice.get(&url).await.1.as_array()?.first().cloned()
    })
    .await
    .expect("the Python event created an election");
    assert_eq!(e["status"], "nominating");
    assert_eq!(e["title"], "Chair (from Python)");
    assert_eq!(e["agenda_item_id"], "py-item");
    assert_eq!(e["seats"], 1, "mq.py's version 1 reads as one seat");

    // And mq.py's start event moves it on (no candidates → cancelled).
    let start = json!({"meeting_id": "py-meeting", "agenda_item_id": "py-item"}).to_string();
    assert!(python(
        &ctx.amqp_url,
        &ctx.exchange,
        "meeting-service",
        &["publish", "agenda.election.start", &start]
    )
    .status
    .success());
    let id = e["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(15), || async {
        (alice
            .get(&format!("{}/elections/{id}", election.base))
            .await
            .1["status"]
            == "cancelled")
            .then_some(())
    })
    .await
    .expect("start applied");
    election.stop().await.unwrap();
}

/// A consumer built on mq.py does not look at `event_version`: while one consumes
/// `agenda.election.create`, the meeting role is pinned to version 1 (docs/operating.md), and
/// what mq.py receives is version 1 exactly, with no `seats` it could ignore.
#[tokio::test]
async fn a_meeting_role_pinned_to_version_1_feeds_an_mq_py_election_consumer() {
    let mut ctx = Ctx::new();
    ctx.per_role.insert(
        MEETING.name,
        [(
            "EVENT_EMIT_VERSIONS".to_string(),
            "agenda.election.create=1".to_string(),
        )]
        .into(),
    );
    let (permission, meeting) = tokio::join!(
        Running::spawn(&ctx, &PERMISSION),
        Running::spawn(&ctx, &MEETING)
    );
    let bus = Bus::connect(&ctx).await;
    let py_queue = format!("{}-py-election", ctx.prefix);
    bus.durable_queue(&py_queue, "agenda.election.create").await;
    let urls = Urls {
        meeting: meeting.base.clone(),
        election: String::new(),
        voting: String::new(),
        permission: permission.base.clone(),
        live: String::new(),
    };
    let alice = Client::as_user("alice");
    let id = meeting_with_manager(&urls, &alice, "Pinned").await;
    let (s, item) = alice
        .post(
            &format!("{}/meetings/{id}/agenda-items", urls.meeting),
            json!({"title": "Chair", "kind": "election"}),
        )
        .await;
    assert_eq!(s, 201, "{item}");
    let item = item["id"].as_str().expect("an item id").to_string();
    let url = format!("{}/meetings/{id}/agenda-items/{item}/open", urls.meeting);
    assert_eq!(alice.post(&url, json!({})).await.0, 200);

    let event = consume_one(&ctx, "py-election", &py_queue, "agenda.election.create").await;
    assert_eq!(event["event_version"], 1);
    assert_eq!(
        event["data"],
        json!({"meeting_id": id, "agenda_item_id": item, "title": "Chair"})
    );
    for r in [meeting, permission] {
        r.stop().await.unwrap();
    }
}
