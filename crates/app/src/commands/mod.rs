//! The commands of the `app` binary: run a role or all of them, sign a token, and the tools
//! in the submodules.

pub mod operator;
pub mod walk;

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use meeting_events::config::{
    self, name_of, ApiOrigin, ConfigError, Secret, Settings, DEV_JWT_SECRET,
};
use meeting_events::roles::{self, Role};

/// A command's failure, with the exit status it deserves.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Bad configuration: exit status 2.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Anything else: exit status 1.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Failure {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 2,
            Failure::Other(_) => 1,
        }
    }
}

async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(settings.http.addr, settings.http.port);
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (HTTP_ADDR/HTTP_PORT): {e}"))
}

/// `app <role>`
pub(crate) async fn run_role(role: Role) -> Result<(), Failure> {
    let settings = Settings::from_process_env(role)?;
    settings.jwt_secret()?;
    let listener = bind(&settings).await?;
    meeting_events::run(settings, listener, meeting_events::shutdown::on_signal()).await?;
    Ok(())
}

/// Settings of each role under `app all`: shared variables from the environment, per-role
/// ones from files and defaults.
pub(crate) fn all_settings(env: &HashMap<String, String>) -> Result<Vec<Settings>, ConfigError> {
    let shared: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| !config::is_per_role(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    roles::ALL
        .iter()
        .map(|role| Settings::load(role, &shared, &config::config_dir()))
        .collect()
}

/// `app all`
pub(crate) async fn run_all(dev: bool) -> Result<(), Failure> {
    let env = config::process_env();
    let ignored: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|name| config::is_per_role(name))
        .collect();
    if !ignored.is_empty() {
        tracing::warn!(
            ?ignored,
            "app all gives each role its own queue, port and store; these variables are ignored"
        );
    }
    let mut all = all_settings(&env)?;
    for s in &mut all {
        if dev {
            development_mode(s);
        } else {
            s.jwt_secret()?;
        }
    }
    one_page(&mut all, &env);
    if dev {
        tracing::warn!(
            "development mode: tokens are signed and checked with the development key (`app token --dev`), \
             and every role listens on 127.0.0.1 only"
        );
    }
    let mut listeners = Vec::new();
    for s in &all {
        listeners.push(bind(s).await?);
    }
    let shutdown = meeting_events::shutdown::on_signal();
    let mut tasks = Vec::new();
    for (settings, listener) in all.into_iter().zip(listeners) {
        tasks.push(tokio::spawn(meeting_events::run(
            settings,
            listener,
            shutdown.clone(),
        )));
    }
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                failure.get_or_insert(e);
            }
            Err(e) => {
                shutdown.cancel();
                failure.get_or_insert(anyhow::anyhow!("a role task failed: {e}"));
            }
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Development mode for one role: the development key when no secret is set, loopback, and
/// the live page's development sign-in.
fn development_mode(s: &mut Settings) {
    s.auth
        .jwt_secret
        .get_or_insert_with(|| Secret::new(DEV_JWT_SECRET));
    s.http.addr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    s.development = true;
}

/// Under `app all` each role has its own port: unless configured, the live role's page
/// reaches each API on its port of the page's host, and the other roles let that page's
/// origins call them (CORS).
fn one_page(all: &mut [Settings], env: &HashMap<String, String>) {
    let Some(live) = all.iter().find(|s| s.role == &roles::LIVE) else {
        return;
    };
    let live_port = live.http.port;
    let ports: Vec<ApiOrigin> = all
        .iter()
        .filter(|s| s.role != &roles::LIVE)
        .map(|s| ApiOrigin {
            role: s.role,
            origin: format!(":{}", s.http.port),
        })
        .collect();
    let page_origins: Vec<String> = ["127.0.0.1", "localhost"]
        .iter()
        .map(|host| format!("http://{host}:{live_port}"))
        .collect();
    for s in all.iter_mut() {
        if s.role == &roles::LIVE {
            if !env.contains_key(name_of("live.api_origins")) {
                s.live.api_origins = ports.clone();
            }
        } else if !env.contains_key(name_of("http.cors_allowed_origins")) {
            s.http.cors_allowed_origins = page_origins.clone();
        }
    }
}

/// The signing key for a client command: AUTH_JWT_SECRET, or with `--dev` the development
/// key when it is unset.
pub(crate) fn client_secret(settings: &Settings, dev: bool) -> Result<Secret, Failure> {
    match (&settings.auth.jwt_secret, dev) {
        (Some(secret), _) => Ok(secret.clone()),
        (None, true) => Ok(Secret::new(DEV_JWT_SECRET)),
        (None, false) => Err(settings.jwt_secret().unwrap_err().into()),
    }
}

/// The OpenAPI document of every role's API, as one origin (the Ingress) serves them.
pub(crate) fn openapi() -> Result<String, Failure> {
    use meeting_events::roles::{ELECTION, LIVE, MEETING, PERMISSION, VOTING};
    Ok(meeting_events::roles::openapi_json(&[
        &MEETING,
        &ELECTION,
        &VOTING,
        &PERMISSION,
        &LIVE,
    ])?)
}

/// `app token`
pub(crate) fn token(user: &str, ttl: std::time::Duration, dev: bool) -> Result<String, Failure> {
    let user = user.trim();
    if user.is_empty() {
        return Err(anyhow::anyhow!("--user must not be empty").into());
    }
    let settings = Settings::shared_from_process_env()?;
    let secret = client_secret(&settings, dev)?;
    Ok(meeting_events::issue_token(&secret, user, ttl)?)
}
