//! The fault suite: broker crashes, consumer crashes, and what was accepted against what was
//! applied. Each destructive test runs its own private broker node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meeting_events::envelope::Envelope;
use meeting_events::events::{Event, MeetingCreated};
use serde_json::json;
use sqlx::AnyPool;

use crate::helpers::*;

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// How many copies of each event id are in a queue.
pub(crate) async fn copies(bus: &Bus, queue: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in bus.drain(queue).await {
        if let Ok(env) = Envelope::from_bytes(&m.delivery.data) {
            *out.entry(env.event_id).or_insert(0) += 1;
        }
    }
    out
}

pub(crate) async fn count(pool: &AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Clients posting meetings until stopped, recording the ids of the 201s and the status of
/// anything else.
pub(crate) struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<Vec<u16>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `per_base` clients on each of `bases`.
    pub(crate) fn start(bases: &[&str], per_base: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let refused: Arc<Mutex<Vec<u16>>> = Arc::default();
        let mut workers = Vec::new();
        for (b, base) in bases.iter().enumerate() {
            for w in 0..per_base {
                let (base, stop, accepted, refused) = (
                    base.to_string(),
                    stop.clone(),
                    accepted.clone(),
                    refused.clone(),
                );
                workers.push(tokio::spawn(async move {
                    let alice = Client::as_user("alice");
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let (s, body) = alice
                            .post(
                                &format!("{base}/meetings"),
                                json!({"title": format!("load {b}-{w}-{n}")}),
                            )
                            .await;
                        if s == 201 {
                            accepted
                                .lock()
                                .unwrap()
                                .push(body["id"].as_str().unwrap().to_string());
                        } else {
                            refused.lock().unwrap().push(s);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
            }
        }
        Self {
            stop,
            accepted,
            refused,
            workers,
        }
    }

    /// Accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Stop the clients: the accepted ids and the other statuses.
    pub(crate) async fn finish(self) -> (Vec<String>, Vec<u16>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let accepted = self.accepted.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        (accepted, refused)
    }
}

/// What the permission service made of the accepted meetings.
pub(crate) struct Granted {
    /// Its store.
    pub(crate) perm: AnyPool,
    /// Meetings accepted.
    pub(crate) want: i64,
    /// Meetings it holds (waited for until there are as many as were accepted).
    pub(crate) applied: i64,
    /// Accepted meetings it does not hold.
    pub(crate) lost: usize,
    /// Grants it made.
    pub(crate) grants: i64,
}

pub(crate) async fn granted(ctx: &Ctx, accepted: &[String]) -> Granted {
    let perm = &ctx.store(&PERMISSION).await;
    let want = accepted.len() as i64;
    let applied = eventually(WAIT, || async {
        let n = count(perm, "SELECT COUNT(*) FROM meetings").await;
        (n >= want).then_some(n)
    })
    .await;
    let applied = applied.unwrap_or(count(perm, "SELECT COUNT(*) FROM meetings").await);
    let ids: HashSet<String> = sqlx::query_scalar("SELECT id FROM meetings")
        .fetch_all(perm)
        .await
        .unwrap()
        .into_iter()
        .collect();
    Granted {
        perm: perm.clone(),
        want,
        applied,
        lost: accepted.iter().filter(|id| !ids.contains(*id)).count(),
        grants: count(perm, "SELECT COUNT(*) FROM permissions").await,
    }
}

/// A private broker, a context on it, a bus and a durable spy queue bound to `binding`,
/// declared before anything is published.
pub(crate) async fn private_broker_with_spy(binding: &str) -> (PrivateBroker, Ctx, Bus, String) {
    let broker = PrivateBroker::start();
    let ctx = Ctx::on(broker.url.clone());
    let bus = Bus::connect(&ctx).await;
    let spy = format!("{}-spy", ctx.prefix);
    bus.durable_queue(&spy, binding).await;
    (broker, ctx, bus, spy)
}

/// Kill the broker with SIGKILL while the meeting API takes requests, restart it from its
/// data directory, and check: every 2xx's event reached the permission service exactly once.
async fn broker_crash(kill_after: Duration, outage: Duration, concurrency: usize) {
    let (broker, ctx, _bus, spy) = private_broker_with_spy("meeting.created").await;
    let (meeting, permission) = tokio::join!(
        Running::spawn(&ctx, &MEETING),
        Running::spawn(&ctx, &PERMISSION)
    );

    let load = Load::start(&[&meeting.base], concurrency);

    tokio::time::sleep(kill_after).await;
    broker.kill().await;
    let killed_at = Instant::now();
    let ready = format!("{}/ready", meeting.base);
    let not_ready = eventually(Duration::from_secs(10), || async {
        (reqwest::get(&ready).await.ok()?.status() == 503).then_some(())
    })
    .await;
    assert!(
        not_ready.is_some(),
        "/ready must answer 503 while the broker is down"
    );
    let during = load.accepted();
    tokio::time::sleep(outage).await;
    broker.restart().await;
    let back_at = Instant::now();
    if !meeting.wait_ready_within(Duration::from_secs(30)).await {
        let why = reqwest::get(&ready).await.unwrap().text().await.unwrap();
        panic!("/ready not 200 within 30 s of the broker's return: {why}");
    }
    let recovered = back_at.elapsed();
    assert!(permission.wait_ready_within(Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (accepted, refused) = load.finish().await;
    assert!(
        refused.is_empty(),
        "the API kept answering 2xx through the outage: {refused:?}"
    );
    assert!(
        accepted.len() > during,
        "requests were accepted after the crash too"
    );

    // Every accepted meeting is applied by the permission service, once.
    let Granted {
        perm,
        want,
        applied,
        lost,
        grants,
    } = granted(&ctx, &accepted).await;
    let inbox = count(
        &perm,
        "SELECT COUNT(*) FROM inbox WHERE event_type = 'meeting.created'",
    )
    .await;

    let bus = Bus::connect(&ctx).await;
    let wire = copies(&bus, &spy).await;
    let wire_dupes: usize = wire.values().map(|n| n - 1).sum();
    eprintln!(
        "broker crash: accepted {} ({} before the kill), applied {applied}, lost {}, grants {grants}, inbox {inbox}, \
         copies on the wire {} (redelivered duplicates {wire_dupes}), /ready back {:.1}s after the broker, outage {:.1}s",
        accepted.len(),
        during,
        lost,
        wire.len(),
        recovered.as_secs_f64(),
        killed_at.elapsed().as_secs_f64() - recovered.as_secs_f64(),
    );
    assert_eq!(lost, 0, "lost {lost} accepted events");
    assert_eq!(applied, want, "applied exactly the accepted events");
    assert_eq!(grants, want, "one grant per meeting: nothing doubled");
    assert_eq!(inbox, want);
    assert_eq!(
        wire.len() as i64,
        want,
        "every accepted event reached the bus"
    );
    // Confirmed rows are deleted together, within DELETE_AFTER (50 ms) of their confirm.
    let meeting_store = ctx.store(&MEETING).await;
    let outbox = || count(&meeting_store, "SELECT COUNT(*) FROM outbox");
    eventually(Duration::from_secs(5), || async {
        (outbox().await == 0).then_some(())
    })
    .await;
    assert_eq!(outbox().await, 0, "outbox drained");

    meeting.stop().await.unwrap();
    permission.stop().await.unwrap();
}

#[tokio::test]
async fn broker_killed_and_restarted_while_the_api_takes_requests_loses_and_doubles_nothing() {
    broker_crash(Duration::from_millis(800), Duration::from_secs(3), 2).await;
}

#[tokio::test]
async fn broker_killed_in_the_middle_of_a_request_stream_loses_and_doubles_nothing() {
    broker_crash(Duration::from_millis(300), Duration::from_millis(200), 8).await;
}

#[tokio::test]
async fn a_consumer_killed_mid_batch_applies_each_event_once_after_restart() {
    let (_broker, ctx, bus, spy) = private_broker_with_spy("permission.granted").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // A first run declares the queue; the batch then waits in it while the service is down.
    let mut child = spawn_process(&ctx, &PERMISSION, port);
    assert!(wait_ready_at(&base, Duration::from_secs(30)).await);
    signal(&child, "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));

    const N: usize = 600;
    let events: Vec<Envelope> = (0..N)
        .map(|i| {
            Envelope::new(
                &Event::MeetingCreated(MeetingCreated {
                    meeting_id: format!("m{i}"),
                    title: "batch".into(),
                    created_by: format!("u{i}"),
                }),
                "meeting-service",
            )
        })
        .collect();
    for e in &events {
        bus.publish(e).await;
    }
    // Start it on the full queue and kill it part-way through.
    let child = spawn_process(&ctx, &PERMISSION, port);
    let perm = ctx.store(&PERMISSION).await;
    let at_kill = eventually(WAIT, || async {
        let n = count(&perm, "SELECT COUNT(*) FROM inbox").await;
        (n >= 100).then_some(n)
    })
    .await
    .expect("consumer made progress");
    let mut child = child;
    signal(&child, "KILL");
    child.wait().unwrap();
    let at_kill_after = count(&perm, "SELECT COUNT(*) FROM inbox").await;
    let mut child = spawn_process(&ctx, &PERMISSION, port);
    let restarted = Instant::now();
    let done = eventually(WAIT, || async {
        (count(&perm, "SELECT COUNT(*) FROM inbox").await == N as i64).then_some(())
    })
    .await;
    let took = restarted.elapsed();
    signal(&child, "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        done.is_some(),
        "all {N} applied, saw {}",
        count(&perm, "SELECT COUNT(*) FROM inbox").await
    );

    let meetings = count(&perm, "SELECT COUNT(*) FROM meetings").await;
    let grants = count(&perm, "SELECT COUNT(*) FROM permissions").await;
    let outbox = count(&perm, "SELECT COUNT(*) FROM outbox").await;
    let wire = copies(&bus, &spy).await;
    let distinct_meetings: HashSet<String> = wire.keys().cloned().collect();
    let wire_dupes: usize = wire.values().map(|n| n - 1).sum();
    eprintln!(
        "consumer crash: {N} events, {at_kill}..{at_kill_after} applied when killed, all applied {:.1}s after restart; \
         meetings {meetings}, grants {grants}, permission.granted ids on the wire {} (republished copies {wire_dupes}), outbox left {outbox}",
        took.as_secs_f64(),
        distinct_meetings.len()
    );
    assert_eq!(meetings, N as i64);
    assert_eq!(grants, N as i64, "each applied once");
    assert_eq!(wire.len(), N, "one permission.granted per meeting");
    assert_eq!(outbox, 0);
    assert_eq!(
        bus.queue_len(&meeting_events::messaging::topology::dead_letter_queue(
            &ctx.queue(&PERMISSION)
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn quorum_queues_retry_and_park_like_classic_ones() {
    let mut ctx = Ctx::new();
    ctx.extra.insert("MQ_QUEUE_TYPE".into(), "quorum".into());
    let election = Running::spawn(&ctx, &ELECTION).await;
    let bus = Bus::connect(&ctx).await;
    bus.publish_raw("agenda.election.create", b"not json").await;
    let start = Envelope::new(
        &Event::ElectionStart(meeting_events::events::ElectionStart {
            meeting_id: "q".into(),
            agenda_item_id: "never".into(),
        }),
        "meeting-service",
    );
    bus.publish(&start).await;
    let dlq = meeting_events::messaging::topology::dead_letter_queue(&ctx.queue(&ELECTION));
    eventually(Duration::from_secs(15), || async {
        (bus.queue_len(&dlq).await == 2).then_some(())
    })
    .await
    .expect("poison parked at once and the failing start parked after its retries");
    let parked = bus.drain(&dlq).await;
    let attempts: Vec<Option<u64>> = parked
        .iter()
        .map(|m| meeting_events::messaging::headers::count(&m.delivery.properties, "x-attempts"))
        .collect();
    assert_eq!(attempts, [Some(1), Some(3)]);
    election.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_that_keeps_crashing_its_consumer_is_parked_by_the_quorum_queue() {
    let mut ctx = Ctx::new();
    ctx.extra.insert("MQ_QUEUE_TYPE".into(), "quorum".into());
    ctx.extra.insert("MQ_DELIVERY_LIMIT".into(), "2".into());
    // The role declares its queues, then is gone: a crashing consumer takes its place.
    Running::spawn(&ctx, &ELECTION).await.stop().await.unwrap();
    let bus = Bus::connect(&ctx).await;
    let start = Envelope::new(
        &Event::ElectionStart(meeting_events::events::ElectionStart {
            meeting_id: "crash".into(),
            agenda_item_id: "i".into(),
        }),
        "meeting-service",
    );
    bus.publish(&start).await;
    let queue = ctx.queue(&ELECTION);
    let dlq = meeting_events::messaging::topology::dead_letter_queue(&queue);
    // Each "crash" hands the delivery back unacknowledged, as a dying consumer's channel does.
    let mut deliveries = 0;
    while bus.queue_len(&dlq).await == 0 && deliveries < 10 {
        if let Some(m) = bus
            .channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            deliveries += 1;
            m.delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parked = bus.drain(&dlq).await;
    assert_eq!(
        parked.len(),
        1,
        "parked by the broker after {deliveries} deliveries"
    );
    assert_eq!(
        Envelope::from_bytes(&parked[0].delivery.data).unwrap(),
        start
    );
    assert!(
        deliveries <= 3,
        "the delivery limit stopped the loop: {deliveries}"
    );
    assert_eq!(bus.queue_len(&queue).await, 0);
}

#[tokio::test]
async fn connections_closed_by_the_broker_are_reopened_and_events_flow_again() {
    let broker = PrivateBroker::start();
    let ctx = Ctx::on(broker.url.clone());
    let stack = Stack::start(&ctx).await;
    let alice = Client::as_user("alice");
    meeting_with_manager(&stack.urls(), &alice, "before").await;
    for _ in 0..2 {
        broker.close_connections().await;
        let started = Instant::now();
        for r in [
            &stack.meeting,
            &stack.election,
            &stack.voting,
            &stack.permission,
        ] {
            assert!(
                r.wait_ready_within(Duration::from_secs(30)).await,
                "{} re-attached",
                r.role
            );
        }
        eprintln!(
            "connection reset: all four ready again after {:.2}s",
            started.elapsed().as_secs_f64()
        );
        meeting_with_manager(&stack.urls(), &alice, "after a reset").await;
    }
    stack.stop().await;
}

/// A meeting.created event for meeting `id`, as the meeting service publishes it.
pub(crate) fn meeting_created(id: &str) -> Envelope {
    Envelope::new(
        &Event::MeetingCreated(MeetingCreated {
            meeting_id: id.into(),
            title: "cut off".into(),
            created_by: "alice".into(),
        }),
        "meeting-service",
    )
}
