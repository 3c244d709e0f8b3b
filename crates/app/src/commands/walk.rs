//! `app walk`: carry one meeting through the whole chain against running services, printing
//! each step and every event that passes on the bus. The main job's visible half.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};

use meeting_events::config::{Secret, Settings};
use meeting_events::envelope::Envelope;
use meeting_events::roles::{self, Role, ELECTION, MEETING, PERMISSION, VOTING};

/// Where the services answer.
#[derive(Debug, clap::Args)]
pub struct WalkArgs {
    /// A role's base URL, as ROLE=URL (repeatable); a role not given answers on
    /// http://127.0.0.1:<its default port>.
    #[arg(long = "url", value_name = "ROLE=URL", value_parser = role_url)]
    pub urls: Vec<(Role, String)>,
    /// Sign with the development key of `app all --dev` when AUTH_JWT_SECRET is unset.
    #[arg(long)]
    pub dev: bool,
    /// How long to wait for each step's effect.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
}

fn role_url(arg: &str) -> Result<(Role, String), String> {
    let (name, url) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not ROLE=URL"))?;
    Ok((roles::find(name)?, url.trim_end_matches('/').to_string()))
}

impl WalkArgs {
    /// The base URL of `role`.
    fn url(&self, role: Role) -> String {
        self.urls
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, url)| url.clone())
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", role.default_port))
    }
}

struct Api {
    http: reqwest::Client,
    secret: Secret,
    timeout: Duration,
}

impl Api {
    async fn call(
        &self,
        user: &str,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let token = meeting_events::issue_token(&self.secret, user, Duration::from_secs(3600))?;
        let mut rb = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn get(&self, user: &str, url: &str) -> anyhow::Result<Value> {
        let (s, v) = self.call(user, reqwest::Method::GET, url, None).await?;
        if s != 200 {
            bail!("GET {url} answered {s}: {v}");
        }
        Ok(v)
    }

    async fn post(&self, user: &str, url: &str, body: Value, expect: u16) -> anyhow::Result<Value> {
        let (s, v) = self
            .call(user, reqwest::Method::POST, url, Some(body))
            .await?;
        if s != expect {
            bail!("POST {url} answered {s}, expected {expect}: {v}");
        }
        Ok(v)
    }

    /// Poll `f` until it yields something, within the step timeout.
    async fn until<T, F, Fut>(&self, what: &str, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The `id` of the first element of a JSON list, if any.
fn first_id(list: &Value) -> Option<String> {
    list.as_array()?.first()?["id"].as_str().map(String::from)
}

fn step(started: Instant, text: &str) {
    println!("[{:>6.3}s] ▶ {text}", started.elapsed().as_secs_f64());
}

/// Print every event on the exchange as it passes.
async fn watch_bus(settings: &Settings, started: Instant) -> anyhow::Result<Connection> {
    let conn = Connection::connect(settings.mq.url.expose(), ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {}", settings.mq.url))?;
    let ch = conn.create_channel().await?;
    meeting_events::messaging::topology::declare_exchange(&ch, &settings.mq).await?;
    let mut consumer =
        meeting_events::messaging::topology::tap(&ch, &settings.mq.exchange, &["#"]).await?;
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            match Envelope::from_bytes(&d.data) {
                Ok(e) => println!(
                    "[{:>6.3}s]     ⇢ event {:<24} from {:<20} {}",
                    started.elapsed().as_secs_f64(),
                    e.event_type,
                    e.producer,
                    e.data
                ),
                Err(err) => println!(
                    "[{:>6.3}s]     ⇢ unreadable message: {err}",
                    started.elapsed().as_secs_f64()
                ),
            }
        }
    });
    Ok(conn)
}

/// `app walk`
pub(crate) async fn run(args: WalkArgs) -> Result<(), super::Failure> {
    let settings = Settings::shared_from_process_env()?;
    let secret = super::client_secret(&settings, args.dev)?;
    let api = Api {
        http: reqwest::Client::new(),
        secret,
        timeout: args.step_timeout,
    };
    let started = Instant::now();
    let (m, e, v) = (
        &args.url(&MEETING),
        &args.url(&ELECTION),
        &args.url(&VOTING),
    );

    step(started, "waiting for the services to be ready");
    for base in roles::ALL.iter().map(|r| args.url(r)) {
        let url = format!("{base}/ready");
        api.until(&url, || async {
            Ok(api
                .http
                .get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ()))
        })
        .await?;
    }
    let _bus = watch_bus(&settings, started).await?;

