//! Operator commands against a real broker: tail, publish, dead letters, topology.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use meeting_events::messaging::topology::dead_letter_queue;

use crate::helpers::*;

pub(crate) fn app(ctx: &Ctx, args: &[&str]) -> std::process::Output {
    // The broker answers each request within 15 s or the command fails: 60 s is a hang.
    output_within(app_cmd(ctx).args(args), Duration::from_secs(60))
}

fn app_cmd(ctx: &Ctx) -> Command {
    let mut c = Command::new(app_bin());
    c.env_clear()
        .env("AMQP_URL", &ctx.amqp_url)
        .env("MQ_EXCHANGE", &ctx.exchange)
        .env("CONFIG_DIR", ctx.dir.path().join("config"))
        .env(
            "MQ_RETRY_DELAYS",
            ctx.env(&MEETING)["MQ_RETRY_DELAYS"].clone(),
        )
        .env("RUST_LOG", "warn");
    c
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn tail_prints_an_event_that_publish_sends() {
    let ctx = Ctx::new();
    let mut tail = app_cmd(&ctx)
        .args(["events", "tail", "meeting.*"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(tail.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("tailing"), "{line}");

    let out = app(
        &ctx,
        &[
            "events",
            "publish",
            "meeting.created",
            r#"{"meeting_id":"m-tail","title":"T","created_by":"ops"}"#,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out).split_whitespace().nth(1).unwrap().to_string();

    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let seen = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    signal(&tail, "TERM");
    assert_eq!(tail.wait().unwrap().code(), Some(0));
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(fields[1], "meeting.created", "{seen}");
    assert_eq!(fields[2], "operator");
    assert_eq!(fields[3], id);
    assert!(seen.contains("m-tail"));
}

#[tokio::test]
async fn a_raw_message_is_parked_listed_and_replayed_back_to_its_queue() {
    let ctx = Ctx::new();
    let queue = ctx.queue(&ELECTION);
    let election = Running::spawn(&ctx, &ELECTION).await;
    let out = app(
        &ctx,
        &[
            "events",
            "publish",
            "--raw",
            "agenda.election.create",
            "this is not json",
        ],
    );
    assert!(out.status.success());
    let id = stdout(&out).split_whitespace().nth(1).unwrap().to_string();
    let bus = Bus::connect(&ctx).await;
    let dlq = dead_letter_queue(&queue);
    eventually(Duration::from_secs(10), || async {
        (bus.queue_len(&dlq).await == 1).then_some(())
    })
    .await
    .expect("parked");

    let list = stdout(&app(&ctx, &["dlq", "list", "--service", &queue]));
    assert!(
        list.starts_with(&format!("1 message(s) parked in {dlq}")),
        "{list}"
    );
    let row = list.lines().nth(1).unwrap();
    assert!(row.starts_with(&id), "{row}");
    assert!(
        row.contains("agenda.election.create")
            && row.contains("attempts=1")
            && row.contains("not UTF-8 JSON")
            && row.contains("this is not json"),
        "{row}"
    );
    assert_eq!(
        bus.queue_len(&dlq).await,
        1,
        "listing leaves the message parked"
    );

    // With the service stopped, replay puts it back on its queue.
    election.stop().await.unwrap();
    let out = app(&ctx, &["dlq", "replay", "--service", &queue, "--id", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bus.queue_len(&dlq).await, 0);
    assert_eq!(bus.queue_len(&queue).await, 1);
    let back = bus.drain(&queue).await;
    assert_eq!(back[0].delivery.data, b"this is not json");
    assert_eq!(
        meeting_events::messaging::headers::count(&back[0].delivery.properties, "x-attempts"),
        None,
        "retry count reset"
    );
    let missing = app(&ctx, &["dlq", "replay", "--service", &queue, "--all"]);
    assert_eq!(missing.status.code(), Some(1), "nothing left to replay");
}

#[tokio::test]
async fn topology_verify_reports_missing_and_different_queues() {
    let ctx = Ctx::new();
    let config = ctx.dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for role in meeting_events::roles::ALL {
        std::fs::write(
            config.join(format!("{}.toml", role.name)),
            format!("service_name = \"{}\"\n", ctx.queue(role)),
        )
        .unwrap();
    }
    let voting = Running::spawn(&ctx, &VOTING).await;
    let ok = app(&ctx, &["topology", "verify", "--role", "voting"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    voting.stop().await.unwrap();

    // Election's queues were never declared; make its dead-letter queue a quorum queue.
    let bus = Bus::connect(&ctx).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    bus.channel
        .queue_declare(
            dead_letter_queue(&ctx.queue(&ELECTION)).as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let out = app(&ctx, &["topology", "verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("ok    queue {} (classic)", ctx.queue(&VOTING))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAIL  queue {} (classic): missing",
            ctx.queue(&ELECTION)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAIL  queue {}.dlq (classic): differs",
            ctx.queue(&ELECTION)
        )),
        "{text}"
    );
    assert!(
        text.contains("x-queue-type"),
        "the broker's reason is shown: {text}"
    );
}
