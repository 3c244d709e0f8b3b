//! The chain benchmark: POST /meetings → meeting.created → permission-service →
//! permission.granted on the bus, at full concurrency and at a paced rate.

use super::*;

pub(crate) struct ChainResult {
    pub(crate) cpu: CpuSplit,
    pub(crate) flows_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) memory: Vec<(String, f64, f64)>,
}

/// POST /meetings → meeting.created → permission-service → permission.granted on the bus.
/// Where the chain's roles keep their stores, and how many replicas of each run.
pub(crate) struct Setup {
    pub(crate) label: &'static str,
    pub(crate) postgres: Option<String>,
    pub(crate) replicas: usize,
    /// Export every span (sampling 1.0) to this OTLP/HTTP receiver.
    pub(crate) traced: Option<String>,
}

/// A stand-in trace collector: takes `POST /v1/traces` and answers 200, counting requests
/// and bytes, so the roles pay the whole cost of exporting.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) requests: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let requests: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let bytes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (r, b) = (requests.clone(), bytes.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                r.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                async { axum::http::StatusCode::OK }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            requests,
            bytes,
        })
    }
}

/// The store URL of `role` in `setup`: a SQLite file in `dir`, or a new database.
pub(crate) async fn store_for(
    setup: &Setup,
    dir: &std::path::Path,
    tag: &str,
    role: Role,
) -> anyhow::Result<String> {
    let Some(pg) = &setup.postgres else {
        return Ok(format!("sqlite://{}/{}.db", dir.display(), role.name));
    };
    sqlx::any::install_default_drivers();
    let name = format!("{}_{}", tag.replace('-', "_"), role.name);
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(pg).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = &pg[..pg
        .rfind('/')
        .context("the PostgreSQL URL names a database")?];
    Ok(format!("{base}/{name}"))
}

pub(crate) async fn chain(
    base: &Settings,
    tag: &str,
    args: &BenchArgs,
    setup: &Setup,
) -> anyhow::Result<ChainResult> {
    let dir = tempdir(tag)?;
    let mut permissions = Vec::new();
    let mut meetings = Vec::new();
    let (permission_db, meeting_db) = (
        store_for(setup, &dir, tag, &PERMISSION).await?,
        store_for(setup, &dir, tag, &MEETING).await?,
    );
    let tracing: Vec<(&str, String)> = match &setup.traced {
        Some(url) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.clone()),
            ("OTEL_TRACES_SAMPLER", "always_on".to_string()),
        ],
        None => Vec::new(),
    };
    for _ in 0..setup.replicas {
        permissions.push(spawn_role_with(base, &PERMISSION, tag, &permission_db, &tracing).await?);
        meetings.push(spawn_role_with(base, &MEETING, tag, &meeting_db, &tracing).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (meeting, permission) = (&meetings[0], &permissions[0]);
    let idle: Vec<f64> = [meeting, permission]
        .iter()
        .map(|p| rss_mb(p.child.id()))
        .collect();

    // Watch permission.granted: meeting_id → when it was seen.
    let conn = Connection::connect(base.mq.url.expose(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut consumer =
        topology::tap(&ch, &format!("{tag}-events"), &["permission.granted"]).await?;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let (seen, notify) = (seen.clone(), notify.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let at = Instant::now();
                if let Ok(env) = Envelope::from_bytes(&d.data) {
                    if let Some(id) = env.data["meeting_id"].as_str() {
                        seen.lock().await.insert(id.to_string(), at);
                        notify.notify_waiters();
                    }
                }
            }
        })
    };

    let token =
        meeting_events::issue_token(&Secret::new(SECRET), "alice", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let post = {
        let (http, token) = (http.clone(), token.clone());
        let urls: Vec<String> = meetings
            .iter()
            .map(|m| format!("{}/meetings", m.base))
            .collect();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move || {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (http, token, url) = (http.clone(), token.clone(), urls[i % urls.len()].clone());
            async move {
                let started = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"title": "bench"}))
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("POST /meetings answered {}", r.status());
                }
                let v: serde_json::Value = r.json().await?;
                Ok::<_, anyhow::Error>((v["id"].as_str().unwrap_or_default().to_string(), started))
            }
        }
    };
    let wait_all = |ids: Vec<String>| {
        let (seen, notify) = (seen.clone(), notify.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let notified = notify.notified();
                if ids
                    .iter()
                    .all(|id| seen.try_lock().map(|s| s.contains_key(id)).unwrap_or(false))
                {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for permission.granted");
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
            }
        }
    };

    // Full concurrency.
    let mut who: Vec<(String, Procs)> = vec![
        ("broker".into(), Procs::Named("beam.smp")),
        (
            "meeting-service".into(),
            Procs::Fixed(meetings.iter().map(|m| m.child.id()).collect()),
        ),
        (
            "permission-service".into(),
            Procs::Fixed(permissions.iter().map(|p| p.child.id()).collect()),
        ),
        (
            "bench client".into(),
            Procs::Fixed(vec![std::process::id()]),
        ),
    ];
    if setup.postgres.is_some() {
        who.push(("PostgreSQL".into(), Procs::Named("postgres")));
    }
    let cpu_before = CpuSplit::sample(&who);
    let started = Instant::now();
    let mut tasks = FuturesUnordered::new();
    let mut ids = Vec::with_capacity(args.flows);
    let mut issued = 0;
    while issued < args.flows || !tasks.is_empty() {
        while issued < args.flows && tasks.len() < args.concurrency {
            tasks.push(tokio::spawn(post()));
            issued += 1;
        }
        if let Some(r) = tasks.next().await {
            ids.push(r??.0);
        }
    }
    wait_all(ids.clone()).await?;
    let last = {
        seen.lock()
            .await
            .iter()
            .filter(|(k, _)| ids.contains(k))
            .map(|(_, t)| *t)
            .max()
            .unwrap_or_else(Instant::now)
    };
    let flows_per_sec = args.flows as f64 / (last - started).as_secs_f64();
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = CpuSplit::sample(&who);
    let cpu = CpuSplit::between(&who, &cpu_before, &cpu_after, wall);

    // Paced.
    let total = (args.rate as f64 * args.paced_for.as_secs_f64()).round() as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        handles.push(tokio::spawn(post()));
    }
    let mut starts = Vec::with_capacity(total);
    for h in handles {
        starts.push(h.await??);
    }
    wait_all(starts.iter().map(|(id, _)| id.clone()).collect()).await?;
    let seen_now = seen.lock().await;
    let mut lat: Vec<f64> = starts
        .iter()
        .filter_map(|(id, t)| seen_now.get(id).map(|s| (*s - *t).as_secs_f64() * 1000.0))
        .collect();
    drop(seen_now);
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];

    let after: Vec<f64> = [meeting, permission]
        .iter()
        .map(|p| rss_mb(p.child.id()))
        .collect();
    watcher.abort();
    let _ = conn.close(200, "bench done".into()).await;
    let memory = [meeting, permission]
        .iter()
        .zip(idle.iter().zip(after))
        .map(|(p, (i, a))| (p.role.service_name().to_string(), *i, a))
        .collect();
    let result = ChainResult {
        cpu,
        flows_per_sec,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *lat.last().unwrap_or(&f64::NAN),
        memory,
    };
    drop(meetings);
    drop(permissions);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}
