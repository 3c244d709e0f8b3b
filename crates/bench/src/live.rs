//! The live benchmark: N open streams of one meeting on one live replica (a fresh process per
//! N), each on its own HTTP/1.1 connection as browsers open them, or multiplexed over h2c
//! connections as an Envoy ingress or a mesh sidecar carries them. What each open stream
//! costs the replica in RSS and in tasks, and how long after a request's `201` the last of
//! the N streams has the event it caused (`agenda.item.added`).

use super::*;

/// The event a request causes and every stream waits for, as its SSE `event:` line.
const MARKER: &str = "event: agenda.item.added\n";

/// How the bench's readers reach the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// One HTTP/1.1 connection per stream.
    Http1,
    /// HTTP/2 with prior knowledge, [`live_h2::PER_CONNECTION`] streams per connection.
    H2c,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Http1 => "HTTP/1.1",
            Transport::H2c => "h2c",
        }
    }
}

pub(crate) struct LiveResult {
    pub(crate) streams: usize,
    /// RSS the open streams added, per stream.
    pub(crate) kb_per_stream: f64,
    /// Runtime tasks the open streams added, per stream.
    pub(crate) tasks_per_stream: f64,
    /// From a request's 201 to the last stream receiving its event.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) requests: usize,
}

/// Raise this process's open-file limit to its hard limit (the replica it spawns inherits
/// it), and check that `streams` connections on each side fit.
fn raise_file_limit(streams: usize) -> anyhow::Result<()> {
    let got = rlimit::increase_nofile_limit(u64::MAX)?;
    let needed = streams as u64 + 512;
    if got < needed {
        bail!(
            "{streams} streams need {needed} open files per process; the limit is {got} (raise the hard limit: ulimit -Hn)"
        );
    }
    Ok(())
}

/// One stream, read until `count` markers arrived; each arrival is sent on `arrived`. It
/// reads as lean a client as a socket allows (a browser runs on its own machine; here the
/// client shares the replica's two cores, so it should cost as little as it can).
async fn follow(
    addr: std::net::SocketAddr,
    request: Arc<[u8]>,
    opened: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    arrived: tokio::sync::mpsc::UnboundedSender<Instant>,
    count: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let open = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket.write_all(&request).await?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 512];
        // The head, then the first byte of the body (a comment): the stream is open.
        loop {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                bail!("the stream ended before its first byte");
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head, b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "the stream answered {}",
                        String::from_utf8_lossy(&head[..end])
                    );
                }
                if head.len() > end + 4 {
                    return Ok(socket);
                }
            }
        }
    };
    let mut socket = match open.await {
        Ok(socket) => {
            let _ = opened.send(Ok(())).await;
            socket
        }
        Err(e) => {
            let _ = opened.send(Err(e)).await;
            return;
        }
    };
    let mut markers = Markers::default();
    let mut buf = [0u8; 2048];
    while markers.seen < count {
        let Ok(n) = socket.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        markers.feed(&buf[..n], &arrived);
    }
    // Hold the stream until the run ends: 10,000 sockets closing as each sees the last event
    // would land on the server while it still delivers that event to the others.
    std::future::pending::<()>().await;
}

/// Counts the markers in a stream read in pieces, a marker split across two pieces included.
#[derive(Default)]
pub(crate) struct Markers {
    pub(crate) seen: usize,
    /// The end of the last piece that could be the start of a marker.
    carry: Vec<u8>,
}

