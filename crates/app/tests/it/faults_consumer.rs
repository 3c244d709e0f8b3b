//! The fault suite, consumers: a consumer cut off on a live connection, one that receives
//! nothing while messages wait, and a broker alarm that blocks publishing. Each test runs its
//! own private broker node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::faults::{count, meeting_created, private_broker_with_spy, WAIT};
use crate::helpers::*;

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
