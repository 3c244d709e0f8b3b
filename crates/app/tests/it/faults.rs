//! The fault suite: broker crashes, consumer crashes, and what was accepted against what was
//! applied. Each destructive test runs its own private broker node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meeting_events::envelope::Envelope;
use meeting_events::events::{Event, MeetingCreated};
use serde_json::{json, Value};
use sqlx::AnyPool;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);

/// How many copies of each event id are in a queue.
async fn copies(bus: &Bus, queue: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in bus.drain(queue).await {
        if let Ok(env) = Envelope::from_bytes(&m.delivery.data) {
            *out.entry(env.event_id).or_insert(0) += 1;
        }
    }
    out
}

async fn count(pool: &AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Clients posting meetings until stopped, recording the ids of the 201s and the status of
/// anything else.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<Vec<u16>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `per_base` clients on each of `bases`.
    fn start(bases: &[&str], per_base: usize) -> Self {
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
    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Stop the clients: the accepted ids and the other statuses.
    async fn finish(self) -> (Vec<String>, Vec<u16>) {
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
struct Granted {
    /// Its store.
    perm: AnyPool,
    /// Meetings accepted.
    want: i64,
    /// Meetings it holds (waited for until there are as many as were accepted).
    applied: i64,
    /// Accepted meetings it does not hold.
    lost: usize,
    /// Grants it made.
    grants: i64,
}

async fn granted(ctx: &Ctx, accepted: &[String]) -> Granted {
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
async fn private_broker_with_spy(binding: &str) -> (PrivateBroker, Ctx, Bus, String) {
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
    assert_eq!(
        count(&ctx.store(&MEETING).await, "SELECT COUNT(*) FROM outbox").await,
        0,
        "outbox drained"
    );

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
fn meeting_created(id: &str) -> Envelope {
    Envelope::new(
        &Event::MeetingCreated(MeetingCreated {
            meeting_id: id.into(),
            title: "cut off".into(),
            created_by: "alice".into(),
        }),
        "meeting-service",
    )
}

/// The consumer is cut off while its connection stays up: its queue is deleted with
/// rabbitmqctl and declared again, bare, as an operator might. `/ready` must say so (503,
/// naming the consumer), and the role must replace its consumer by itself — with the
/// bindings the bare queue lacks — so that events flow again.
#[tokio::test]
async fn a_consumer_cut_off_on_a_live_connection_is_not_ready_and_replaces_itself() {
    let broker = PrivateBroker::start();
    let ctx = Ctx::on(broker.url.clone());
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let perm = ctx.store(&PERMISSION).await;
    let applied = |id: &'static str| {
        let perm = perm.clone();
        async move {
            eventually(Duration::from_secs(20), || async {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM meetings WHERE id = $1")
                    .bind(id)
                    .fetch_one(&perm)
                    .await
                    .ok()?;
                (n == 1).then_some(())
            })
            .await
            .is_some()
        }
    };
    bus.publish(&meeting_created("before")).await;
    assert!(applied("before").await, "applied before the cut");

    // Watch /ready throughout, every 10 ms.
    let ready = format!("{}/ready", permission.base);
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = tokio::spawn({
        let (ready, watching) = (ready.clone(), watching.clone());
        async move {
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = reqwest::get(&ready).await {
                    seen.push((r.status().as_u16(), r.text().await.unwrap_or_default()));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }
    });

    let queue = ctx.queue(&PERMISSION);
    let cut = Instant::now();
    broker.ctl_async(&["delete_queue", &queue]).await;
    let mq = ctx.settings(&PERMISSION).mq;
    bus.channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            meeting_events::messaging::topology::main_queue_args(&mq),
        )
        .await
        .expect("the queue declared again, without bindings");
    // Ready again, after having said why not.
    let back = eventually(Duration::from_secs(30), || async {
        let r = reqwest::get(&ready).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    assert!(back.is_some(), "/ready 200 again within 30 s");
    let refused: Vec<&(u16, String)> = seen.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !refused.is_empty(),
        "/ready answered 503 while the consumer was cut off: {seen:?}"
    );
    assert!(
        refused.iter().all(|(_, body)| body.contains("consumer: ")),
        "the reason names the consumer: {refused:?}"
    );
    eprintln!(
        "consumer cut off: /ready 503 in {} of {} polls ({}), ready again {:.2}s after the cut",
        refused.len(),
        seen.len(),
        refused[0].1,
        cut.elapsed().as_secs_f64()
    );

    // The replaced consumer receives again, through bindings it declared itself.
    bus.publish(&meeting_created("after")).await;
    assert!(
        applied("after").await,
        "applied after the consumer was replaced"
    );
    let metrics = metrics_text(&permission.base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("consumer_restarts_total{")
                && l.contains(&format!("service=\"{queue}\""))
                && !l.contains("reason=\"connection\"")),
        "a consumer-level restart is counted: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("consumer_restarts_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    permission.stop().await.unwrap();
}

/// The watchdog: messages wait ready on the queue while the consumer, stuck in hand on a
/// store that does not answer, receives and settles nothing for longer than
/// `MQ_CONSUMER_WATCHDOG`. The role counts the stall and recreates its consumer — and once
/// the store answers again every event is applied exactly once.
#[tokio::test]
async fn a_consumer_that_receives_nothing_while_messages_wait_is_recreated() {
    let mut ctx = Ctx::new();
    ctx.extra.insert("MQ_CONSUMER_CHECK".into(), "200ms".into());
    ctx.extra.insert("MQ_CONSUMER_WATCHDOG".into(), "1s".into());
    ctx.extra.insert("MQ_PREFETCH".into(), "8".into());
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let perm = ctx.store(&PERMISSION).await;
    let postgres = ctx.postgres.is_some();

    // Hold the store: SQLite's write lock, or the table the handler writes on PostgreSQL.
    let mut hold = perm.acquire().await.unwrap();
    if postgres {
        sqlx::query("BEGIN").execute(&mut *hold).await.unwrap();
        sqlx::query("LOCK TABLE meetings IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *hold)
            .await
            .unwrap();
    } else {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *hold)
            .await
            .unwrap();
    }
    const N: usize = 40;
    for i in 0..N {
        bus.publish(&meeting_created(&format!("w{i}"))).await;
    }
    // Held for up to 4 s, against a watchdog of 1 s (SQLite's busy timeout is 5 s). Watched
    // on /metrics: /ready asks the held store too, and waits on it.
    let metrics_url = format!("{}/metrics", permission.base);
    let stall_line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("consumer_restarts_total{") && l.contains("reason=\"stalled\""))
            .map(str::to_string)
    };
    let stalled = eventually(Duration::from_secs(4), || async {
        let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        stall_line(&text)
    })
    .await;
    sqlx::query("ROLLBACK").execute(&mut *hold).await.unwrap();
    drop(hold);
    let stalled = stalled.expect("the stall was seen and counted while the store was held");
    eprintln!("watchdog: {stalled}");

    let applied = eventually(WAIT, || async {
        let n = count(&perm, "SELECT COUNT(*) FROM meetings").await;
        (n == N as i64).then_some(())
    })
    .await;
    assert!(
        applied.is_some(),
        "every event applied once the store answered"
    );
    assert_eq!(count(&perm, "SELECT COUNT(*) FROM inbox").await, N as i64);
    assert!(permission.wait_ready_within(Duration::from_secs(10)).await);
    permission.stop().await.unwrap();
}

/// `scripts/postgres.sh ARGS…` to its end, off the runtime the roles share; its output.
async fn postgres_script(args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
    let out = tokio::process::Command::new(&script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .expect("postgres.sh");
    assert!(out.status.success(), "postgres.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A PostgreSQL instance of the test's own (it is killed and restarted), and a context whose
/// roles keep their stores on it with a pool of two and this acquire timeout.
async fn own_postgres(acquire_timeout: &str) -> (tempfile::TempDir, Ctx) {
    let pg_dir = tempfile::Builder::new()
        .prefix("pg")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = pg_dir.path().display().to_string();
    let url = postgres_script(&["start", &dir]).await;
    let base = url[..url.rfind('/').expect("a database")].to_string();
    let mut ctx = Ctx::with_stores(amqp_url(), Some(base));
    ctx.extra.insert(
        "DATABASE_ACQUIRE_TIMEOUT".into(),
        acquire_timeout.to_string(),
    );
    ctx.extra.insert("DATABASE_POOL_SIZE".into(), "2".into());
    (pg_dir, ctx)
}

/// PostgreSQL killed under a running meeting role: a request gets 503 `store_unavailable`
/// with `Retry-After` within `DATABASE_ACQUIRE_TIMEOUT` (not a 500, not the pool's old 10 s
/// wait), `/ready` names the store, and once PostgreSQL is back requests succeed again.
#[tokio::test]
async fn a_dead_database_answers_503_quickly_and_the_role_recovers() {
    let (pg_dir, ctx) = own_postgres("2s").await;
    let dir = pg_dir.path().display().to_string();
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let alice = Client::as_user("alice");
    let meetings = format!("{}/meetings", meeting.base);
    let (status, _) = alice.post(&meetings, json!({"title": "before"})).await;
    assert_eq!(status, 201);

    postgres_script(&["kill", &dir]).await;
    // A SIGKILLed postmaster's backends may serve a request or two more before they see it
    // gone: wait for the first refusal.
    let refused = eventually(Duration::from_secs(15), || async {
        let (s, _) = alice.post(&meetings, json!({"title": "dying"})).await;
        (s != 201).then_some(s)
    })
    .await;
    assert_eq!(refused, Some(503), "the first refusal is a 503");
    for _ in 0..3 {
        let started = Instant::now();
        let r = reqwest::Client::new()
            .post(&meetings)
            .bearer_auth(token("alice"))
            .json(&json!({"title": "during"}))
            .send()
            .await
            .expect("answered");
        let took = started.elapsed();
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").cloned();
        let body: serde_json::Value = r.json().await.expect("a JSON body");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "store_unavailable", "{body}");
        assert!(retry_after.is_some(), "Retry-After is set");
        assert!(
            took < Duration::from_secs(6),
            "answered within the acquire timeout: {took:?}"
        );
        eprintln!(
            "dead database: 503 {} in {:.2}s",
            body["error"],
            took.as_secs_f64()
        );
    }
    let ready = reqwest::get(format!("{}/ready", meeting.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("store: "));

    postgres_script(&["start", &dir]).await;
    let back = eventually(Duration::from_secs(30), || async {
        let (s, _) = alice.post(&meetings, json!({"title": "after"})).await;
        (s == 201).then_some(())
    })
    .await;
    assert!(back.is_some(), "requests succeed once PostgreSQL is back");
    assert!(meeting.wait_ready_within(Duration::from_secs(30)).await);
    meeting.stop().await.unwrap();
    postgres_script(&["stop", &dir]).await;
}

/// A role's `/ready` body.
async fn ready_json(base: &str) -> Option<Value> {
    reqwest::get(format!("{base}/ready"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// A broker resource alarm (here a memory alarm set by hand) blocks every publishing
/// connection: the role stays ready and keeps accepting requests into its outbox, and says
/// so — a warning on `/ready`, `broker_blocked` 1, the backlog growing — and everything flows
/// once the alarm clears.
#[tokio::test]
async fn a_broker_alarm_is_shown_while_requests_wait_in_the_outbox_and_then_flow() {
    let (broker, ctx, bus, spy) = private_broker_with_spy("meeting.created").await;
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let alice = Client::as_user("alice");
    let post = |n: usize| {
        let url = format!("{}/meetings", meeting.base);
        let alice = &alice;
        async move {
            let (s, body) = alice
                .post(&url, json!({"title": format!("alarm {n}")}))
                .await;
            assert_eq!(s, 201, "{body}");
        }
    };
    post(0).await;
    let flowed = eventually(Duration::from_secs(10), || async {
        (bus.queue_len(&spy).await == 1).then_some(())
    })
    .await;
    assert!(flowed.is_some(), "the first event flows before the alarm");

    broker.ctl(&[
        "eval",
        "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []}).",
    ]);
    let raised = Instant::now();
    for n in 1..=5 {
        post(n).await;
    }
    let service = ctx.queue(&MEETING);
    let shown = eventually(Duration::from_secs(15), || async {
        let ready = ready_json(&meeting.base).await?;
        let metrics = metrics_text(&meeting.base).await;
        let blocked = metrics.contains(&format!("broker_blocked{{service=\"{service}\"}} 1"));
        let warned = ready["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("blocked"));
        (ready["status"] == "ready" && warned && blocked).then_some(ready)
    })
    .await;
    assert!(
        shown.is_some(),
        "/ready: {}",
        reqwest::get(format!("{}/ready", meeting.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    );
    let backlog = eventually(Duration::from_secs(15), || async {
        let metrics = metrics_text(&meeting.base).await;
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("outbox_backlog{{service=\"{service}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 5.0)
    })
    .await;
    assert!(
        backlog.is_some(),
        "the backlog gauge shows the 5 waiting events"
    );
    assert_eq!(bus.queue_len(&spy).await, 1, "nothing passes while blocked");
    let shown_after = raised.elapsed();

    broker.ctl(&[
        "eval",
        "rabbit_alarm:clear_alarm({resource_limit, memory, node()}).",
    ]);
    let cleared = Instant::now();
    let drained = eventually(Duration::from_secs(30), || async {
        (bus.queue_len(&spy).await == 6).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "all six events on the bus once the alarm clears"
    );
    let drained_after = cleared.elapsed();
    let unblocked = eventually(Duration::from_secs(10), || async {
        let ready = ready_json(&meeting.base).await?;
        ready.get("warnings").is_none().then_some(())
    })
    .await;
    assert!(unblocked.is_some(), "the warning goes with the alarm");
    let metrics = metrics_text(&meeting.base).await;
    assert!(metrics.contains(&format!("broker_blocked{{service=\"{service}\"}} 0")));
    println!(
        "alarm: shown {:.1} s after it was raised; 5 events drained {:.1} s after it cleared",
        shown_after.as_secs_f64(),
        drained_after.as_secs_f64()
    );
    meeting.stop().await.unwrap();
}

/// PostgreSQL killed under a permission role while events arrive: the consumer holds its
/// deliveries while the store cannot be reached — no retry spent, nothing parked, though the
/// outage outlasts every retry delay — and applies each event once when it is back.
#[tokio::test]
async fn a_dead_database_pauses_the_consumer_without_spending_retries_or_parking() {
    let (pg_dir, ctx) = own_postgres("1s").await;
    let dir = pg_dir.path().display().to_string();
    let permission = Running::spawn(&ctx, &PERMISSION).await;
    let bus = Bus::connect(&ctx).await;
    let service = ctx.queue(&PERMISSION);
    let dlq = meeting_events::messaging::topology::dead_letter_queue(&service);
    let meetings = |pool: AnyPool| async move {
        eventually(Duration::from_secs(1), || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM meetings")
                .fetch_one(&pool)
                .await
                .ok()
        })
        .await
    };
    bus.publish(&meeting_created("before")).await;
    let store = ctx.store(&PERMISSION).await;
    let first = eventually(WAIT, || async {
        (meetings(store.clone()).await == Some(1)).then_some(())
    })
    .await;
    assert!(first.is_some(), "applied before the outage");

    postgres_script(&["kill", &dir]).await;
    const N: usize = 10;
    for i in 0..N {
        bus.publish(&meeting_created(&format!("during-{i}"))).await;
    }
    // The retry delays are 200 ms and 400 ms: without the pause every event would be parked
    // well within this outage.
    let metrics_url = format!("{}/metrics", permission.base);
    let paused = eventually(Duration::from_secs(10), || async {
        let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        text.contains(&format!("consumer_paused{{service=\"{service}\"}} 1"))
            .then_some(())
    })
    .await;
    assert!(paused.is_some(), "the consumer says it is paused");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        bus.queue_len(&dlq).await,
        0,
        "nothing parked during the outage"
    );

    let restarted = Instant::now();
    postgres_script(&["start", &dir]).await;
    let store = ctx.store(&PERMISSION).await;
    let all = eventually(Duration::from_secs(30), || async {
        (meetings(store.clone()).await == Some(N as i64 + 1)).then_some(())
    })
    .await;
    assert!(all.is_some(), "every event applied once the store is back");
    let caught_up = restarted.elapsed();
    let inbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
        .fetch_one(&store)
        .await
        .unwrap();
    assert_eq!(inbox, N as i64 + 1, "each applied once");
    assert_eq!(bus.queue_len(&dlq).await, 0, "nothing parked");
    let text = metrics_text(&permission.base).await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("events_retried_total") && l.contains(&service)),
        "no retry was spent: {text}"
    );
    assert!(text.contains(&format!("consumer_paused{{service=\"{service}\"}} 0")));
    assert!(permission.wait_ready_within(Duration::from_secs(30)).await);
    eprintln!(
        "dead database under the consumer: {N} events held, all applied {:.1}s after PostgreSQL restarted, 0 retried, 0 parked",
        caught_up.as_secs_f64()
    );
    permission.stop().await.unwrap();
    postgres_script(&["stop", &dir]).await;
}

/// PostgreSQL SIGKILLed while four clients post meetings to two meeting replicas, with two
/// permission replicas consuming, and restarted 3 s later: every request is answered 201 or
/// 503 (never 500), every accepted meeting is granted exactly once, and every replica is
/// ready again.
#[tokio::test]
async fn postgres_killed_under_two_replicas_per_role_loses_and_doubles_nothing() {
    let (pg_dir, ctx) = own_postgres("2s").await;
    let dir = pg_dir.path().display().to_string();
    let bus = Bus::connect(&ctx).await;
    let spy = format!("{}-spy", ctx.prefix);
    bus.durable_queue(&spy, "meeting.created").await;
    let (m1, m2, p1, p2) = tokio::join!(
        Running::spawn(&ctx, &MEETING),
        Running::spawn(&ctx, &MEETING),
        Running::spawn(&ctx, &PERMISSION),
        Running::spawn(&ctx, &PERMISSION)
    );
    let load = Load::start(&[&m1.base, &m2.base], 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    postgres_script(&["kill", &dir]).await;
    let before = load.accepted();
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres_script(&["start", &dir]).await;
    let restarted = Instant::now();
    for replica in [&m1, &m2, &p1, &p2] {
        assert!(
            replica.wait_ready_within(Duration::from_secs(30)).await,
            "{} ready again",
            replica.role
        );
    }
    let all_ready = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (accepted, refused) = load.finish().await;
    assert!(
        refused.iter().all(|s| *s == 503),
        "only 503 while the store was away, never 500: {refused:?}"
    );
    assert!(
        accepted.len() > before,
        "requests were accepted after the restart"
    );

    let g = granted(&ctx, &accepted).await;
    let wire = copies(&bus, &spy).await;
    let wire_dupes: usize = wire.values().map(|n| n - 1).sum();
    eprintln!(
        "postgres crash, 2 replicas per role: accepted {} ({before} before the kill), refused {} (all 503), \
         applied {}, lost {}, grants {}, on the wire {} (duplicates {wire_dupes}), \
         every replica ready {:.1}s after PostgreSQL restarted",
        accepted.len(),
        refused.len(),
        g.applied,
        g.lost,
        g.grants,
        wire.len(),
        all_ready.as_secs_f64()
    );
    assert_eq!(g.lost, 0, "nothing accepted was lost");
    assert_eq!(g.applied, g.want, "applied exactly the accepted meetings");
    assert_eq!(g.grants, g.want, "one grant per meeting: nothing doubled");
    let meeting_store = ctx.store(&MEETING).await;
    let drained = eventually(WAIT, || async {
        (count(&meeting_store, "SELECT COUNT(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the outbox drained");
    for replica in [m1, m2, p1, p2] {
        replica.stop().await.unwrap();
    }
    postgres_script(&["stop", &dir]).await;
}

/// A SQLite store on a full disk (a 1 MiB tmpfs): requests that would write are answered 503
/// `store_unavailable` with `Retry-After`, never 500; once there is room again they succeed,
/// every meeting accepted before is still there, and the file passes SQLite's integrity check.
#[tokio::test]
async fn a_full_disk_under_sqlite_answers_503_and_corrupts_nothing() {
    let mut ctx = Ctx::new();
    let disk = ctx.dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "mounting a small tmpfs needs root (the CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let db = disk.join("meeting.db");
    ctx.per_role
        .entry(MEETING.name)
        .or_default()
        .insert("DATABASE_URL".into(), format!("sqlite://{}", db.display()));
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let alice = Client::as_user("alice");
    let url = format!("{}/meetings", meeting.base);
    let title = "x".repeat(200);
    let mut accepted = Vec::new();
    let refusal = loop {
        let r = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token("alice"))
            .json(&json!({ "title": title }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        let body: Value = r.json().await.unwrap();
        if status == 201 {
            accepted.push(body["id"].as_str().unwrap().to_string());
            assert!(accepted.len() < 20_000, "the disk never filled");
            continue;
        }
        break (status, retry_after, body);
    };
    assert_eq!(refusal.0, 503, "a full disk is 503, not 500: {}", refusal.2);
    assert_eq!(refusal.2["error"], "store_unavailable", "{}", refusal.2);
    assert!(refusal.1, "Retry-After is set");
    eprintln!(
        "full disk: {} meetings accepted, then 503 {}",
        accepted.len(),
        refusal.2["error"]
    );

    // Room again: the same role takes writes, and nothing accepted is gone.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(grown.success());
    let back = eventually(Duration::from_secs(15), || async {
        let (s, _) = alice.post(&url, json!({"title": "after"})).await;
        (s == 201).then_some(())
    })
    .await;
    assert!(back.is_some(), "writes succeed once there is room");
    for id in accepted.iter().step_by(accepted.len().div_ceil(50).max(1)) {
        let (s, m) = alice.get(&format!("{url}/{id}")).await;
        assert_eq!(s, 200, "{id}: {m}");
    }
    sqlx::any::install_default_drivers();
    let store = AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&store)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let held = count(&store, "SELECT COUNT(*) FROM meetings").await;
    assert_eq!(
        held,
        accepted.len() as i64 + 1,
        "every accepted meeting, and the one after"
    );
    meeting.stop().await.unwrap();
}
