//! A real browser for the page tests: Debian's headless Chromium driven through
//! `chromedriver` over WebDriver (fantoccini). `scripts/browser.sh install` (run by `.ci/run`
//! and the test command) puts both on the machine; without them the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use super::{eventually, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One headless Chromium session; the driver and the browser end with it (dropped, the
/// driver's process group is killed, the browser in it).
pub struct Browser {
    /// `None` once the session is closed.
    client: Option<Client>,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run `scripts/browser.sh install` (Debian's chromium and chromium-driver)"
            );
        }
        let port = free_port();
        // A session of its own (so the browser never reaches the caller's terminal), whose
        // process group ends with it, browser included, even on a panic.
        let driver = Command::new("setsid")
            .arg(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("a profile folder");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--window-size=1100,1400".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(Duration::from_secs(20), || {
            let caps = caps.clone();
            let url = url.clone();
            async move {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await
        .expect("chromedriver opens a Chromium session");
        Self {
            client: Some(client),
            driver,
            profile,
        }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("an open session")
    }

    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    /// End the session (the browser quits) within a few seconds; the driver ends on drop.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
        }
    }

    /// Run `script` in the page (a function body; `arguments` holds `args`).
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client()
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("the page ran {script:?}: {e}"))
    }

    /// Wait until `script` returns something truthy; that value.
    pub async fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let found = eventually(timeout, || async {
            let v = self.client().execute(script, vec![]).await.ok()?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            truthy.then_some(v)
        })
        .await;
        match found {
            Some(v) => v,
            None => {
                let shown = self
                    .eval(
                        "return document.body.innerText + '\\n' + JSON.stringify(window.live && window.live.log)",
                        vec![],
                    )
                    .await;
                panic!("the page did not show {what} within {timeout:?}; it shows:\n{shown}")
            }
        }
    }

    /// Type `text` into the element `css` (its old value cleared).
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client()
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        el.clear().await.expect("cleared");
        el.send_keys(text).await.expect("typed");
    }

    pub async fn click(&self, css: &str) {
        self.client()
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// A PNG of the page, kept under `target/browser/` with the test output; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("a screenshot");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
        std::fs::create_dir_all(&dir).expect("the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot written");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs in a session of its own: found by its profile folder.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.profile.path().display().to_string()])
            .status();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}
