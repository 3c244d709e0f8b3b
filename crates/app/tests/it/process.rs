//! The `app` binary as users run it: separate processes, restarts, signals, bad config.

use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};

use crate::flow::*;
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn five_processes_carry_a_meeting_through_grants_to_its_result() {
    let ctx = Ctx::new();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let roles = [&MEETING, &ELECTION, &VOTING, &PERMISSION, &LIVE];
    let mut procs = Procs(Vec::new());
    for (role, port) in roles.iter().zip(&ports) {
        procs.0.push(spawn_process(&ctx, role, *port));
    }
    let base = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let urls = Urls {
        meeting: base(0),
        election: base(1),
        voting: base(2),
        permission: base(3),
        live: base(4),
    };
    for (i, role) in roles.iter().enumerate() {
        assert!(
            wait_ready_at(&base(i), Duration::from_secs(30)).await,
            "{role} not ready"
        );
    }
    let bus = Bus::connect(&ctx).await;
    let mut spy = bus.spy("#").await;
    chain_with_grants(&urls, &ctx.store(&VOTING).await).await;
    spy.collect_for(Duration::from_millis(300)).await;
    assert!(!spy.of_type("permission.revoked").is_empty());
    crate::contract::assert_conforms(&spy.seen);
    for child in &procs.0 {
        signal(child, "TERM");
    }
    for child in &mut procs.0 {
        assert_eq!(child.wait().unwrap().code(), Some(0), "SIGTERM exits 0");
    }
}

#[tokio::test]
async fn a_role_killed_and_restarted_keeps_its_state_and_sigterm_exits_zero() {
    let ctx = Ctx::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_process(&ctx, &MEETING, port);
    assert!(wait_ready_at(&base, Duration::from_secs(30)).await);
    let alice = Client::as_user("alice");
    let (s, m) = alice
        .post(&format!("{base}/meetings"), json!({"title": "Durable"}))
        .await;
    assert_eq!(s, 201);
    let id = m["id"].as_str().unwrap().to_string();

    signal(&child, "KILL");
    child.wait().unwrap();
    let mut child = spawn_process(&ctx, &MEETING, port);
    assert!(wait_ready_at(&base, Duration::from_secs(30)).await);
    let (s, again) = alice.get(&format!("{base}/meetings/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(again["title"], "Durable");

    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

fn run_app(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(app_bin())
        .args(args)
        .env_clear()
        .env("CONFIG_DIR", "/nonexistent")
        .envs(env.iter().copied())
        .output()
        .expect("app runs")
}

#[test]
fn a_bad_variable_is_one_line_naming_it_and_exit_status_2() {
    let secret = ("AUTH_JWT_SECRET", SECRET);
    for (var, value) in [
        ("HTTP_PORT", "eighty"),
        ("MQ_PREFETCH", "-1"),
        ("MQ_QUEUE_TYPE", "stream"),
        ("AMQP_URL", "amqp://bob:hunter2@host:port/x"),
    ] {
        let out = run_app(&["election"], &[secret, (var, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
        assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    }
    let out = run_app(&["meeting"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_JWT_SECRET"));
}

#[test]
fn no_development_key_unless_asked_for() {
    // Without a secret and without --dev, nothing runs and no token is signed.
    for args in [&["all"][..], &["meeting"], &["token", "--user", "alice"]] {
        let out = run_app(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("AUTH_JWT_SECRET"), "{stderr}");
    }
    for (value, why) in [
        ("   ", "blank"),
        ("only-31-bytes-long-0123456789ab", "too short"),
    ] {
        let out = run_app(&["meeting"], &[("AUTH_JWT_SECRET", value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
    // Asked for, the development key signs.
    let out = run_app(&["token", "--dev", "--user", "alice"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_explains_commands_and_variables_and_token_signs_with_the_key() {
    let out = run_app(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "meeting",
        "election",
        "voting",
        "permission",
        "all",
        "token",
        "AMQP_URL",
        "MQ_BINDINGS",
        "AUTH_JWT_SECRET",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    let out = run_app(&["election", "--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("MQ_RETRY_DELAYS"));

    let out = run_app(
        &["token", "--user", "alice"],
        &[("AUTH_JWT_SECRET", SECRET)],
    );
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("the token verifies with AUTH_JWT_SECRET")
    .claims;
    assert_eq!(claims["sub"], "alice");
}
/// A meeting through the whole chain, with a manager granted through the permission API
/// closing the ballot and a revoked one refused.
pub(crate) async fn chain_with_grants(urls: &Urls, voting_db: &sqlx::AnyPool) {
    let (alice, carol, dave) = (
        Client::as_user("alice"),
        Client::as_user("carol"),
        Client::as_user("dave"),
    );
    let meeting = meeting_with_manager(urls, &alice, "Grants").await;
    let perms = format!("{}/meetings/{meeting}/permissions", urls.permission);

    for user in ["carol", "dave"] {
        let (s, b) = alice
            .post(&perms, json!({"user_id": user, "role": "manager"}))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, _) = alice
        .post(&perms, json!({"user_id": "carol", "role": "manager"}))
        .await;
    assert_eq!(s, 409, "granting twice is a conflict");
    let (s, _) = carol
        .post(&perms, json!({"user_id": "erin", "role": "owner"}))
        .await;
    assert!(
        s == 403 || s == 422,
        "unknown role or not yet a manager here: {s}"
    );

    // The grant reaches the meeting service: carol may now add items.
    let items = format!("{}/meetings/{meeting}/agenda-items", urls.meeting);
    eventually(WAIT, || async {
        let (s, _) = carol
            .post(&items, json!({"title": "Budget", "kind": "discussion"}))
            .await;
        (s == 201).then_some(())
    })
    .await
    .expect("carol became a manager in the meeting service");

    let (item, election) = open_election(urls, &carol, &meeting).await;
    nominate(urls, &carol, &election, &["ada"]).await;
    start(urls, &carol, &meeting, &item).await;
    let ballot = ballot_of(urls, &alice, &election).await;
    let ballot_id = ballot["id"].as_str().unwrap();
    assert_eq!(vote(urls, &dave, ballot_id, "ada").await.0, 201);

    // Revoke dave: once the revocation reached the voting service, he cannot close.
    let (s, _) = alice.delete(&format!("{perms}/dave/manager")).await;
    assert_eq!(s, 204);
    eventually(WAIT, || async {
        (!local_managers(voting_db, &meeting)
            .await
            .contains(&"dave".to_string()))
        .then_some(())
    })
    .await
    .expect("permission.revoked reached the voting service");
    let close = format!("{}/ballots/{ballot_id}/close", urls.voting);
    let (s, body) = dave.post(&close, json!({})).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"], "forbidden");

    // carol, granted through the permission API, closes it.
    let (s, closed) = carol.post(&close, json!({})).await;
    assert_eq!(s, 200, "{closed}");
    let result = item_result(urls, &alice, &meeting, &item).await;
    assert_eq!(result["winners"], json!(["ada"]));

    let (_, list) = alice.get(&perms).await;
    let mut users: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "carol"]);
}

/// The managers of a meeting in a role's local copy of `permission.*`, read from its store.
async fn local_managers(db: &sqlx::AnyPool, meeting: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT user_id FROM grants WHERE meeting_id = $1 AND role = 'manager' AND active = 1",
    )
    .bind(meeting)
    .fetch_all(db)
    .await
    .unwrap_or_default()
}
