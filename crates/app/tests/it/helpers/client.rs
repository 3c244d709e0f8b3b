//! The HTTP client a test acts through, as one user (or none).

use std::time::Duration;

use serde_json::Value;

use super::SECRET;

pub fn token(user: &str) -> String {
    meeting_events::issue_token(
        &meeting_events::config::Secret::new(SECRET),
        user,
        Duration::from_secs(3600),
    )
    .expect("token")
}

/// A tiny JSON client acting as one user.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn as_user(user: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            token: Some(token(user)),
        }
    }

    pub fn anonymous() -> Self {
        Self {
            http: reqwest::Client::new(),
            token: None,
        }
    }

    pub fn with_token(token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            token: Some(token.to_string()),
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        respond(self.auth(self.http.get(url)).send().await).await
    }

    pub async fn post(&self, url: &str, body: Value) -> (u16, Value) {
        respond(self.auth(self.http.post(url)).json(&body).send().await).await
    }

    /// POST, or `None` when the request could not be sent or answered (a dead server).
    pub async fn try_post(&self, url: &str, body: Value) -> Option<(u16, Value)> {
        let r = self
            .auth(self.http.post(url))
            .json(&body)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post_raw(&self, url: &str, body: &'static str) -> (u16, Value) {
        let rb = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        respond(self.auth(rb).send().await).await
    }

    pub async fn delete(&self, url: &str) -> (u16, Value) {
        respond(self.auth(self.http.delete(url)).send().await).await
    }
}

async fn respond(r: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    let r = r.expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One HTTP request, as data: for tests that run a table of requests.
pub enum Req {
    Get(String),
    Post(String, Value),
    /// A body sent as it is, labelled JSON.
    PostRaw(String, &'static str),
    Delete(String),
}

impl Client {
    pub async fn send(&self, req: &Req) -> (u16, Value) {
        match req {
            Req::Get(url) => self.get(url).await,
            Req::Post(url, body) => self.post(url, body.clone()).await,
            Req::PostRaw(url, body) => self.post_raw(url, body).await,
            Req::Delete(url) => self.delete(url).await,
        }
    }
}
