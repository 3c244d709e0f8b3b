//! The broker permissions `app topology permissions` prints, applied as printed to a node of
//! the test's own (`scripts/broker.sh apply`): the whole chain runs in strict mode on them,
//! each role is confined to its own routing keys and queues, and a Python service on the
//! unmodified `mq.py` publishes the events it owns through its ingress exchange
//! (docs/architecture.md §10).

use std::process::{Command, Output};
use std::time::Duration;

use meeting_events::messaging::topology::dead_letter_queue;
use serde_json::json;

use crate::flow::{ballot_of, item_result, nominate, open_election, start, vote};
use crate::helpers::*;
use crate::interop::python;

fn app_topology(ctx: &Ctx, env: &[(&str, String)], what: &str) -> Output {
    let out = Command::new(app_bin())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CONFIG_DIR", ctx.dir.path().join("config"))
        .env("AUTH_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .args(["topology", what])
        .output()
        .expect("app runs");
    assert!(
        out.status.success(),
        "app topology {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Each broker user a permissions script adds, with the password variable it names
/// (`rabbitmqctl add_user 'USER' "$VAR"`) and a password for it.
fn users(script: &str) -> Vec<(String, String, String)> {
    script
        .lines()
        .filter_map(|line| line.strip_prefix("rabbitmqctl add_user '"))
        .filter_map(|rest| {
            let (user, rest) = rest.split_once("' \"$")?;
            let var = rest.strip_suffix('"')?;
            Some((user.to_string(), var.to_string(), format!("pw-{user}")))
        })
        .collect()
}

/// `mq.py`'s `publish_event` as the Python service: broker user and exchange from `url` and
/// `exchange`.
async fn mq_py(url: &str, exchange: &str, key: &str, data: serde_json::Value) -> Output {
    let (url, exchange, key) = (url.to_string(), exchange.to_string(), key.to_string());
    tokio::task::spawn_blocking(move || {
        python(
            &url,
            &exchange,
            "py-meeting",
            &["publish", &key, &data.to_string()],
        )
    })
    .await
    .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_printed_permissions_carry_the_chain_and_confine_every_producer() {
    let broker = PrivateBroker::start();
    let mut ctx = Ctx::on(broker.url.clone());
    // Long enough for mq.py's second publish to overtake the first's retries.
    ctx.extra
        .insert("MQ_RETRY_DELAYS".into(), "1s,2s,4s,8s".into());
    // Each role's broker user is named after its queue; a Python meeting service on mq.py
    // publishes as a producer of the meeting role, through its ingress exchange.
    let config = ctx.dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let mut producers = Vec::new();
    for role in meeting_events::roles::ALL {
        std::fs::write(
            config.join(format!("{}.toml", role.name)),
            format!("service_name = \"{}\"\n", ctx.queue(role)),
        )
        .unwrap();
        producers.push(format!("{}={}", role.name, ctx.queue(role)));
    }
    let py = format!("{}-py-meeting", ctx.prefix);
    producers.push(format!("meeting={py}"));
    let shared = [
        ("AMQP_URL", broker.url.clone()),
        ("MQ_EXCHANGE", ctx.exchange.clone()),
        ("MQ_PRODUCERS", producers.join(",")),
        ("MQ_INGRESS", py.clone()),
        ("LIVE_STREAM", ctx.env(&LIVE)["LIVE_STREAM"].clone()),
        (
            "MQ_RETRY_DELAYS",
            ctx.env(&MEETING)["MQ_RETRY_DELAYS"].clone(),
        ),
    ];

    let script = app_topology(&ctx, &shared, "permissions").stdout;
    let script = String::from_utf8(script).unwrap();
    let file = ctx.dir.path().join("permissions.sh");
    std::fs::write(&file, &script).unwrap();
    let users = users(&script);
    assert_eq!(
        users.len(),
        6,
        "five roles and the Python service: {script}"
    );
    let passwords: Vec<(String, String)> = users
        .iter()
        .map(|(_, var, pw)| (var.clone(), pw.clone()))
        .collect();
    // A password left unset stops the script before any command runs.
    let unset = Command::new("/bin/sh")
        .arg(&file)
        .env_clear()
        .env("PATH", "/nonexistent")
        .output()
        .expect("sh runs");
    assert!(!unset.status.success());
    assert!(
        stderr(&unset).contains("_BROKER_PASSWORD"),
        "{}",
        stderr(&unset)
    );
    broker.apply(&file, &passwords);
    // The administrator (the node's guest) declares the ingress exchange.
    let declared = app_topology(&ctx, &shared, "ingress").stdout;
    let ingress = format!("{}.from.{py}", ctx.exchange);
    assert!(
        String::from_utf8_lossy(&declared).contains(&ingress),
        "{}",
        String::from_utf8_lossy(&declared)
    );

    let url_of = |user: &str| {
        let (_, _, pw) = users.iter().find(|(u, _, _)| u == user).expect(user);
        broker.url_as(user, pw)
    };
    for role in meeting_events::roles::ALL {
        let mut per_role = ctx.per_role.remove(role.name).unwrap_or_default();
        per_role.insert("AMQP_URL".into(), url_of(&ctx.queue(role)));
        ctx.per_role.insert(role.name, per_role);
    }
    for (k, v) in [
        ("MQ_TRUST", "strict".to_string()),
        ("MQ_PRODUCERS", producers.join(",")),
        ("MQ_INGRESS", py.clone()),
    ] {
        ctx.extra.insert(k.into(), v);
    }

    // The whole chain, each role on its own confined user.
    let stack = Stack::start(&ctx).await;
    let urls = &stack.urls();
    let (alice, bob) = (Client::as_user("alice"), Client::as_user("bob"));
    let meeting = meeting_with_manager(urls, &alice, "Confined").await;
    let (item, election) = open_election(urls, &alice, &meeting).await;
    nominate(urls, &alice, &election, &["ada", "grace"]).await;
    start(urls, &alice, &meeting, &item).await;
    let ballot = ballot_of(urls, &alice, &election).await;
    let ballot = ballot["id"].as_str().unwrap();
    assert_eq!(vote(urls, &alice, ballot, "ada").await.0, 201);
    assert_eq!(vote(urls, &bob, ballot, "grace").await.0, 201);
    assert_eq!(
        vote(urls, &Client::as_user("carol"), ballot, "ada").await.0,
        201
    );
    let (s, _) = alice
        .post(
            &format!("{}/ballots/{ballot}/close", urls.voting),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let result = item_result(urls, &alice, &meeting, &item).await;
    assert_eq!(result["winners"], json!(["ada"]), "{result}");

    let verified = String::from_utf8(app_topology(&ctx, &shared, "verify").stdout).unwrap();
    assert!(
        verified.contains(&format!("ok    exchange {ingress} (ingress of {py})")),
        "{verified}"
    );

    // A role publishes only its own routing keys, and reads only its own queues.
    let voting = url_of(&ctx.queue(&VOTING));
    for key in [
        "permission.granted",
        "election.finalized",
        "meeting.created",
    ] {
        let refused = publish_refusal(&voting, &ctx.exchange, key).await;
        assert!(
            refused
                .as_deref()
                .is_some_and(|r| r.contains("ACCESS_REFUSED")),
            "voting may not publish {key}: {refused:?}"
        );
    }
    assert_eq!(
        publish_refusal(&voting, &ctx.exchange, "voting.completed").await,
        None,
        "its own key"
    );
    let refused = read_refusal(&url_of(&ctx.queue(&MEETING)), &ctx.queue(&ELECTION)).await;
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("ACCESS_REFUSED")),
        "meeting may not read the election's queue: {refused:?}"
    );
    // The Python service has no rights on the shared exchange, and its ingress exchange
    // takes only the meeting role's keys.
    let py_url = url_of(&py);
    for (exchange, key) in [
        (&ctx.exchange, "agenda.election.create"),
        (&ingress, "permission.granted"),
    ] {
        let refused = publish_refusal(&py_url, exchange, key).await;
        assert!(
            refused
                .as_deref()
                .is_some_and(|r| r.contains("ACCESS_REFUSED")),
            "{py} may not publish {key} to {exchange}: {refused:?}"
        );
    }

    // mq.py as it is, pointed at its ingress exchange, drives the election service; the
    // election role believes it in strict mode by the exchange it came through. The start
    // goes first: not seen yet, it waits in the retry queue (moved by the election role as
    // itself) and is still believed as mq.py's when it comes back after the create.
    let start = json!({"meeting_id": "py-meeting", "agenda_item_id": "py-item"});
    let out = mq_py(&py_url, &ingress, "agenda.election.start", start).await;
    assert!(out.status.success(), "mq.py: {}", stderr(&out));
    let create =
        json!({"meeting_id": "py-meeting", "agenda_item_id": "py-item", "title": "From mq.py"});
    let out = mq_py(&py_url, &ingress, "agenda.election.create", create).await;
    assert!(out.status.success(), "mq.py: {}", stderr(&out));
    let list = format!("{}/elections?meeting_id=py-meeting", urls.election);
    let e = eventually(Duration::from_secs(20), || async {
        let e = alice.get(&list).await.1.as_array()?.first().cloned()?;
        (e["status"] == "cancelled").then_some(e)
    })
    .await
    .expect("the election role believed both of mq.py's events");
    assert_eq!(e["title"], "From mq.py");
    let (_, metrics) = Client::anonymous()
        .get(&format!("{}/metrics", urls.election))
        .await;
    let retried = format!(
        "events_retried_total{{service=\"{}\",event_type=\"agenda.election.start\"}}",
        ctx.queue(&ELECTION)
    );
    assert!(
        metrics.as_str().unwrap_or_default().contains(&retried),
        "the start went through the retry queue"
    );
    // Pointed at the shared exchange, mq.py is refused by the broker.
    let out = mq_py(&py_url, &ctx.exchange, "agenda.election.create", json!({})).await;
    assert!(!out.status.success(), "mq.py on the shared exchange");
    assert!(stderr(&out).contains("ACCESS_REFUSED"), "{}", stderr(&out));

    // Nothing any role did was refused on the way: the only dead letter is the probe the
    // voting user was allowed to publish (`{}` as voting.completed), which the election
    // role parked unread.
    let bus = Bus::connect(&ctx).await;
    let election_dlq = dead_letter_queue(&ctx.queue(&ELECTION));
    let why = bus.parked_reasons(&election_dlq, 1).await.remove(0);
    assert!(why.starts_with("not_envelope"), "{why}");
    for role in meeting_events::roles::ALL {
        let dlq = dead_letter_queue(&ctx.queue(role));
        assert_eq!(bus.queue_len(&dlq).await, 0, "{dlq}");
    }
    stack.stop().await;
}
