//! Hostile input costs nothing: oversized, mistyped and malformed requests get the JSON
//! error with the right status, invented methods do not grow the metrics, slow clients are
//! dropped, connections are capped, an oversized message is parked unread, and the
//! development key is never used unless asked for.

use std::time::{Duration, Instant};

use meeting_events::envelope::Envelope;
use meeting_events::events::{ElectionCreate, Event};
use meeting_events::messaging::topology::dead_letter_queue;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn oversized_mistyped_and_malformed_requests_get_json_errors() {
    let ctx = Ctx::new();
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let alice = Client::as_user("alice");
    let http = reqwest::Client::new();
    let url = format!("{}/meetings", meeting.base);
    let big = json!({"title": "x".repeat(100_000)});
    let (s, body) = alice.post(&url, big).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let r = http
        .post(&url)
        .bearer_auth(token("alice"))
        .header("content-type", "text/plain")
        .body(r#"{"title": "t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_media_type", "{body}");
    let (s, body) = alice.get(&format!("{url}/%FF%FE")).await;
    assert!(s == 400 || s == 404, "{s} {body}");
    assert!(body["error"].is_string(), "a JSON error: {body}");
    let (s, body) = alice.post(&url, json!({"title": "line\nbreak"})).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (422, Some("invalid")),
        "{body}"
    );
    // An unsigned token (alg none) is no token.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.";
    let (s, body) = Client::with_token(none).get(&url).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    // An error quotes at most a short prefix of what it refuses.
    let (s, body) = alice
        .post(
            &format!("{url}/nope/agenda-items"),
            json!({"title": "t", "kind": "k".repeat(5000)}),
        )
        .await;
    assert!(s == 404 || s == 403 || s == 422, "{s}");
    assert!(body.to_string().len() < 600, "{body}");
    meeting.stop().await.unwrap();
}

#[tokio::test]
async fn every_forged_token_is_refused_and_changes_nothing() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let ctx = Ctx::new();
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let url = format!("{}/meetings", meeting.base);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign = |alg: Algorithm, key: &str, claims: serde_json::Value| {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let good = |sub: &str| json!({"sub": sub, "exp": now + 600});
    let valid = sign(Algorithm::HS256, SECRET, good("alice"));
    let payload = valid.split('.').nth(1).unwrap();
    let forged = [
        (
            "alg none",
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
        ),
        (
            "HS512, right key",
            sign(Algorithm::HS512, SECRET, good("alice")),
        ),
        (
            "HS384, right key",
            sign(Algorithm::HS384, SECRET, good("alice")),
        ),
        (
            "another key",
            sign(
                Algorithm::HS256,
                "another-secret-0123456789abcdefghij",
                good("alice"),
            ),
        ),
        (
            "expired a minute ago",
            sign(
                Algorithm::HS256,
                SECRET,
                json!({"sub": "alice", "exp": now - 60}),
            ),
        ),
        (
            "not valid for a minute",
            sign(
                Algorithm::HS256,
                SECRET,
                json!({"sub": "alice", "nbf": now + 60, "exp": now + 600}),
            ),
        ),
        (
            "no exp",
            sign(Algorithm::HS256, SECRET, json!({"sub": "alice"})),
        ),
        ("padded sub", sign(Algorithm::HS256, SECRET, good(" alice"))),
        (
            "control in sub",
            sign(Algorithm::HS256, SECRET, good("alice\u{7}")),
        ),
        (
            "signature of another payload",
            format!(
                "{}.{}.{}",
                valid.split('.').next().unwrap(),
                sign(Algorithm::HS256, SECRET, good("mallory"))
                    .split('.')
                    .nth(1)
                    .unwrap(),
                valid.split('.').nth(2).unwrap()
            ),
        ),
    ];
    for (what, token) in &forged {
        let (s, body) = Client::with_token(token)
            .post(&url, json!({"title": "forged"}))
            .await;
        assert_eq!(
            (s, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{what}: {body}"
        );
    }
    let (s, list) = Client::with_token(&valid).get(&url).await;
    assert_eq!(s, 200, "the genuine token passes: {list}");
    assert_eq!(list, json!([]), "no forged token created anything");
    meeting.stop().await.unwrap();
}

#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let ctx = Ctx::new();
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let http = reqwest::Client::new();
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let r = http
            .request(method, format!("{}/health", meeting.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "method_not_allowed");
    }
    let metrics = http
        .get(format!("{}/metrics", meeting.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("INVENTED"),
        "no series per invented method"
    );
    assert!(metrics.contains("method=\"other\""), "they share one label");
    meeting.stop().await.unwrap();
}

#[tokio::test]
async fn slow_clients_are_dropped_and_connections_are_capped() {
    let mut ctx = Ctx::new();
    ctx.extra.insert("HTTP_HEADER_TIMEOUT".into(), "1s".into());
    ctx.extra.insert("HTTP_MAX_CONNECTIONS".into(), "4".into());
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let at = addr(&meeting.base);
    // Four connections that never finish their headers hold every slot…
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(&at).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …so a fifth is served only once the header deadline has dropped them.
    let started = Instant::now();
    let r = reqwest::get(format!("{}/health", meeting.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "served only after the slow connections were dropped ({:?})",
        started.elapsed()
    );
    for mut c in slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the server closed the slow connection");
        // Closed, possibly after a 408: either way the slot is free again.
        assert!(n.is_ok());
    }
    meeting.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_parked_unread() {
    let mut ctx = Ctx::new();
    ctx.extra
        .insert("MQ_MAX_MESSAGE_BYTES".into(), "2048".into());
    let election = Running::spawn(&ctx, &ELECTION).await;
    let bus = Bus::connect(&ctx).await;
    let mut huge = Envelope::new(
        &Event::ElectionCreate(ElectionCreate {
            meeting_id: "m-big".into(),
            agenda_item_id: "i".into(),
            title: "t".into(),
            seats: 1,
        }),
        "meeting-service",
    );
    huge.data["title"] = json!("x".repeat(4096));
    bus.publish(&huge).await;
    let dlq = dead_letter_queue(&ctx.queue(&ELECTION));
    let why = bus.parked_reasons(&dlq, 1).await.remove(0);
    assert!(why.starts_with("too_large: "), "{why}");
    let (_, list) = Client::as_user("alice")
        .get(&format!("{}/elections?meeting_id=m-big", election.base))
        .await;
    assert_eq!(list, json!([]), "nothing applied");
    election.stop().await.unwrap();
}
