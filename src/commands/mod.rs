//! The commands of the `app` binary other than the roles themselves.

pub mod bench;
pub mod operator;
pub mod walk;

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{self, ConfigError, Secret, Settings, DEV_JWT_SECRET, PER_ROLE_VARIABLES};
use crate::role::Role;

/// A command's failure, with the exit status it deserves.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad configuration: exit status 2.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Anything else: exit status 1.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 2,
            Failure::Other(_) => 1,
        }
    }
}

async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(settings.http_addr, settings.http_port);
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (HTTP_ADDR/HTTP_PORT): {e}"))
}

/// `app <role>`
pub async fn run_role(role: Role) -> Result<(), Failure> {
    let settings = Settings::from_process_env(role)?;
    settings.jwt_secret()?;
    let listener = bind(&settings).await?;
    crate::roles::run(settings, listener, crate::shutdown::on_signal()).await?;
    Ok(())
}

/// Settings of each role under `app all`: shared variables from the environment, per-role
/// ones from files and defaults, and the development key when no secret is set.
pub fn all_settings(env: &HashMap<String, String>) -> Result<Vec<Settings>, ConfigError> {
    let shared: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| !PER_ROLE_VARIABLES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Role::ALL
        .into_iter()
        .map(|role| {
            let mut s = Settings::load(role, &shared, &config::config_dir())?;
            s.jwt_secret
                .get_or_insert_with(|| Secret::new(DEV_JWT_SECRET));
            Ok(s)
        })
        .collect()
}

/// `app all`
pub async fn run_all() -> Result<(), Failure> {
    let env = config::process_env();
    let ignored: Vec<&str> = PER_ROLE_VARIABLES
        .iter()
        .copied()
        .filter(|v| env.contains_key(*v))
        .collect();
    if !ignored.is_empty() {
        tracing::warn!(
            ?ignored,
            "app all gives each role its own queue, port and store; these variables are ignored"
        );
    }
    if !env.contains_key("AUTH_JWT_SECRET") {
        tracing::warn!(
            "AUTH_JWT_SECRET is unset: using the development key (`app token` signs with it too)"
        );
    }
    let all = all_settings(&env)?;
    let mut listeners = Vec::new();
    for s in &all {
        listeners.push(bind(s).await?);
    }
    let shutdown = crate::shutdown::on_signal();
    let mut tasks = Vec::new();
    for (settings, listener) in all.into_iter().zip(listeners) {
        tasks.push(tokio::spawn(crate::roles::run(
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

/// `app token`
pub fn token(user: &str, ttl: std::time::Duration) -> Result<String, Failure> {
    let user = user.trim();
    if user.is_empty() {
        return Err(anyhow::anyhow!("--user must not be empty").into());
    }
    let settings = Settings::from_process_env(Role::Meeting)?;
    let secret = match settings.jwt_secret {
        Some(s) => s,
        None => {
            eprintln!(
                "note: AUTH_JWT_SECRET is unset; signing with the development key of `app all`"
            );
            Secret::new(DEV_JWT_SECRET)
        }
    };
    Ok(crate::http::auth::issue(&secret, user, ttl)?)
}
