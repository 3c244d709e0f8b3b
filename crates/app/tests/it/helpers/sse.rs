//! A server-sent-events client for the live role's streams, reading frames as a browser's
//! `EventSource` parses them.

use std::time::Duration;

use serde_json::Value;

use super::Bus;

/// One message of a stream.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// An open stream.
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    response: Option<reqwest::Response>,
    buffer: String,
    /// The last `id:` seen, with or without data (what `Last-Event-ID` would send).
    pub last_id: Option<String>,
    /// Every `retry:` value seen.
    pub retries: Vec<u64>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    pub ended: bool,
}

impl Sse {
    /// `GET url` with the given headers; the body is read as events only on a 200.
    pub async fn open(url: &str, headers: &[(&str, String)]) -> Self {
        let mut request = reqwest::Client::new().get(url);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await.expect("the live role answers");
        let status = response.status().as_u16();
        Self {
            status,
            headers: response.headers().clone(),
            response: Some(response),
            buffer: String::new(),
            last_id: None,
            retries: Vec::new(),
            comments: 0,
            ended: false,
        }
    }

    /// With a user's bearer token.
    pub async fn as_user(url: &str, user: &str) -> Self {
        Self::open(
            url,
            &[("authorization", format!("Bearer {}", super::token(user)))],
        )
        .await
    }

    /// The body of a refused stream, as JSON.
    pub async fn error_body(mut self) -> Value {
        let text = self
            .response
            .take()
            .expect("a response")
            .text()
            .await
            .unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    /// The next message with data, within `timeout`; `None` on timeout or end.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let response = self.response.as_mut()?;
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// Messages until one of type `event` (included), within `timeout`.
    pub async fn until(&mut self, event: &str, timeout: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => {
                    let done = e.event == event;
                    got.push(e);
                    if done {
                        return got;
                    }
                }
                None => panic!(
                    "no {event} within {timeout:?}; got {:?}",
                    got.iter().map(|e| e.event.as_str()).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Everything that arrives within `period`.
    pub async fn collect_for(&mut self, period: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + period;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return got;
            }
            match self.next(left).await {
                Some(e) => got.push(e),
                None => return got,
            }
        }
    }

    /// Read until the server ends the stream, within `timeout`: whether it did.
    pub async fn wait_end(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ended {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.next(left).await;
        }
        true
    }

    /// One complete message out of the buffer, as the SSE parsing rules read it.
    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer[..end].to_string();
            self.buffer.drain(..end + 2);
            let (mut id, mut event, mut data) = (None, None, Vec::new());
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_string()),
                    "event" => event = Some(value.to_string()),
                    "data" => data.push(value.to_string()),
                    "retry" => self.retries.extend(value.parse::<u64>().ok()),
                    _ => {}
                }
            }
            if id.is_some() {
                self.last_id = id.clone();
            }
            if data.is_empty() {
                continue;
            }
            let text = data.join("\n");
            return Some(SseEvent {
                id,
                event: event.unwrap_or_else(|| "message".into()),
                data: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            });
        }
    }
}

/// Publish `n` `agenda.item.added` events of `meeting` with 10 KB titles, as its meeting
/// service would: far more than the socket buffers to a stream hold.
pub async fn publish_big_items(bus: &Bus, meeting: &str, n: i64) {
    let title = "x".repeat(10_000);
    for i in 0..n {
        let env = meeting_events::envelope::Envelope::new(
            &meeting_events::events::Event::AgendaItemAdded(
                meeting_events::events::AgendaItemAdded {
                    meeting_id: meeting.into(),
                    agenda_item_id: format!("item-{i}"),
                    position: i + 1,
                    title: title.clone(),
                    kind: meeting_events::domain::ItemKind::Discussion,
                },
            ),
            "meeting-service",
        );
        bus.publish(&env).await;
    }
}
