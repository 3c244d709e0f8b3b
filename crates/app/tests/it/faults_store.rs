//! The fault suite's store outages: PostgreSQL killed under one role and under two replicas
//! of each, and a full disk under SQLite — what was accepted against what was applied.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::AnyPool;

use crate::faults::{copies, count, granted, meeting_created, Load, WAIT};
use crate::helpers::*;

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
