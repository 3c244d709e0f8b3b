//! The live port as a hostile or careless client speaks to it (docs/architecture.md §4, §12),
//! with raw sockets: hyper serves every connection, event streams included, so a stream
//! request gets the same HTTP/1.1 as any other — bare-LF heads answered, nothing smuggled in
//! a body answered, pipelined requests in order, heads over the limit refused with a reason,
//! slow heads cut off by the deadline without locking others out, HTTP/1.0 served, and a
//! stream that fails mid-way aborted rather than ended as if complete.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

fn addr_of(live: &Running) -> String {
    live.base.trim_start_matches("http://").to_string()
}

fn bearer(user: &str) -> String {
    format!("Authorization: Bearer {}", token(user))
}

/// What the server sent within `within` after `request`, and whether it closed by then.
async fn exchange(addr: &str, request: &[u8], within: Duration) -> (String, bool) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    read_for(&mut socket, within).await
}

/// Read for `within` (or to the end); whether the connection closed by then.
async fn read_for(socket: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(within, socket.read_to_end(&mut got))
        .await
        .is_ok();
    (String::from_utf8_lossy(&got).to_string(), closed)
}

/// Status lines in what a connection got.
fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count() + text.matches("HTTP/1.0 ").count()
}

/// A live role whose idle streams get a keep-alive every second; its address, and a bearer
/// header for a user.
async fn live_port() -> (Running, String, String) {
    let mut ctx = Ctx::new();
    ctx.extra.insert("LIVE_KEEPALIVE".into(), "1s".into());
    let live = Running::spawn(&ctx, &LIVE).await;
    let addr = addr_of(&live);
    (live, addr, bearer("raw"))
}

