//! Delivery guarantees at the consumer: duplicates, poison, out-of-order, retries.

use std::time::Duration;

use meeting_events::envelope::Envelope;
use meeting_events::events::{ElectionCreate, ElectionStart, Event, MeetingCreated};
use meeting_events::messaging::headers;
use meeting_events::messaging::topology::dead_letter_queue;
use serde_json::json;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_same_event_delivered_three_times_is_applied_once() {
    let ctx = Ctx::new();
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let mut spy = bus.spy("permission.*").await;
    let created = Envelope::new(
        &Event::MeetingCreated(MeetingCreated {
            meeting_id: "m-dup".into(),
            title: "Dup".into(),
            created_by: "alice".into(),
        }),
        "meeting-service",
    );
    for _ in 0..3 {
        bus.publish(&created).await;
    }
    assert!(spy.until(WAIT, |s| !s.is_empty()).await);
    spy.collect_for(Duration::from_secs(1)).await;
    assert_eq!(
        spy.seen.len(),
        1,
        "one grant for three deliveries: {:?}",
        spy.seen
    );
    let (s, list) = Client::as_user("alice")
        .get(&format!("{}/meetings/m-dup/permissions", permission.base))
        .await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    permission.stop().await.unwrap();
}

#[tokio::test]
async fn poison_messages_are_parked_with_their_reason_while_good_traffic_flows() {
    let ctx = Ctx::new();
    let election = Running::spawn(&ctx, &ELECTION).await;
    let bus = Bus::connect(&ctx).await;
    let good = |n: u32| {
        Envelope::new(
            &Event::ElectionCreate(ElectionCreate {
                meeting_id: "m-poison".into(),
                agenda_item_id: format!("i{n}"),
                title: "T".into(),
                seats: 1,
            }),
            "meeting-service",
        )
    };
    let mut unknown_version = good(99);
    unknown_version.event_version = 7;
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "not UTF-8 JSON"),
        (br#"{"hello": "world"}"#.to_vec(), "not an event envelope"),
        (unknown_version.to_bytes(), "event_version 7"),
        (
            serde_json::to_vec(&json!({"event_type": "agenda.election.create", "event_version": 1, "event_id": "x1", "timestamp": "t", "producer": "p", "data": {"meeting_id": "m"}})).unwrap(),
            "missing field",
        ),
    ];
    for (i, (body, _)) in poison.iter().enumerate() {
        bus.publish(&good(i as u32)).await;
        bus.publish_raw("agenda.election.create", body).await;
    }
    // The good ones all arrive.
    let url = format!("{}/elections?meeting_id=m-poison", election.base);
    let alice = Client::as_user("alice");
    eventually(WAIT, || async {
        (alice.get(&url).await.1.as_array()?.len() == 4).then_some(())
    })
    .await
    .expect("good events applied past the poison");

    let dlq = dead_letter_queue(&ctx.queue(&ELECTION));
    let parked = eventually(WAIT, || async {
        let n = bus.queue_len(&dlq).await;
        (n >= 4).then_some(())
    })
    .await;
    assert!(
        parked.is_some(),
        "4 parked, saw {}",
        bus.queue_len(&dlq).await
    );
    let parked = bus.drain(&dlq).await;
    // Parking is at least once: the copy to the dead-letter queue is confirmed before the
    // delivery is acked, so a connection lost between the two parks it again when it comes
    // back. Each message counts once; none but the four poison messages may be there.
    let mut distinct: Vec<&lapin::message::BasicGetMessage> = Vec::new();
    for msg in &parked {
        if !distinct
            .iter()
            .any(|m| m.delivery.data == msg.delivery.data)
        {
            distinct.push(msg);
        }
    }
    assert_eq!(
        distinct.len(),
        4,
        "the four poison messages and nothing else ({} parked)",
        parked.len()
    );
    for ((body, reason), msg) in poison.iter().zip(&distinct) {
        assert_eq!(&msg.delivery.data, body, "parked in the order they came");
        let props = &msg.delivery.properties;
        let why = headers::text(props, headers::REASON).unwrap_or_default();
        assert!(why.contains(reason), "{why:?} should mention {reason:?}");
        assert_eq!(
            headers::count(props, headers::ATTEMPTS),
            Some(1),
            "parked at once, not retried"
        );
        assert_eq!(
            headers::text(props, headers::ORIGINAL_ROUTING_KEY).as_deref(),
            Some("agenda.election.create")
        );
        assert!(headers::text(props, headers::PARKED_AT).is_some());
    }
    assert_eq!(
        bus.queue_len(&ctx.queue(&ELECTION)).await,
        0,
        "main queue drained"
    );
    election.stop().await.unwrap();
}

