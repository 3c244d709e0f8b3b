//! Roles under test: inside the test process on port 0 ([`Running`], [`Stack`]), or as
//! `app` child processes ([`spawn_process`]), and where they answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meeting_events::Settings;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    eventually, quiet_logs, Client, Ctx, Role, ELECTION, LIVE, MEETING, PERMISSION, VOTING,
};

/// A role running inside the test process.
pub struct Running {
    pub role: Role,
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn spawn(ctx: &Ctx, role: Role) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::spawn_on(role, ctx.settings(role), listener).await
    }

    /// The role with these settings, on this listener (a port a page already knows).
    pub async fn spawn_on(role: Role, settings: Settings, listener: TcpListener) -> Self {
        quiet_logs();
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(meeting_events::run(settings, listener, shutdown.clone()));
        let running = Self {
            role,
            base: format!("http://{addr}"),
            shutdown,
            task,
        };
        running.wait_ready().await;
        running
    }

    pub async fn wait_ready(&self) {
        assert!(
            wait_ready_at(&self.base, Duration::from_secs(20)).await,
            "{} did not become ready",
            self.role
        );
    }

    /// `/ready` answers 200 within `timeout`.
    pub async fn wait_ready_within(&self, timeout: Duration) -> bool {
        wait_ready_at(&self.base, timeout).await
    }

    /// Stop the role; every stage of its shutdown is bounded, so 60 s is a hang.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 60 s", self.role))
            .expect("role task")
    }
}

/// Where each role answers.
pub struct Urls {
    pub meeting: String,
    pub election: String,
    pub voting: String,
    pub permission: String,
    pub live: String,
}

/// All five roles of one test.
pub struct Stack {
    pub meeting: Running,
    pub election: Running,
    pub voting: Running,
    pub permission: Running,
    pub live: Running,
}

impl Stack {
    pub async fn start(ctx: &Ctx) -> Self {
        // Consumers first: their queues exist before anything is published.
        let (permission, live, election, voting, meeting) = tokio::join!(
            Running::spawn(ctx, &PERMISSION),
            Running::spawn(ctx, &LIVE),
            Running::spawn(ctx, &ELECTION),
            Running::spawn(ctx, &VOTING),
            Running::spawn(ctx, &MEETING),
        );
        Self {
            meeting,
            election,
            voting,
            permission,
            live,
        }
    }

    pub fn urls(&self) -> Urls {
        Urls {
            meeting: self.meeting.base.clone(),
            election: self.election.base.clone(),
            voting: self.voting.base.clone(),
            permission: self.permission.base.clone(),
            live: self.live.base.clone(),
        }
    }

    pub async fn stop(self) {
        for r in [
            self.meeting,
            self.election,
            self.voting,
            self.permission,
            self.live,
        ] {
            r.stop().await.expect("clean stop");
        }
    }
}

/// The built `app` binary.
pub fn app_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_app"))
}

/// `app <role>` as a child process with this test's environment and the given port.
pub fn spawn_process(ctx: &Ctx, role: Role, port: u16) -> Child {
    process_command(ctx, role, port)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn app")
}

/// A role as a child process whose log (JSON lines) goes to `log`.
pub fn spawn_process_logging_to(ctx: &Ctx, role: Role, port: u16, log: &std::path::Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    process_command(ctx, role, port)
        .env("LOG_FORMAT", "json")
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn app")
}

fn process_command(ctx: &Ctx, role: Role, port: u16) -> Command {
    let mut env = ctx.env(role);
    env.insert("HTTP_PORT".into(), port.to_string());
    let mut command = Command::new(app_bin());
    command
        .arg(role.name)
        .env_clear()
        .envs(env)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("CONFIG_DIR", "/nonexistent")
        .stdout(Stdio::null());
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A role's `/metrics`, as Prometheus scrapes it.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scraped")
        .text()
        .await
        .expect("a text body")
}

pub async fn wait_ready_at(base: &str, timeout: Duration) -> bool {
    let url = format!("{base}/ready");
    eventually(timeout, || async {
        reqwest::get(&url)
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await
    .is_some()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Create a meeting as `user` and wait until the meeting service knows its manager.
pub async fn meeting_with_manager(urls: &Urls, user: &Client, title: &str) -> String {
    let (status, body) = user
        .post(
            &format!("{}/meetings", urls.meeting),
            serde_json::json!({"title": title}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let url = format!("{}/meetings/{id}", urls.meeting);
    eventually(Duration::from_secs(10), || async {
        let (_, m) = user.get(&url).await;
        (!m["managers"].as_array()?.is_empty()).then_some(())
    })
    .await
    .expect("manager granted through permission-service");
    id
}
