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
    /// Each role's mean wait from an event's write to its confirm in the full-concurrency
    /// run, in milliseconds.
    pub(crate) relay_wait_ms: Vec<(String, f64)>,
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
    new_database(pg, &format!("{}_{}", tag.replace('-', "_"), role.name)).await
}

/// Create database `name` on the PostgreSQL instance of `pg`; its URL.
pub(crate) async fn new_database(pg: &str, name: &str) -> anyhow::Result<String> {
    sqlx::any::install_default_drivers();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(pg).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = &pg[..pg
        .rfind('/')
        .context("the PostgreSQL URL names a database")?];
    Ok(format!("{base}/{name}"))
}

/// Where replica `i` of `role` writes its log, when the rig keeps logs.
pub(crate) fn log_path(dir: &std::path::Path, role: Role, i: usize) -> std::path::PathBuf {
    dir.join(format!("{}-{i}.log", role.name))
}

/// The chain's roles running, a tap on `permission.granted`, and the HTTP client that
/// starts flows: what the timed runs and the cost count share.
pub(crate) struct Rig {
    pub(crate) meetings: Vec<RoleProcess>,
    pub(crate) permissions: Vec<RoleProcess>,
    dir: std::path::PathBuf,
    conn: Connection,
    watcher: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    notify: Arc<tokio::sync::Notify>,
    http: reqwest::Client,
    token: String,
    next: std::sync::atomic::AtomicUsize,
}

impl Rig {
    /// Start the roles of `setup` (with `extra` variables, their logs in `logs` when given)
    /// and the tap.
    pub(crate) async fn start(
        base: &Settings,
        tag: &str,
        args: &BenchArgs,
        setup: &Setup,
        extra: &[(&str, String)],
        logs: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempdir(tag)?;
        let (permission_db, meeting_db) = (
            store_for(setup, &dir, tag, &PERMISSION).await?,
            store_for(setup, &dir, tag, &MEETING).await?,
        );
        let mut extra = extra.to_vec();
        if let Some(url) = &setup.traced {
            extra.push(("OTEL_EXPORTER_OTLP_ENDPOINT", url.clone()));
            extra.push(("OTEL_TRACES_SAMPLER", "always_on".to_string()));
        }
        let (mut permissions, mut meetings) = (Vec::new(), Vec::new());
        for i in 0..setup.replicas {
            for (role, db, started) in [
                (&PERMISSION, &permission_db, &mut permissions),
                (&MEETING, &meeting_db, &mut meetings),
            ] {
                let log = logs.then(|| log_path(&dir, role, i));
                started.push(spawn_role_logged(base, role, tag, db, &extra, log.as_deref()).await?);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Watch permission.granted: meeting_id → when it was seen.
        let conn =
            Connection::connect(base.mq.url.expose(), ConnectionProperties::default()).await?;
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
        Ok(Self {
            meetings,
            permissions,
            dir,
            conn,
            watcher,
            seen,
            notify,
            http,
            token,
            next: Default::default(),
        })
    }

    /// `POST /meetings` on the next meeting replica: the meeting's id and when it was sent.
    fn post(&self) -> impl std::future::Future<Output = anyhow::Result<(String, Instant)>> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{}/meetings", self.meetings[i % self.meetings.len()].base);
        let (http, token) = (self.http.clone(), self.token.clone());
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
            Ok((v["id"].as_str().unwrap_or_default().to_string(), started))
        }
    }

    /// `flows` flows with `concurrency` requests in flight, each to its grant: flows per
    /// second from the first request to the last grant.
    pub(crate) async fn burst(&self, flows: usize, concurrency: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut tasks = FuturesUnordered::new();
        let mut ids = Vec::with_capacity(flows);
        let mut issued = 0;
        while issued < flows || !tasks.is_empty() {
            while issued < flows && tasks.len() < concurrency {
                tasks.push(tokio::spawn(self.post()));
                issued += 1;
            }
            if let Some(r) = tasks.next().await {
                ids.push(r??.0);
            }
        }
        self.wait_all(&ids).await?;
        let seen = self.seen.lock().await;
        let last = ids
            .iter()
            .filter_map(|id| seen.get(id).copied())
            .max()
            .unwrap_or_else(Instant::now);
        Ok(flows as f64 / (last - started).as_secs_f64())
    }

    /// Until every one of `ids` was granted (two minutes at most).
    async fn wait_all(&self, ids: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let notified = self.notify.notified();
            let all = {
                let seen = self.seen.lock().await;
                ids.iter().all(|id| seen.contains_key(id))
            };
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for permission.granted");
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }

    /// Flows started at `rate` per second for `length`: each one's latency from its request
    /// to its grant, in milliseconds, sorted.
    async fn paced(&self, rate: u32, length: Duration) -> anyhow::Result<Vec<f64>> {
        let total = (rate as f64 * length.as_secs_f64()).round() as usize;
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut handles = Vec::with_capacity(total);
        for _ in 0..total {
            ticker.tick().await;
            handles.push(tokio::spawn(self.post()));
        }
        let mut starts = Vec::with_capacity(total);
        for h in handles {
            starts.push(h.await??);
        }
        let ids: Vec<String> = starts.iter().map(|(id, _)| id.clone()).collect();
        self.wait_all(&ids).await?;
        let seen = self.seen.lock().await;
        let mut lat: Vec<f64> = starts
            .iter()
            .filter_map(|(id, t)| seen.get(id).map(|s| (*s - *t).as_secs_f64() * 1000.0))
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        Ok(lat)
    }

    /// Whose CPU a run counts: the broker, each role, this process, and PostgreSQL.
    fn cpu_owners(&self, postgres: bool) -> Vec<(String, Procs)> {
        let pids = |ps: &[RoleProcess]| Procs::Fixed(ps.iter().map(|p| p.child.id()).collect());
        let mut who: Vec<(String, Procs)> = vec![
            ("broker".into(), Procs::Named("beam.smp")),
            ("meeting-service".into(), pids(&self.meetings)),
            ("permission-service".into(), pids(&self.permissions)),
            (
                "bench client".into(),
                Procs::Fixed(vec![std::process::id()]),
            ),
        ];
        if postgres {
            who.push(("PostgreSQL".into(), Procs::Named("postgres")));
        }
        who
    }

    /// The RSS of the first meeting and permission replicas, in MB.
    fn rss(&self) -> Vec<(String, f64)> {
        [&self.meetings[0], &self.permissions[0]]
            .iter()
            .map(|p| (p.role.service_name().to_string(), rss_mb(p.child.id())))
            .collect()
    }

    /// Each role's `outbox_publish_wait_seconds` so far: (sum, count), replicas together.
    async fn relay_waits(&self) -> anyhow::Result<Vec<(String, (f64, f64))>> {
        let http = reqwest::Client::new();
        let mut waits = Vec::new();
        for (name, ps) in [
            ("meeting-service", &self.meetings),
            ("permission-service", &self.permissions),
        ] {
            let m = scrape_all(&http, ps).await?;
            let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
            waits.push((
                name.to_string(),
                (
                    get("outbox_publish_wait_seconds_sum"),
                    get("outbox_publish_wait_seconds_count"),
                ),
            ));
        }
        Ok(waits)
    }

    /// Where the roles write their logs and stores.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(crate) async fn stop(self) {
        self.watcher.abort();
        let _ = self.conn.close(200, "bench done".into()).await;
        drop(self.meetings);
        drop(self.permissions);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) async fn chain(
    base: &Settings,
    tag: &str,
    args: &BenchArgs,
    setup: &Setup,
) -> anyhow::Result<ChainResult> {
    let rig = Rig::start(base, tag, args, setup, &[], false).await?;
    let idle = rig.rss();

    // Full concurrency.
    let who = rig.cpu_owners(setup.postgres.is_some());
    let waits_before = rig.relay_waits().await?;
    let cpu_before = CpuSplit::sample(&who);
    let started = Instant::now();
    let flows_per_sec = rig.burst(args.flows, args.concurrency).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = CpuSplit::sample(&who);
    let relay_wait_ms = rig
        .relay_waits()
        .await?
        .into_iter()
        .zip(waits_before)
        .map(|((name, (sum, n)), (_, (sum0, n0)))| {
            (name, 1000.0 * (sum - sum0) / (n - n0).max(1.0))
        })
        .collect();
    let cpu = CpuSplit::between(&who, &cpu_before, &cpu_after, wall);

    // Paced.
    let lat = rig.paced(args.rate, args.paced_for).await?;
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let memory = idle
        .into_iter()
        .zip(rig.rss())
        .map(|((name, i), (_, a))| (name, i, a))
        .collect();
    let result = ChainResult {
        cpu,
        flows_per_sec,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *lat.last().unwrap_or(&f64::NAN),
        memory,
        relay_wait_ms,
    };
    rig.stop().await;
    Ok(result)
}