#[tokio::test]
async fn a_start_that_overtakes_its_create_is_applied_once_the_create_arrives() {
    let ctx = Ctx::new();
    let election = Running::spawn(&ctx, &ELECTION).await;
    let bus = Bus::connect(&ctx).await;
    let start = Envelope::new(
        &Event::ElectionStart(ElectionStart {
            meeting_id: "m-ooo".into(),
            agenda_item_id: "i1".into(),
        }),
        "meeting-service",
    );
    bus.publish(&start).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let create = Envelope::new(
        &Event::ElectionCreate(ElectionCreate {
            meeting_id: "m-ooo".into(),
            agenda_item_id: "i1".into(),
            title: "T".into(),
            seats: 1,
        }),
        "meeting-service",
    );
    bus.publish(&create).await;

    // The start waits in the broker's retry queue, then applies: no candidates → cancelled.
    let url = format!("{}/elections?meeting_id=m-ooo", election.base);
    let alice = Client::as_user("alice");
    let status = eventually(WAIT, || async {
        let e = alice.get(&url).await.1.as_array()?.first()?.clone();
        (e["status"] != "nominating").then(|| e["status"].clone())
    })
    .await
    .expect("start applied after the create");
    assert_eq!(status, "cancelled");
    assert_eq!(
        bus.queue_len(&dead_letter_queue(&ctx.queue(&ELECTION)))
            .await,
        0,
        "nothing parked"
    );
    election.stop().await.unwrap();
}

#[tokio::test]
async fn a_failure_that_persists_is_retried_with_delays_then_parked() {
    let ctx = Ctx::new();
    let election = Running::spawn(&ctx, &ELECTION).await;
    let bus = Bus::connect(&ctx).await;
    // A start whose create never comes: retried after 200ms and 400ms, then parked.
    let start = Envelope::new(
        &Event::ElectionStart(ElectionStart {
            meeting_id: "m-never".into(),
            agenda_item_id: "i1".into(),
        }),
        "meeting-service",
    );
    let sent = std::time::Instant::now();
    bus.publish(&start).await;
    let dlq = dead_letter_queue(&ctx.queue(&ELECTION));
    eventually(WAIT, || async {
        (bus.queue_len(&dlq).await == 1).then_some(())
    })
    .await
    .expect("parked");
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "the broker held it for both delays"
    );
    let parked = bus.drain(&dlq).await;
    let props = &parked[0].delivery.properties;
    assert_eq!(headers::count(props, headers::ATTEMPTS), Some(3));
    let why = headers::text(props, headers::REASON).unwrap();
    assert!(
        why.contains("gave up after 3 attempts") && why.contains("agenda.election.create not seen"),
        "{why}"
    );
    assert_eq!(
        Envelope::from_bytes(&parked[0].delivery.data).unwrap(),
        start,
        "parked as sent"
    );
    election.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_event_in_a_batch_costs_only_itself() {
    let ctx = Ctx::new();
    // Declare the queue, then let a backlog build up so the consumer takes it in batches.
    Running::spawn(&ctx, &ELECTION).await.stop().await.unwrap();
    let bus = Bus::connect(&ctx).await;
    for i in 0..40 {
        if i == 10 {
            bus.publish_raw("agenda.election.create", b"{broken").await;
        }
        if i == 20 {
            let orphan = Envelope::new(
                &Event::ElectionStart(ElectionStart {
                    meeting_id: "m-batch".into(),
                    agenda_item_id: "nowhere".into(),
                }),
                "meeting-service",
            );
            bus.publish(&orphan).await;
        }
        let create = Envelope::new(
            &Event::ElectionCreate(ElectionCreate {
                meeting_id: "m-batch".into(),
                agenda_item_id: format!("i{i}"),
                title: "T".into(),
                seats: 1,
            }),
            "meeting-service",
        );
        bus.publish(&create).await;
        if i == 30 {
            bus.publish(&create).await; // a duplicate inside the backlog
        }
    }
    let election = Running::spawn(&ctx, &ELECTION).await;
    let url = format!("{}/elections?meeting_id=m-batch", election.base);
    let alice = Client::as_user("alice");
    eventually(WAIT, || async {
        (alice.get(&url).await.1.as_array()?.len() == 40).then_some(())
    })
    .await
    .expect("all 40 creates applied despite the failures among them");
    let dlq = dead_letter_queue(&ctx.queue(&ELECTION));
    let settled = eventually(WAIT, || async {
        (bus.queue_len(&dlq).await == 2).then_some(())
    })
    .await;
    let parked = bus.drain(&dlq).await;
    let seen: Vec<(Option<String>, Option<u64>)> = parked
        .iter()
        .map(|m| {
            let props = &m.delivery.properties;
            (
                headers::text(props, headers::REASON),
                headers::count(props, headers::ATTEMPTS),
            )
        })
        .collect();
    assert!(
        settled.is_some(),
        "the broken message and the orphan start parked, nothing else; parked: {seen:?}"
    );
    let attempts: Vec<Option<u64>> = parked
        .iter()
        .map(|m| headers::count(&m.delivery.properties, headers::ATTEMPTS))
        .collect();
    assert_eq!(
        attempts,
        [Some(1), Some(3)],
        "the broken one at once, the orphan after its retries"
    );
    election.stop().await.unwrap();
}