const SHORT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_bare_lf_head_gets_a_stream_like_any_other() {
    let (live, addr, auth) = live_port().await;
    // A head with bare LF line endings, which RFC 9112 lets a server accept.
    let (bare_lf, closed) = exchange(
        &addr,
        format!("GET /live/meetings/m-raw HTTP/1.1\nHost: {addr}\n{auth}\n\n").as_bytes(),
        SHORT,
    )
    .await;
    assert!(bare_lf.starts_with("HTTP/1.1 200 OK\r\n"), "{bare_lf:?}");
    assert!(bare_lf.contains(": connected\n\n"), "{bare_lf:?}");
    assert!(!closed, "a stream stays open");
    for header in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
    ] {
        assert!(bare_lf.contains(header), "{header} missing: {bare_lf}");
    }
    assert!(
        !bare_lf.contains("content-length"),
        "a stream has no length: {bare_lf}"
    );
    assert!(
        bare_lf.contains(": keep-alive\n\n"),
        "an idle stream gets a keep-alive within LIVE_KEEPALIVE: {bare_lf:?}"
    );
    live.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_smuggled_in_a_body_never_gets_an_answer_of_its_own() {
    let (live, addr, auth) = live_port().await;
    // A request smuggled in the body of a stream request (by length or in chunks), or of a
    // refused one, is body: it never gets an answer of its own.
    let smuggled = format!("GET /live/meetings/m-two HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n\r\n");
    let chunked = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    for (what, head, body) in [
        (
            "length",
            auth.as_str(),
            format!("Content-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        ),
        (
            "chunks",
            auth.as_str(),
            format!("Transfer-Encoding: chunked\r\n\r\n{chunked}"),
        ),
        (
            "length, refused",
            "X-No: credential",
            format!("Content-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        ),
    ] {
        let request =
            format!("GET /live/meetings/m-raw HTTP/1.1\r\nHost: {addr}\r\n{head}\r\n{body}");
        let (got, _) = exchange(&addr, request.as_bytes(), SHORT).await;
        assert!(got.starts_with("HTTP/1.1 "), "{what}: answered: {got:?}");
        assert_eq!(responses(&got), 1, "{what}: one answer only: {got:?}");
    }
    live.stop().await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_wait_behind_a_stream() {
    let (live, addr, auth) = live_port().await;
    let twice = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\nGET /live/config HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (got, _) = exchange(&addr, twice.as_bytes(), SHORT).await;
    assert_eq!(responses(&got), 2, "{got:?}");
    let (health, config) = (got.find(r#"{"status":"ok"}"#), got.find("keepalive_ms"));
    assert!(health.is_some() && health < config, "in order: {got:?}");
    let behind = format!("GET /live/meetings/m-raw HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n\r\nGET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (got, closed) = exchange(&addr, behind.as_bytes(), SHORT).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.contains(": keep-alive"),
        "{got:?}"
    );
    assert_eq!(
        responses(&got),
        1,
        "the stream is still being answered: {got:?}"
    );
    assert!(!closed);
    live.stop().await.unwrap();
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431_and_no_credential_401_with_a_json_reason() {
    let (live, addr, auth) = live_port().await;
    let big = format!(
        "GET /live/meetings/m-raw HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    let (got, _) = exchange(&addr, big.as_bytes(), SHORT).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
    assert!(got.contains(r#""error":"headers_too_large""#), "{got:?}");
    let (unauthorized, _) = exchange(
        &addr,
        b"GET /live/meetings/m-raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        SHORT,
    )
    .await;
    assert!(unauthorized.starts_with("HTTP/1.1 401"), "{unauthorized}");
    assert!(
        unauthorized.contains(r#""error":"unauthorized""#),
        "{unauthorized}"
    );
    live.stop().await.unwrap();
}

#[tokio::test]
async fn http_1_0_gets_the_frames_unchunked() {
    let (live, addr, auth) = live_port().await;
    // HTTP/1.0 (nginx's default towards upstreams): the frames as they are, no chunks.
    let (http10, _) = exchange(
        &addr,
        format!("GET /live/meetings/m-raw HTTP/1.0\r\n{auth}\r\n\r\n").as_bytes(),
        SHORT,
    )
    .await;
    assert!(
        http10.starts_with("HTTP/1.0 200 OK\r\n") || http10.starts_with("HTTP/1.1 200 OK\r\n"),
        "{http10}"
    );
    assert!(!http10.contains("transfer-encoding"), "{http10}");
    assert!(http10.contains("\r\n\r\n: connected\n\n"), "{http10:?}");
    live.stop().await.unwrap();
}

#[tokio::test]
async fn slow_heads_are_cut_off_by_the_deadline_and_do_not_lock_others_out() {
    let mut ctx = Ctx::new();
    ctx.extra.insert("HTTP_HEADER_TIMEOUT".into(), "1s".into());
    ctx.extra.insert("HTTP_MAX_CONNECTIONS".into(), "64".into());
    let live = Running::spawn(&ctx, &LIVE).await;
    let addr = addr_of(&live);

    // One slow head: closed by the deadline, never answered 200.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /live/meetings/m-slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (got, closed) = read_for(&mut slow, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a head not finished within HTTP_HEADER_TIMEOUT is closed"
    );
    assert!(!got.contains("200 OK"), "{got:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Three hundred half-open heads against 64 connection permits: each holds a permit
    // until the deadline frees it, the rest wait in the listen backlog, and a normal client
    // behind them is served once the deadlines have worked through them.
    let mut heads = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
        heads.push(s);
    }
    let started = Instant::now();
    let (got, _) = exchange(
        &addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    )
    .await;
    let served_after = started.elapsed();
    eprintln!("a normal client behind 300 half-open heads (64 permits, 1 s deadline) was served after {served_after:?}");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
    drop(heads);
    live.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_that_falls_behind_is_aborted_not_ended_as_if_complete() {
    let mut ctx = Ctx::new();
    ctx.extra.insert("LIVE_CLIENT_BUFFER".into(), "16".into());
    ctx.extra.insert("HTTP_WRITE_TIMEOUT".into(), "120s".into());
    let live = Running::spawn(&ctx, &LIVE).await;
    let addr = addr_of(&live);
    let meeting = "m-behind";

    // A client that stops reading after the head, with a small receive window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut behind = socket.connect(addr.parse().unwrap()).await.unwrap();
    behind
        .write_all(
            format!(
                "GET /live/meetings/{meeting} HTTP/1.1\r\nHost: {addr}\r\n{}\r\n\r\n",
                bearer("sloth")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = behind.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200 OK\r\n"));
    let url = format!("{}/live/meetings/{meeting}", live.base);
    let mut reader = Sse::as_user(&url, "hare").await;

    // Far more than the socket buffers between them and the buffer of 16 events hold.
    let bus = Bus::connect(&ctx).await;
    let n = 1500;
    let publish = publish_big_items(&bus, meeting, n);
    let (_, got) = tokio::join!(publish, reader.collect_for(Duration::from_secs(20)));
    assert_eq!(got.len(), n as usize, "the reading client got every event");

    // Now it reads: what was buffered, then the connection ends without the last chunk.
    let (rest, closed) = read_for(&mut behind, WAIT).await;
    assert!(closed, "the stream that fell behind was ended");
    assert!(
        rest.len() < n as usize * 10_000,
        "it never got everything: {}",
        rest.len()
    );
    assert!(
        !rest.ends_with("0\r\n\r\n"),
        "a cut stream does not end with the terminating chunk: {:?}",
        &rest[rest.len().saturating_sub(200)..]
    );
    let text = metrics_text(&live.base).await;
    assert!(text.contains("live_slow_disconnects_total 1"), "{text}");
    live.stop().await.unwrap();
}