    step(started, "alice creates a meeting");
    let meeting = api
        .post(
            "alice",
            &format!("{m}/meetings"),
            json!({"title": "Board meeting"}),
            201,
        )
        .await?;
    let mid = meeting["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no meeting id"))?
        .to_string();
    api.until("alice to become manager", || async {
        let m = api.get("alice", &format!("{m}/meetings/{mid}")).await?;
        Ok(m["managers"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|_| ()))
    })
    .await?;
    step(
        started,
        &format!(
            "{} made alice manager of meeting {mid}",
            PERMISSION.service_name()
        ),
    );

    step(
        started,
        "alice adds the election item \"Chair\" and opens it",
    );
    let item = api
        .post(
            "alice",
            &format!("{m}/meetings/{mid}/agenda-items"),
            json!({"title": "Chair", "kind": "election"}),
            201,
        )
        .await?;
    let iid = item["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no item id"))?
        .to_string();
    api.post(
        "alice",
        &format!("{m}/meetings/{mid}/agenda-items/{iid}/open"),
        json!({}),
        200,
    )
    .await?;
    let eid = api
        .until("the election to open nominations", || async {
            let list = api
                .get(
                    "alice",
                    &format!("{e}/elections?meeting_id={mid}&agenda_item_id={iid}"),
                )
                .await?;
            Ok(first_id(&list))
        })
        .await?;
    step(started, &format!("election {eid} is nominating"));

    // A manager nominates anyone; everybody else only themselves.
    for (by, candidate) in [("alice", "ada"), ("alice", "grace"), ("linus", "linus")] {
        step(started, &format!("{by} nominates {candidate}"));
        api.post(
            by,
            &format!("{e}/elections/{eid}/nominations"),
            json!({"candidate": candidate}),
            201,
        )
        .await?;
    }

    step(started, "alice starts the election");
    api.post(
        "alice",
        &format!("{m}/meetings/{mid}/agenda-items/{iid}/start-election"),
        json!({}),
        200,
    )
    .await?;
    let bid = api
        .until("the ballot to open", || async {
            let list = api
                .get("alice", &format!("{v}/ballots?election_id={eid}"))
                .await?;
            Ok(first_id(&list))
        })
        .await?;
    step(started, &format!("ballot {bid} is open"));

    for (who, choice) in [("alice", "ada"), ("bob", "ada"), ("carol", "grace")] {
        step(started, &format!("{who} votes for {choice}"));
        api.post(
            who,
            &format!("{v}/ballots/{bid}/votes"),
            json!({"choice": choice}),
            201,
        )
        .await?;
    }

    step(started, "alice closes the ballot");
    let closed = api
        .post("alice", &format!("{v}/ballots/{bid}/close"), json!({}), 200)
        .await?;
    step(started, &format!("tally {}", closed["tally"]));

    let result = api
        .until("the result on the agenda item", || async {
            let meeting = api.get("alice", &format!("{m}/meetings/{mid}")).await?;
            let item = meeting["agenda"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["id"] == iid.as_str()))
                .cloned();
            Ok(item
                .filter(|i| i["status"] == "done")
                .map(|i| i["result"].clone()))
        })
        .await?;
    step(
        started,
        &format!(
            "the meeting's agenda item \"Chair\" is done: {} {}",
            result["outcome"], result["winners"]
        ),
    );
    // Let the last event's line print before the bus connection goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("walk complete in {:.2}s", started.elapsed().as_secs_f64());
    println!(
        "watch it live (sign in as alice): {}/live/#{mid}",
        args.url(&roles::LIVE)
    );
    Ok(())
}
