//! The live role's access rules against a real broker (docs/architecture.md §12): the cookie
//! or the bearer and `reauth` before expiry, and the read policy on permission events, a
//! revoke taking effect mid-stream.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::live::{add_item, stream_url, WAIT};

/// A token for `user` that expired a minute ago, signed with the test key.
fn expired_token(user: &str) -> String {
    let now = meeting_events::messaging::unix_seconds();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": now - 60, "iat": now - 120}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn the_stream_takes_a_cookie_or_a_bearer_and_asks_for_reauth_before_expiry() {
    let mut ctx = Ctx::new();
    ctx.extra
        .insert("LIVE_STREAMS_PER_USER".to_string(), "2".to_string());
    let live = Running::spawn(&ctx, &LIVE).await;
    let url = stream_url(&live.base, "m1");

    // No credential, or a bad one: 401 with the JSON reason.
    let none = Sse::open(&url, &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error_body().await["error"], "unauthorized");
    let forged = Sse::open(&url, &[("cookie", "live_session=not.a.token".into())]).await;
    assert_eq!(forged.status, 401);
    let expired_bearer = Sse::open(
        &url,
        &[(
            "authorization",
            format!("Bearer {}", expired_token("alice")),
        )],
    )
    .await;
    assert_eq!(expired_bearer.status, 401);

    // The session sets the cookie, scoped and guarded, no longer than the token.
    let short = meeting_events::issue_token(
        &meeting_events::config::Secret::new(SECRET),
        "alice",
        Duration::from_secs(8),
    )
    .unwrap();
    let session = reqwest::Client::new()
        .post(format!("{}/live/session", live.base))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 200);
    let cookie = session.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for part in ["Path=/live", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let max_age: u64 = cookie
        .split("Max-Age=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(max_age <= 8, "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let no_bearer = reqwest::Client::new()
        .post(format!("{}/live/session", live.base))
        .send()
        .await
        .unwrap();
    assert_eq!(no_bearer.status(), 401);

    // With the cookie the stream opens, and asks for reauth before the token ends.
    let opened = std::time::Instant::now();
    let mut with_cookie = Sse::open(&url, &[("cookie", pair)]).await;
    assert_eq!(with_cookie.status, 200);
    let reauth = with_cookie
        .next(Duration::from_secs(10))
        .await
        .expect("reauth");
    assert_eq!(reauth.event, "reauth");
    assert!(opened.elapsed() < Duration::from_secs(8), "before expiry");
    assert!(with_cookie.wait_end(WAIT).await, "and the stream ends");

    // An expired cookie of ours: reauth at once, not 401 (EventSource would stop for good).
    let mut stale = Sse::open(
        &url,
        &[("cookie", format!("live_session={}", expired_token("alice")))],
    )
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.next(WAIT).await.expect("reauth").event, "reauth");

    // A user holds at most LIVE_STREAMS_PER_USER streams; one follows several meetings.
    let a = Sse::as_user(&format!("{}/live/meetings?ids=m1,m2,m3", live.base), "bob").await;
    let b = Sse::as_user(&url, "bob").await;
    assert_eq!((a.status, b.status), (200, 200));
    let c = Sse::as_user(&url, "bob").await;
    assert_eq!(c.status, 429);
    assert_eq!(c.error_body().await["error"], "too_many");
    drop(a);
    let freed = eventually(WAIT, || async {
        let d = Sse::as_user(&url, "bob").await;
        (d.status == 200).then_some(d)
    })
    .await;
    assert!(freed.is_some(), "a closed stream frees its seat");
    let many = Sse::as_user(&format!("{}/live/meetings?ids=", live.base), "carol").await;
    assert_eq!(many.status, 400);
    live.stop().await.unwrap();
}

#[tokio::test]
async fn permission_events_reach_managers_only_and_a_revoke_takes_effect_mid_stream() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let urls = stack.urls();
    let alice = Client::as_user("alice");
    let meeting = meeting_with_manager(&urls, &alice, "Who sees grants").await;
    let permissions = format!("{}/meetings/{meeting}/permissions", urls.permission);
    let (s, _) = alice
        .post(&permissions, json!({"user_id": "bob", "role": "manager"}))
        .await;
    assert_eq!(s, 201);
    // A grant reached the live role's copy: its event is on the stream, ahead of anything
    // published after this (the permission and meeting roles publish independently, so
    // without this wait a marker may reach the stream before the grant it is meant to follow).
    let live_store = ctx.store(&LIVE).await;
    let copied = |user: &'static str| {
        let (live_store, meeting) = (&live_store, &meeting);
        async move {
            eventually(WAIT, || async {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM grants WHERE meeting_id = $1 AND user_id = $2 AND active = 1",
                )
                .bind(meeting)
                .bind(user)
                .fetch_one(live_store)
                .await
                .ok()?;
                (n == 1).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{user}'s grant copied"))
        }
    };
    copied("bob").await;

    let mut bob = Sse::as_user(&stream_url(&urls.live, &meeting), "bob").await;
    let mut carol = Sse::as_user(&stream_url(&urls.live, &meeting), "carol").await;
    let (s, _) = alice
        .post(&permissions, json!({"user_id": "dave", "role": "manager"}))
        .await;
    assert_eq!(s, 201);
    copied("dave").await;
    add_item(&urls, &alice, &meeting, "Marker one", "discussion").await;
    // (Bob's own grant may reach this replica's stream after he connected: it shows too.)
    let seen = bob.until("agenda.item.added", WAIT).await;
    assert!(
        seen.iter()
            .any(|e| e.event == "permission.granted" && e.data["user_id"] == "dave"),
        "a manager sees the grants: {seen:?}"
    );

    // Bob is revoked; what follows about grants is not his to see any more.
    let (s, _) = alice.delete(&format!("{permissions}/bob/manager")).await;
    assert_eq!(s, 204);
    let (s, _) = alice
        .post(&permissions, json!({"user_id": "erin", "role": "manager"}))
        .await;
    assert_eq!(s, 201);
    copied("erin").await;
    add_item(&urls, &alice, &meeting, "Marker two", "discussion").await;
    let after = bob.until("agenda.item.added", WAIT).await;
    assert!(
        after
            .iter()
            .all(|e| !(e.event == "permission.granted" && e.data["user_id"] == "erin")),
        "a revoked manager saw a later grant: {after:?}"
    );
    assert_eq!(after.last().unwrap().data["title"], "Marker two");

    let everything = carol.until("agenda.item.added", WAIT).await;
    let everything: Vec<SseEvent> = everything
        .into_iter()
        .chain(carol.until("agenda.item.added", WAIT).await)
        .collect();
    assert!(
        everything
            .iter()
            .all(|e| !e.event.starts_with("permission.")),
        "carol manages nothing: {everything:?}"
    );
    assert_eq!(everything.len(), 2, "{everything:?}");
    stack.stop().await;
}
