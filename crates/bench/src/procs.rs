//! The roles as `app` processes, and what `/proc` says of processes: CPU seconds, RSS.

use super::*;

/// CPU seconds (user + system) a process has used, from /proc (USER_HZ is 100 on Linux).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The processes whose command is `comm` (the broker's Erlang VM, PostgreSQL's backends).
pub(crate) fn pids_of(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where the CPU went during a run: (who, seconds).
pub(crate) struct CpuSplit(pub(crate) Vec<(String, f64)>, pub(crate) f64);

/// Whose CPU is counted: these processes, or every process of a command (read again at each
/// sample, so processes started during the run count too — PostgreSQL's backends).
pub(crate) enum Procs {
    Fixed(Vec<u32>),
    Named(&'static str),
}

impl CpuSplit {
    /// CPU seconds so far of each process of each entry.
    pub(crate) fn sample(who: &[(String, Procs)]) -> Vec<HashMap<u32, f64>> {
        who.iter()
            .map(|(_, procs)| {
                let pids = match procs {
                    Procs::Fixed(pids) => pids.clone(),
                    Procs::Named(comm) => pids_of(comm),
                };
                pids.into_iter().map(|p| (p, cpu_seconds(p))).collect()
            })
            .collect()
    }

    /// The CPU each entry used between two samples.
    pub(crate) fn between(
        who: &[(String, Procs)],
        before: &[HashMap<u32, f64>],
        after: &[HashMap<u32, f64>],
        wall: f64,
    ) -> Self {
        let used = who
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| {
                let secs = a
                    .iter()
                    .map(|(pid, s)| s - b.get(pid).copied().unwrap_or(0.0))
                    .sum();
                (name.clone(), secs)
            })
            .collect();
        CpuSplit(used, wall)
    }
}

/// Run `work`, and the CPU the broker and this process spent on it.
pub(crate) async fn broker_and_client_cpu<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, CpuSplit)> {
    let who: Vec<(String, Procs)> = vec![
        ("broker".into(), Procs::Named("beam.smp")),
        ("client".into(), Procs::Fixed(vec![std::process::id()])),
    ];
    let before = CpuSplit::sample(&who);
    let started = Instant::now();
    let out = work.await?;
    let wall = started.elapsed().as_secs_f64();
    Ok((
        out,
        CpuSplit::between(&who, &before, &CpuSplit::sample(&who), wall),
    ))
}

/// A row of each process's CPU milliseconds per flow.
pub(crate) fn cpu_per_flow_row(name: String, cpu: &CpuSplit, flows: usize) -> Row {
    let per_flow: Vec<String> = cpu
        .0
        .iter()
        .map(|(n, s)| format!("{n} {:.3}", 1000.0 * s / flows as f64))
        .collect();
    Row {
        name,
        result: per_flow.join(", "),
        ratio: None,
        target: "profile".into(),
    }
}

/// A role running as its own process for the chain benchmark.
pub(crate) struct RoleProcess {
    pub(crate) role: Role,
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub(crate) async fn spawn_role(
    base: &Settings,
    role: Role,
    tag: &str,
    dir: &std::path::Path,
) -> anyhow::Result<RoleProcess> {
    let database = format!("sqlite://{}/{}.db", dir.display(), role.name);
    spawn_role_on(base, role, tag, &database).await
}

/// A role as an `app` process with its store at `database`.
pub(crate) async fn spawn_role_on(
    base: &Settings,
    role: Role,
    tag: &str,
    database: &str,
) -> anyhow::Result<RoleProcess> {
    spawn_role_with(base, role, tag, database, &[]).await
}

/// A role as an `app` process with its store at `database` and these variables besides.
pub(crate) async fn spawn_role_with(
    base: &Settings,
    role: Role,
    tag: &str,
    database: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<RoleProcess> {
    spawn_role_logged(base, role, tag, database, extra, None).await
}

/// [`spawn_role_with`], its log (standard error) written to `log` when given.
pub(crate) async fn spawn_role_logged(
    base: &Settings,
    role: Role,
    tag: &str,
    database: &str,
    extra: &[(&str, String)],
    log: Option<&std::path::Path>,
) -> anyhow::Result<RoleProcess> {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::inherit(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(app_bin()?)
        .arg(role.name)
        .env("AMQP_URL", base.mq.url.expose())
        .env("MQ_EXCHANGE", format!("{tag}-events"))
        .env("SERVICE_NAME", format!("{tag}-{}", role.service_name()))
        .env("DATABASE_URL", database)
        .env("AUTH_JWT_SECRET", SECRET)
        .env("HTTP_ADDR", "127.0.0.1")
        .env("HTTP_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("CONFIG_DIR", "/nonexistent")
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    let p = RoleProcess {
        role,
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http
            .get(format!("{}/ready", p.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("{role} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
