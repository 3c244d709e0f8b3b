//! The live role against a real broker (docs/architecture.md §12): a meeting's events on the
//! stream in order, resumed on another replica from memory or from the stream, `resync` for
//! an id the stream no longer holds, slow clients, and the page. Access rules: `live_auth.rs`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

pub(crate) const WAIT: Duration = Duration::from_secs(15);

pub(crate) fn stream_url(live: &str, meeting: &str) -> String {
    format!("{live}/live/meetings/{meeting}")
}

/// Add an agenda item; its id.
pub(crate) async fn add_item(
    urls: &Urls,
    who: &Client,
    meeting: &str,
    title: &str,
    kind: &str,
) -> String {
    let (s, item) = who
        .post(
            &format!("{}/meetings/{meeting}/agenda-items", urls.meeting),
            json!({"title": title, "kind": kind}),
        )
        .await;
    assert_eq!(s, 201, "{item}");
    item["id"].as_str().unwrap().to_string()
}

fn event_ids(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// The offset part of an SSE id.
fn offset(e: &SseEvent) -> u64 {
    e.id.as_deref()
        .and_then(|id| id.split_once('-'))
        .and_then(|(o, _)| o.parse().ok())
        .expect("an id <offset>-<tag>")
}

#[tokio::test]
async fn a_walk_reaches_the_stream_in_order_and_resumes_on_another_replica_exactly() {
    let mut ctx = Ctx::new();
    // The second replica keeps three events in memory: its resume reads the stream.
    let stack = Stack::start(&ctx).await;
    ctx.per_role.insert(
        LIVE.name,
        [("LIVE_MEMORY_EVENTS".to_string(), "3".to_string())].into(),
    );
    let other = Running::spawn(&ctx, &LIVE).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&urls, &alice, "Live walk").await;

    let mut first = Sse::as_user(&stream_url(&urls.live, &meeting), "alice").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["content-type"], "text/event-stream");
    assert_eq!(first.headers["cache-control"], "no-cache");
    assert_eq!(first.headers["x-accel-buffering"], "no");
    assert!(first.headers.get("content-encoding").is_none());
    // A second reader, to know when both nominations are on the stream: each role's relay
    // publishes on its own, so the stream's order across roles is the order of publication.
    let mut watch = Sse::as_user(&stream_url(&urls.live, &meeting), "alice").await;

    let item = add_item(&urls, &alice, &meeting, "Chair", "election").await;
    let (s, _) = alice
        .post(
            &format!(
                "{}/meetings/{meeting}/agenda-items/{item}/open",
                urls.meeting
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let opened = first.until("election.opened", WAIT).await;
    let election = opened.last().unwrap().data["election_id"]
        .as_str()
        .unwrap()
        .to_string();
    for who in ["ada", "grace"] {
        let (s, body) = Client::as_user(who)
            .post(
                &format!("{}/elections/{election}/nominations", urls.election),
                json!({"candidate": who}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let nominated = first.until("election.nomination.accepted", WAIT).await;
    let seen_before_drop: Vec<SseEvent> = opened.into_iter().chain(nominated).collect();
    // The browser goes away after the first nomination reached it.
    let resume_from = seen_before_drop.last().unwrap().id.clone().unwrap();
    drop(first);

    // Meanwhile the meeting goes on, once the second nomination is on the stream.
    let seen = watch.until("election.nomination.accepted", WAIT).await;
    if seen.last().map(|e| e.data["candidate"].clone()) != Some(json!("grace")) {
        watch.until("election.nomination.accepted", WAIT).await;
    }
    drop(watch);
    crate::flow::start(&urls, &alice, &meeting, &item).await;
    let ballot = crate::flow::ballot_of(&urls, &alice, &election).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (who, choice) in [("alice", "ada"), ("bob", "ada"), ("carol", "grace")] {
        let (s, body) = crate::flow::vote(&urls, &Client::as_user(who), &ballot, choice).await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, _) = alice
        .post(
            &format!("{}/ballots/{ballot}/close", urls.voting),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);

    // A full record of the meeting's events, from memory, for comparison.
    let mut whole = Sse::open(
        &format!(
            "{}?last_event_id={}",
            stream_url(&urls.live, &meeting),
            seen_before_drop[0].id.as_deref().unwrap()
        ),
        &[("authorization", format!("Bearer {}", token("alice")))],
    )
    .await;
    let rest = whole.until("election.finalized", WAIT).await;
    let all: Vec<SseEvent> = seen_before_drop
        .iter()
        .take(1)
        .cloned()
        .chain(rest)
        .collect();
    let types: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        types,
        [
            "agenda.item.added",
            "agenda.item.opened",
            "election.opened",
            "election.nomination.accepted",
            "election.nomination.accepted",
            "agenda.election.start",
            "voting.ballot.opened",
            "voting.vote.counted",
            "voting.vote.counted",
            "voting.vote.counted",
            "voting.completed",
            "election.finalized",
        ],
        "the walk's events in the order they were committed"
    );
    let offsets: Vec<u64> = all.iter().map(offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    let counted: Vec<u64> = all
        .iter()
        .filter(|e| e.event == "voting.vote.counted")
        .map(|e| e.data["votes_cast"].as_u64().unwrap())
        .collect();
    assert_eq!(counted, [1, 2, 3]);
    for e in all.iter().filter(|e| e.event == "voting.vote.counted") {
        let keys: HashSet<&str> = e
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            HashSet::from([
                "ballot_id",
                "meeting_id",
                "votes_cast",
                "event_id",
                "timestamp"
            ]),
            "a vote counted says how many, never who or for whom"
        );
    }

    // Reconnect to the other replica with the last id seen: exactly what was missed, in
    // order, read from the stream (its memory holds three events), then the live tail.
    let mut resumed = Sse::open(
        &stream_url(&other.base, &meeting),
        &[
            ("authorization", format!("Bearer {}", token("alice"))),
            ("last-event-id", resume_from.clone()),
        ],
    )
    .await;
    assert_eq!(resumed.status, 200);
    let missed = resumed.until("election.finalized", WAIT).await;
    let expected: Vec<String> = event_ids(&all)
        .into_iter()
        .skip_while(|id| {
            Some(id.as_str()) != seen_before_drop.last().unwrap().data["event_id"].as_str()
        })
        .skip(1)
        .collect();
    assert_eq!(event_ids(&missed), expected, "exactly the missed events");
    add_item(&urls, &alice, &meeting, "Any other business", "discussion").await;
    let live = resumed.next(WAIT).await.expect("then the live tail");
    assert_eq!(live.event, "agenda.item.added");
    assert_eq!(live.data["title"], "Any other business");
    let from_stream = metrics_text(&other.base).await;
    assert!(
        from_stream.contains("live_resumes_total{from=\"stream\"} 1"),
        "{from_stream}"
    );

    // And on the first replica, from memory.
    let mut again = Sse::open(
        &stream_url(&urls.live, &meeting),
        &[
            ("authorization", format!("Bearer {}", token("alice"))),
            ("last-event-id", resume_from),
        ],
    )
    .await;
    let missed_again = again.until("agenda.item.added", WAIT).await;
    assert_eq!(event_ids(&missed_again)[..expected.len()], expected[..]);
    assert!(metrics_text(&urls.live)
        .await
        .contains("live_resumes_total{from=\"memory\"}"));

    // Stopping a replica ends its streams with a reconnect delay spread over 1–5 s.
    other.stop().await.unwrap();
    assert!(resumed.wait_end(WAIT).await, "the stream ends on stop");
    let retry = *resumed.retries.last().expect("a retry: hint");
    assert!((1000..=5000).contains(&retry), "{retry}");
    stack.stop().await;
}

#[tokio::test]
async fn an_id_of_another_event_is_answered_with_resync_and_a_malformed_one_refused() {
    let mut ctx = Ctx::new();
    ctx.extra
        .insert("LIVE_MEMORY_EVENTS".to_string(), "2".to_string());
    let stack = Stack::start(&ctx).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&urls, &alice, "Resync").await;
    let mut watch = Sse::as_user(&stream_url(&urls.live, &meeting), "alice").await;
    for n in 0..10 {
        add_item(&urls, &alice, &meeting, &format!("Item {n}"), "discussion").await;
    }
    let mut later = Vec::new();
    while later.len() < 10 {
        later.push(watch.next(WAIT).await.expect("every item"));
    }
    let resume = |id: String| {
        let url = format!("{}?last_event_id={id}", stream_url(&urls.live, &meeting));
        async move { Sse::as_user(&url, "alice").await }
    };

    // An offset the stream holds but with another event's tag: a stream declared anew.
    let held = later[later.len() - 5].id.clone().unwrap();
    let (offset, _) = held.split_once('-').unwrap();
    let mut forged = resume(format!("{offset}-00000000")).await;
    assert_eq!(forged.next(WAIT).await.expect("an answer").event, "resync");
    assert!(forged.wait_end(WAIT).await);

    // A malformed id is refused with a reason, not a stream.
    let bad = resume("yesterday".into()).await;
    assert_eq!(bad.status, 400);
    assert!(bad.error_body().await["message"]
        .as_str()
        .unwrap()
        .contains("not an event id"));

    // An id still held, older than the memory of two: read from the stream, exactly.
    let mut fine = resume(held).await;
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(fine.next(WAIT).await.expect("the missed items"));
    }
    assert_eq!(event_ids(&got), event_ids(&later[later.len() - 4..]));
    let text = metrics_text(&urls.live).await;
    assert!(text.contains("live_resyncs_total 1"), "{text}");
    stack.stop().await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_dropped_while_another_keeps_receiving() {
    let mut ctx = Ctx::new();
    ctx.extra
        .insert("LIVE_CLIENT_BUFFER".to_string(), "64".to_string());
    // A write that waits this long for the reader closes its connection.
    ctx.extra
        .insert("HTTP_WRITE_TIMEOUT".to_string(), "5s".to_string());
    let live = Running::spawn(&ctx, &LIVE).await;
    let meeting = "m-slow";
    let url = stream_url(&live.base, meeting);

    // The slow client: a socket with a small receive window that never reads.
    let addr = live.base.trim_start_matches("http://").to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr.parse().unwrap()).await.unwrap();
    slow.write_all(
        format!(
            "GET /live/meetings/{meeting} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
            token("sloth")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut fast = Sse::as_user(&url, "hare").await;
    assert_eq!(fast.status, 200);

    let bus = Bus::connect(&ctx).await;
    // Far more than the socket buffers between them hold.
    let n = 2000;
    let publish = publish_big_items(&bus, meeting, n);
    // The reading client reads while the events are published.
    let (_, got) = tokio::join!(publish, fast.collect_for(Duration::from_secs(20)));
    assert_eq!(got.len(), n as usize, "the reading client got every event");
    let dropped = eventually(WAIT, || async {
        let text = metrics_text(&live.base).await;
        text.contains("live_slow_disconnects_total 1").then_some(())
    })
    .await;
    assert!(dropped.is_some(), "{}", metrics_text(&live.base).await);
    // The slow client finds its stream ended once it reads: what was buffered, then EOF.
    let mut sink = Vec::new();
    let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the slow client's connection was closed");
    assert!(
        sink.len() < n as usize * 10_000,
        "it never got everything: {}",
        sink.len()
    );
    let open = metrics_text(&live.base).await;
    assert!(open.contains("live_streams_open 1"), "{open}");
    live.stop().await.unwrap();
}

#[tokio::test]
async fn the_page_and_its_settings_are_served() {
    let ctx = Ctx::new();
    let live = Running::spawn(&ctx, &LIVE).await;
    let page = reqwest::get(format!("{}/live/", live.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("/live/page.js"));
    let script = reqwest::get(format!("{}/live/page.js", live.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(script.contains("new EventSource"));
    let config: Value = reqwest::get(format!("{}/live/config", live.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["development"], false);
    let dev = reqwest::Client::new()
        .post(format!("{}/live/dev-session", live.base))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        dev.status(),
        404,
        "no sign-in by name outside development mode"
    );
    live.stop().await.unwrap();
}