impl Markers {
    /// Count the markers in `piece`, sending the time it arrived once per marker.
    pub(crate) fn feed(
        &mut self,
        piece: &[u8],
        arrived: &tokio::sync::mpsc::UnboundedSender<Instant>,
    ) {
        let at = Instant::now();
        self.carry.extend_from_slice(piece);
        let mut from = 0;
        while let Some(i) = find(&self.carry[from..], MARKER.as_bytes()) {
            self.seen += 1;
            let _ = arrived.send(at);
            from += i + MARKER.len();
        }
        let keep = (self.carry.len() - from).min(MARKER.len() - 1);
        self.carry.drain(..self.carry.len() - keep);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The replica's `runtime_tasks_alive` gauge.
async fn tasks_alive(base: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("runtime_tasks_alive "))
        .and_then(|v| v.trim().parse().ok())
        .context("the replica's /metrics has no runtime_tasks_alive")
}

pub(crate) async fn live(
    base: &Settings,
    tag: &str,
    streams: usize,
    requests: usize,
    transport: Transport,
) -> anyhow::Result<LiveResult> {
    raise_file_limit(streams)?;
    // Streams spread over viewers, each under the per-user cap (at most 10,000).
    let viewers = streams.div_ceil(1_000).max(1);
    let per_viewer = streams.div_ceil(viewers);
    let dir = tempdir(tag)?;
    let db = |role: Role| format!("sqlite://{}/{}.db", dir.display(), role.name);
    let permission = spawn_role_on(base, &PERMISSION, tag, &db(&PERMISSION)).await?;
    let meeting = spawn_role_on(base, &MEETING, tag, &db(&MEETING)).await?;
    let replica = spawn_role_with(
        base,
        &LIVE,
        tag,
        &db(&LIVE),
        &[
            ("LIVE_STREAM", format!("{tag}-live")),
            ("LIVE_STREAMS_PER_USER", per_viewer.to_string()),
            ("HTTP_MAX_CONNECTIONS", (streams + 64).to_string()),
        ],
    )
    .await?;

    let issue = |user: &str| {
        meeting_events::issue_token(&Secret::new(SECRET), user, Duration::from_secs(3600))
    };
    let token = issue("alice")?;
    let viewer_tokens = (0..viewers)
        .map(|v| issue(&format!("viewer-{v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let api = reqwest::Client::new();
    let r = api
        .post(format!("{}/meetings", meeting.base))
        .bearer_auth(&token)
        .json(&json!({"title": "live bench"}))
        .send()
        .await?;
    if r.status() != 201 {
        bail!("POST /meetings answered {}", r.status());
    }
    let id = r.json::<serde_json::Value>().await?["id"]
        .as_str()
        .context("a meeting id")?
        .to_string();
    // The manager's grant has to reach the meeting role before it takes agenda items.
    let add_item = |n: usize| {
        api.post(format!("{}/meetings/{id}/agenda-items", meeting.base))
            .bearer_auth(&token)
            .json(&json!({"title": format!("item {n}"), "kind": "discussion"}))
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut warm = 0;
    loop {
        let r = add_item(warm).await?;
        if r.status() == 201 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the meeting role did not learn its manager: {}", r.status());
        }
        warm += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_mb = rss_mb(replica.child.id());
    let idle_tasks = tasks_alive(&replica.base).await?;

    // Open the streams, a few hundred connecting at a time (the listen backlog).
    let addr: std::net::SocketAddr = replica
        .base
        .trim_start_matches("http://")
        .parse()
        .context("the replica's address")?;
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(streams);
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(streams);
    let h2 = match transport {
        Transport::Http1 => Vec::new(),
        Transport::H2c => live_h2::connect(addr, streams.div_ceil(live_h2::PER_CONNECTION)).await?,
    };
    let mut open = 0;
    for i in 0..streams {
        let token = &viewer_tokens[i % viewers];
        tasks.push(match transport {
            Transport::Http1 => {
                let request = format!(
                    "GET /live/meetings/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
                );
                tokio::spawn(follow(
                    addr,
                    request.into_bytes().into(),
                    opened_tx.clone(),
                    arrived_tx.clone(),
                    requests,
                ))
            }
            Transport::H2c => tokio::spawn(live_h2::follow(
                h2[i / live_h2::PER_CONNECTION].clone(),
                format!("http://{addr}/live/meetings/{id}"),
                format!("Bearer {token}"),
                opened_tx.clone(),
                arrived_tx.clone(),
                requests,
            )),
        });
        if i + 1 - open >= 256 || i + 1 == streams {
            while open < i + 1 {
                match tokio::time::timeout(Duration::from_secs(60), opened_rx.recv()).await {
                    Ok(Some(Ok(()))) => open += 1,
                    Ok(Some(Err(e))) => return Err(e.context(format!("stream {open}"))),
                    _ => bail!("stream {open} did not open within 60 s"),
                }
            }
        }
    }
    drop(arrived_tx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One request at a time: its 201, then every stream's copy of its event.
    let mut to_last = Vec::with_capacity(requests);
    for n in 0..requests {
        let r = add_item(1000 + n).await?;
        let committed = Instant::now();
        if r.status() != 201 {
            bail!("POST agenda-items answered {}", r.status());
        }
        let mut last = committed;
        for got in 0..streams {
            match tokio::time::timeout(Duration::from_secs(60), arrived_rx.recv()).await {
                Ok(Some(at)) => last = last.max(at),
                _ => bail!("request {n}: only {got} of {streams} streams got its event"),
            }
        }
        to_last.push(last.duration_since(committed).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy_mb = rss_mb(replica.child.id());
    let busy_tasks = tasks_alive(&replica.base).await?;
    for t in &tasks {
        t.abort();
    }
    drop((permission, meeting, replica));
    let _ = std::fs::remove_dir_all(&dir);

    if std::env::var_os("BENCH_LIVE_SERIES").is_some() {
        eprintln!(
            "live {streams} ({}): {:?}",
            transport.name(),
            to_last.iter().map(|v| *v as u32).collect::<Vec<_>>()
        );
    }
    to_last.sort_by(f64::total_cmp);
    let at = |q: f64| to_last[((to_last.len() - 1) as f64 * q).round() as usize];
    Ok(LiveResult {
        streams,
        kb_per_stream: (busy_mb - idle_mb).max(0.0) * 1024.0 / streams as f64,
        tasks_per_stream: (busy_tasks - idle_tasks) / streams as f64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        requests,
    })
}
