//! The live benchmark: N open streams of one meeting on one live replica (a fresh process per
//! N). What each open stream costs the replica in RSS, and how long after a request's `201`
//! the last of the N streams has the event it caused (`agenda.item.added`).

use super::*;

/// The event a request causes and every stream waits for, as its SSE `event:` line.
const MARKER: &str = "event: agenda.item.added\n";

pub(crate) struct LiveResult {
    pub(crate) streams: usize,
    /// RSS the open streams added, per stream.
    pub(crate) kb_per_stream: f64,
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

/// One stream, read until `count` markers arrived; each arrival is sent on `arrived`.
async fn follow(
    http: reqwest::Client,
    url: String,
    token: String,
    opened: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    arrived: tokio::sync::mpsc::UnboundedSender<Instant>,
    count: usize,
) {
    let response = match http
        .get(&url)
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => {
            let _ = opened
                .send(Err(anyhow::anyhow!("the stream answered {}", r.status())))
                .await;
            return;
        }
        Err(e) => {
            let _ = opened.send(Err(e.into())).await;
            return;
        }
    };
    let mut response = response;
    // The first byte comes at once (a comment): the stream is open on the replica.
    match response.chunk().await {
        Ok(Some(_)) => {
            let _ = opened.send(Ok(())).await;
        }
        _ => {
            let _ = opened
                .send(Err(anyhow::anyhow!(
                    "the stream ended before its first byte"
                )))
                .await;
            return;
        }
    }
    let mut seen = 0;
    let mut tail = String::new();
    while seen < count {
        let Ok(Some(bytes)) = response.chunk().await else {
            return;
        };
        let at = Instant::now();
        tail.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(i) = tail.find(MARKER) {
            seen += 1;
            let _ = arrived.send(at);
            tail.drain(..i + MARKER.len());
        }
        // Keep only what could be the start of a marker split across reads.
        if tail.len() > MARKER.len() {
            let mut cut = tail.len() - MARKER.len();
            while !tail.is_char_boundary(cut) {
                cut -= 1;
            }
            tail.drain(..cut);
        }
    }
}

pub(crate) async fn live(
    base: &Settings,
    tag: &str,
    streams: usize,
    requests: usize,
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
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
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

    // Open the streams, a few hundred connecting at a time (the listen backlog).
    let url = format!("{}/live/meetings/{id}", replica.base);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(streams);
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(streams);
    let mut open = 0;
    for i in 0..streams {
        tasks.push(tokio::spawn(follow(
            http.clone(),
            url.clone(),
            viewer_tokens[i % viewers].clone(),
            opened_tx.clone(),
            arrived_tx.clone(),
            requests,
        )));
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
    for t in &tasks {
        t.abort();
    }
    drop((permission, meeting, replica));
    let _ = std::fs::remove_dir_all(&dir);

    to_last.sort_by(f64::total_cmp);
    let at = |q: f64| to_last[((to_last.len() - 1) as f64 * q).round() as usize];
    Ok(LiveResult {
        streams,
        kb_per_stream: (busy_mb - idle_mb).max(0.0) * 1024.0 / streams as f64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        requests,
    })
}
