//! Traces across the services (docs/architecture.md §13): the four roles as separate
//! processes exporting to a small OTLP/HTTP receiver, on a real broker.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use lapin::BasicProperties;
use meeting_events::messaging::AmqpCarrier as _;
use meeting_events::trace::Carrier;
use serde_json::json;

use crate::helpers::otlp::{self, Collector, Got};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

struct Procs(Vec<std::process::Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// SIGTERM each, so each flushes its last spans, and wait for them.
    fn stop(mut self) {
        for c in &self.0 {
            signal(c, "TERM");
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

async fn start(ctx: &Ctx, roles: &[Role]) -> (Procs, Vec<String>) {
    let mut procs = Procs(Vec::new());
    let mut bases = Vec::new();
    for role in roles {
        let port = free_port();
        procs.0.push(spawn_process(ctx, role, port));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    for (base, role) in bases.iter().zip(roles) {
        assert!(wait_ready_at(base, WAIT).await, "{role} not ready");
    }
    (procs, bases)
}

fn hex_id(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_string()
}

/// The spans of a trace as an indented tree, children in start order of their names.
fn tree(spans: &[Got], root: &Got) -> String {
    fn walk(spans: &[Got], at: &Got, depth: usize, out: &mut String) {
        let kind = match at.kind {
            otlp::SERVER => "SERVER",
            otlp::CLIENT => "CLIENT",
            otlp::PRODUCER => "PRODUCER",
            otlp::CONSUMER => "CONSUMER",
            _ => "INTERNAL",
        };
        out.push_str(&format!(
            "{}{} [{kind}] {}\n",
            "  ".repeat(depth),
            at.name,
            at.service
        ));
        let mut children: Vec<&Got> = spans.iter().filter(|s| s.parent == at.span_id).collect();
        children.sort_by_key(|s| (s.kind != otlp::CLIENT, s.service.clone(), s.name.clone()));
        for c in children {
            walk(spans, c, depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(spans, root, 0, &mut out);
    out
}

#[tokio::test]
async fn one_request_is_one_trace_through_http_the_outbox_the_broker_and_four_services() {
    let collector = Collector::start().await;
    let mut ctx = Ctx::new();
    ctx.extra.extend(collector.env());
    let roles = [&PERMISSION, &MEETING, &ELECTION, &VOTING];
    let (procs, bases) = start(&ctx, &roles).await;
    let meeting_base = &bases[1];

    // A request with a known, sampled context.
    let (trace_id, caller) = (hex_id(16), hex_id(8));
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{meeting_base}/meetings"))
        .bearer_auth(token("alice"))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .header("tracestate", "tester=1")
        .json(&json!({"title": "Traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // The grant reaches the meeting, election and voting roles: one process span each,
    // and the permission role's own publish of it.
    let services = ["meeting", "election", "voting"].map(|r| {
        ctx.queue(match r {
            "meeting" => &MEETING,
            "election" => &ELECTION,
            _ => &VOTING,
        })
    });
    let spans = eventually(WAIT, || async {
        let spans = collector.of_trace(&trace_id);
        let granted_to: BTreeSet<&str> = spans
            .iter()
            .filter(|s| {
                s.kind == otlp::CONSUMER
                    && s.attr("messaging.rabbitmq.destination.routing_key") == "permission.granted"
            })
            .map(|s| s.service.as_str())
            .collect();
        let publishes = spans.iter().filter(|s| s.kind == otlp::CLIENT).count();
        (services.iter().all(|s| granted_to.contains(s.as_str())) && publishes >= 2)
            .then_some(spans)
    })
    .await
    .unwrap_or_else(|| panic!("the chain's spans: {:#?}", collector.of_trace(&trace_id)));

    let root = spans
        .iter()
        .find(|s| s.kind == otlp::SERVER)
        .expect("a SERVER span");
    println!(
        "the span tree of one POST /meetings:\n{}",
        tree(&spans, root)
    );
    assert_eq!(root.name, "POST /meetings");
    assert_eq!(
        root.parent, caller,
        "the SERVER span continues the caller's traceparent"
    );
    assert_eq!(root.service, ctx.queue(&MEETING));
    assert_eq!(root.attr("http.route"), "/meetings");
    assert_eq!(root.attr("http.response.status_code"), "201");
    assert_eq!(spans.iter().filter(|s| s.kind == otlp::SERVER).count(), 1);

    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in &spans {
        if s.span_id == root.span_id {
            continue;
        }
        let parent = by_id
            .get(s.parent.as_str())
            .unwrap_or_else(|| panic!("{} has its parent in the trace", s.name));
        match s.kind {
            // An event is created under the request or the delivery that caused it.
            otlp::PRODUCER => {
                assert!(
                    s.name.starts_with(&format!("create {}:", ctx.exchange)),
                    "{}",
                    s.name
                );
                assert!(
                    parent.kind == otlp::SERVER || parent.kind == otlp::CONSUMER,
                    "{} under {}",
                    s.name,
                    parent.name
                );
                assert_eq!(parent.service, s.service);
                assert_eq!(s.attr("messaging.system"), "rabbitmq");
                if parent.kind == otlp::CONSUMER {
                    assert_eq!(
                        s.attr("meeting_events.causation_id"),
                        parent.attr("messaging.message.id"),
                        "causation_id is the message id of the delivery it was created under"
                    );
                    assert_eq!(
                        s.attr("messaging.message.conversation_id"),
                        parent.attr("messaging.message.conversation_id")
                    );
                }
            }
            // The relay's publish and every delivery hang under the event's create span,
            // and link to it.
            otlp::CLIENT | otlp::CONSUMER => {
                assert_eq!(
                    parent.kind,
                    otlp::PRODUCER,
                    "{} under {}",
                    s.name,
                    parent.name
                );
                assert!(
                    s.links
                        .contains(&(trace_id.clone(), parent.span_id.clone())),
                    "{} links to its creation context",
                    s.name
                );
                assert_eq!(s.attr("messaging.system"), "rabbitmq");
                assert_eq!(
                    s.attr("messaging.message.id"),
                    parent.attr("messaging.message.id")
                );
                assert_eq!(
                    s.attr("messaging.rabbitmq.destination.routing_key"),
                    parent.attr("messaging.rabbitmq.destination.routing_key")
                );
                if s.kind == otlp::CLIENT {
                    assert_eq!(s.service, parent.service, "the producer's relay publishes");
                    assert!(s.name.starts_with("publish "), "{}", s.name);
                } else {
                    assert_ne!(s.service, parent.service);
                    assert_eq!(s.name, format!("process {}", s.service));
                    assert_eq!(s.attr("messaging.rabbitmq.message.attempt"), "1");
                    assert!(!s.attr("messaging.rabbitmq.message.delivery_tag").is_empty());
                    assert_eq!(
                        s.attr("messaging.destination.name"),
                        format!(
                            "{}:{}:{}",
                            ctx.exchange,
                            s.attr("messaging.rabbitmq.destination.routing_key"),
                            s.service
                        )
                    );
                }
            }
            other => panic!("unexpected span kind {other}: {}", s.name),
        }
        assert_eq!(s.status, 0, "{} did not fail", s.name);
    }
    // meeting → permission → meeting, election, voting.
    let seen: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for role in roles {
        assert!(
            seen.contains(ctx.queue(role).as_str()),
            "{role} in {seen:?}"
        );
    }
    let created = spans
        .iter()
        .find(|s| s.kind == otlp::PRODUCER && s.parent == root.span_id)
        .expect("meeting.created's create span");
    assert!(
        created.name.ends_with("meeting.created"),
        "{}",
        created.name
    );
    procs.stop();
}

#[tokio::test]
async fn an_unsampled_request_exports_nothing_its_context_travels_and_a_plain_message_starts_a_trace(
) {
    let collector = Collector::start().await;
    let mut ctx = Ctx::new();
    ctx.extra.extend(collector.env());
    let bus = Bus::connect(&ctx).await;
    let watch = format!("{}-watch", ctx.prefix);
    bus.durable_queue(&watch, "meeting.created").await;
    let (procs, bases) = start(&ctx, &[&MEETING]).await;

    let (trace_id, caller) = (hex_id(16), hex_id(8));
    let traceparent = format!("00-{trace_id}-{caller}-00");
    let r = reqwest::Client::new()
        .post(format!("{}/meetings", bases[0]))
        .bearer_auth(token("alice"))
        .header("traceparent", &traceparent)
        .json(&json!({"title": "Unsampled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = eventually(WAIT, || async {
        let m = bus.drain(&watch).await;
        (!m.is_empty()).then_some(m)
    })
    .await
    .expect("meeting.created published");
    let carried = Carrier::from_amqp(&got[0].delivery.properties);
    let carried = carried.traceparent.expect("a traceparent header");
    assert!(
        carried.starts_with(&format!("00-{trace_id}-")) && carried.ends_with("-00"),
        "the same trace, still unsampled: {carried}"
    );

    // A message with no trace context (as the seed's mq.py sends them) starts a new trace.
    let plain = meeting_events::envelope::Envelope::new(
        &meeting_events::events::Event::PermissionGranted(
            meeting_events::events::PermissionChange {
                meeting_id: "m-untraced".into(),
                user_id: "bob".into(),
                role: meeting_events::domain::MeetingRole::Manager,
                version: 1,
            },
        ),
        "permission-service",
    );
    bus.publish(&plain).await;
    let root = eventually(WAIT, || async {
        collector
            .spans()
            .into_iter()
            .find(|s| s.kind == otlp::CONSUMER && s.attr("messaging.message.id") == plain.event_id)
    })
    .await
    .expect("the plain message's process span");
    assert_eq!(root.parent, "", "a root: {root:?}");
    assert!(root.links.is_empty(), "nothing to link to: {root:?}");
    assert_ne!(root.trace_id, trace_id);

    procs.stop();
    // Every span the role had was flushed at SIGTERM: none of the unsampled trace.
    assert!(collector.of_trace(&trace_id).is_empty());
}

#[tokio::test]
async fn a_retried_message_keeps_its_trace_a_parked_one_fails_it_and_a_replay_starts_a_linked_one()
{
    let collector = Collector::start().await;
    let mut ctx = Ctx::new();
    ctx.extra.extend(collector.env());
    // The role logs JSON to a file: its lines inside the delivery's span carry the trace.
    let log = ctx.dir.path().join("election.log");
    let port = free_port();
    let procs = Procs(vec![spawn_process_logging_to(&ctx, &ELECTION, port, &log)]);
    assert!(wait_ready_at(&format!("http://127.0.0.1:{port}"), WAIT).await);
    let queue = ctx.queue(&ELECTION);

    // A start for an election nobody created: retried twice (200 ms, 400 ms), then parked.
    let (trace_id, sender) = (hex_id(16), hex_id(8));
    let env = meeting_events::envelope::Envelope::new(
        &meeting_events::events::Event::ElectionStart(meeting_events::events::ElectionStart {
            meeting_id: "m-traced".into(),
            agenda_item_id: "i-traced".into(),
        }),
        "meeting-service",
    );
    let props = Carrier {
        traceparent: Some(format!("00-{trace_id}-{sender}-01")),
        tracestate: None,
    }
    .onto_amqp(BasicProperties::default().with_message_id(env.event_id.clone().into()));
    let bus = Bus::connect(&ctx).await;
    bus.publish_with(&env, props).await;

    let attempts = eventually(WAIT, || async {
        let spans: Vec<Got> = collector
            .of_trace(&trace_id)
            .into_iter()
            .filter(|s| s.kind == otlp::CONSUMER)
            .collect();
        (spans.len() >= 3).then_some(spans)
    })
    .await
    .unwrap_or_else(|| panic!("three attempts: {:#?}", collector.spans()));
    let mut numbers: Vec<&str> = attempts
        .iter()
        .map(|s| s.attr("messaging.rabbitmq.message.attempt"))
        .collect();
    numbers.sort();
    assert_eq!(numbers, ["1", "2", "3"]);
    for s in &attempts {
        assert_eq!(
            s.parent, sender,
            "each attempt continues the message's context"
        );
        assert_eq!(s.attr("messaging.message.id"), env.event_id);
        let last = s.attr("messaging.rabbitmq.message.attempt") == "3";
        assert_eq!(s.status == 2, last, "only the parked attempt fails: {s:?}");
        if last {
            assert!(s.status_message.contains("parked"), "{}", s.status_message);
            assert_eq!(s.attr("error.type"), "retries_exhausted");
        }
    }

    // Every line the role wrote about the failing attempts names the trace and the attempt's
    // span (`LOG_FORMAT=json`: in `span`, the innermost span's fields).
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| {
            l["message"] == "handler failed; retrying later"
                || l["message"] == "message parked in the dead-letter queue"
        })
        .collect();
    assert_eq!(lines.len(), 3, "two retries and the park");
    let span_ids: BTreeSet<String> = attempts.iter().map(|s| s.span_id.clone()).collect();
    for line in &lines {
        assert_eq!(line["span"]["trace_id"], trace_id.as_str(), "{line}");
        let span_id = line["span"]["span_id"].as_str().unwrap_or_default();
        assert!(span_ids.contains(span_id), "{line}");
    }

    // The replay: a new trace, linked to the parked message's context.
    let out = std::process::Command::new(app_bin())
        .env_clear()
        .env("AMQP_URL", &ctx.amqp_url)
        .env("MQ_EXCHANGE", &ctx.exchange)
        .env("CONFIG_DIR", "/nonexistent")
        .env("RUST_LOG", "warn")
        .envs(collector.env())
        .args(["dlq", "replay", "--service", &queue, "--id", &env.event_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = eventually(WAIT, || async {
        collector
            .spans()
            .into_iter()
            .find(|s| s.kind == otlp::PRODUCER && s.attr("messaging.operation.name") == "replay")
    })
    .await
    .expect("the replay's span");
    assert_ne!(replayed.trace_id, trace_id, "a new trace");
    assert_eq!(replayed.parent, "", "a root");
    assert!(replayed.links.contains(&(trace_id.clone(), sender.clone())));
    assert_eq!(replayed.service, "meeting-events-cli");
    let again = eventually(WAIT, || async {
        collector
            .of_trace(&replayed.trace_id)
            .into_iter()
            .find(|s| s.kind == otlp::CONSUMER)
    })
    .await
    .expect("the replayed message processed in the new trace");
    assert_eq!(again.parent, replayed.span_id);
    assert_eq!(again.attr("messaging.rabbitmq.message.attempt"), "1");
    procs.stop();
}
