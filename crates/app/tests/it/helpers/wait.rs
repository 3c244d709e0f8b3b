//! Waiting for effects that arrive asynchronously, and assertions over HTTP answers.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Poll `f` until it yields `Some`, or give up after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Assert an error answer: the status, the JSON `error` code, and (when given) words the
/// message must contain. `what` names the case in the failure message.
pub fn assert_error(what: &str, answer: &(u16, Value), status: u16, code: &str, words: &[&str]) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{what}: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty(),
        "{what}: error without a message: {body}"
    );
    for word in words {
        assert!(
            message.contains(word),
            "{what}: {message:?} should mention {word:?}"
        );
    }
}
