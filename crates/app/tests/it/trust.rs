//! Strict mode: each role connects as its own broker user, stamps it on what it publishes
//! (the broker checks it), and believes an event only from the broker users of the roles
//! the catalogue names as its producers. Anything else is parked as `untrusted_producer`.

use std::time::Duration;

use meeting_events::domain::MeetingRole;
use meeting_events::envelope::Envelope;
use meeting_events::events::{Event, PermissionChange};
use meeting_events::messaging::topology::dead_letter_queue;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn in_strict_mode_an_event_is_believed_only_from_its_producers_broker_user() {
    let broker = PrivateBroker::start();
    let mut ctx = Ctx::on(broker.url.clone());
    let mut producers = Vec::new();
    for role in meeting_events::roles::ALL {
        let user = ctx.queue(role);
        broker.ctl(&["add_user", &user, "pw"]);
        broker.ctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
        producers.push(format!("{}={user}", role.name));
        ctx.per_role.insert(
            role.name,
            [("AMQP_URL".to_string(), broker.url_as(&user, "pw"))].into(),
        );
    }
    // A pod that holds a broker credential of its own, and publishes what it likes.
    broker.ctl(&["add_user", "mallory", "pw"]);
    broker.ctl(&["set_permissions", "-p", "/", "mallory", ".*", ".*", ".*"]);
    ctx.extra.insert("MQ_TRUST".into(), "strict".into());
    ctx.extra.insert("MQ_PRODUCERS".into(), producers.join(","));

    let stack = Stack::start(&ctx).await;
    let (_, ready) = Client::anonymous()
        .get(&format!("{}/ready", stack.meeting.base))
        .await;
    assert_eq!(ready["trust"], "strict", "{ready}");
    // The roles' own events flow: the creator becomes manager through permission.granted.
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&stack.urls(), &alice, "Strict").await;

    let forged = Envelope::new(
        &Event::PermissionGranted(PermissionChange {
            meeting_id: meeting.clone(),
            user_id: "mallory".into(),
            role: MeetingRole::Manager,
            version: 99,
        }),
        "permission-service",
    );
    // From mallory's own credential, and from a role that does not produce grants.
    let mallory = Bus::connect_to(&broker.url_as("mallory", "pw"), &ctx.exchange).await;
    mallory.publish_as(&forged, "mallory").await;
    let voting_user = ctx.queue(&VOTING);
    let voting = Bus::connect_to(&broker.url_as(&voting_user, "pw"), &ctx.exchange).await;
    let mut second = forged.clone();
    second.event_id = uuid::Uuid::new_v4().to_string();
    voting.publish_as(&second, &voting_user).await;

    let bus = Bus::connect(&ctx).await;
    let dlq = dead_letter_queue(&ctx.queue(&MEETING));
    // Both forgeries parked by the meeting role.
    for why in bus.parked_reasons(&dlq, 2).await {
        assert!(why.starts_with("untrusted_producer: "), "{why}");
    }
    let (_, m) = alice
        .get(&format!("{}/meetings/{meeting}", stack.meeting.base))
        .await;
    assert_eq!(m["managers"], json!(["alice"]), "mallory got nothing: {m}");
    stack.stop().await;
}

#[tokio::test]
async fn an_event_the_broker_refuses_for_good_is_set_aside_and_the_rest_flow() {
    let broker = PrivateBroker::start();
    let mut ctx = Ctx::on(broker.url.clone());
    for role in meeting_events::roles::ALL {
        let user = ctx.queue(role);
        broker.ctl(&["add_user", &user, "pw"]);
        broker.ctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
        ctx.per_role.insert(
            role.name,
            [("AMQP_URL".to_string(), broker.url_as(&user, "pw"))].into(),
        );
    }
    // The meeting role's user may not publish agenda.election.create.
    let meeting_user = ctx.queue(&MEETING);
    broker.ctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        &meeting_user,
        &ctx.exchange,
        "^(meeting\\.created|agenda\\.item\\.(added|opened)|agenda\\.election\\.start)$",
        ".*",
    ]);
    let stack = Stack::start(&ctx).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let first = meeting_with_manager(&urls, &alice, "Refused").await;
    let (s, item) = alice
        .post(
            &format!("{}/meetings/{first}/agenda-items", urls.meeting),
            json!({"title": "Chair", "kind": "election"}),
        )
        .await;
    assert_eq!(s, 201, "{item}");
    let item = item["id"].as_str().unwrap().to_string();
    let (s, _) = alice
        .post(
            &format!("{}/meetings/{first}/agenda-items/{item}/open", urls.meeting),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    // The refused event waits in the outbox; a later one gets through.
    let store = ctx.store(&MEETING).await;
    eventually(Duration::from_secs(20), || async {
        let why: Option<String> = sqlx::query_scalar(
            "SELECT last_error FROM outbox WHERE event_type = 'agenda.election.create'",
        )
        .fetch_optional(&store)
        .await
        .ok()
        .flatten();
        why.filter(|w| w.contains("403")).map(|_| ())
    })
    .await
    .expect("set aside with the broker's 403");
    meeting_with_manager(&urls, &alice, "After").await;
    // Confirmed rows are deleted together within DELETE_AFTER (50 ms) of their confirm.
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox")
            .fetch_one(&store)
            .await
            .unwrap()
    };
    eventually(Duration::from_secs(5), || async {
        (count().await == 1).then_some(())
    })
    .await;
    let left: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT event_type, attempts, last_error FROM outbox ORDER BY seq")
            .fetch_all(&store)
            .await
            .unwrap();
    // Only the refused event: never a neighbour whose publish failed with the refusal.
    assert!(
        left.len() == 1 && left[0].0 == "agenda.election.create",
        "only the refused event stays: {left:?}"
    );
    stack.stop().await;
}
