//! Every error status the design names, with its JSON body.

use serde_json::{json, Value};

use crate::helpers::*;

fn assert_error(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

#[tokio::test]
async fn each_error_status_comes_with_a_json_reason() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let (alice, mallory) = (Client::as_user("alice"), Client::as_user("mallory"));
    let m = &stack.meeting.base;
    let meeting = meeting_with_manager(&stack.urls(), &alice, "Errors").await;
    let items = format!("{m}/meetings/{meeting}/agenda-items");

    // 401: no token, a token signed with another key, a malformed header.
    assert_error(
        Client::anonymous()
            .get(&format!("{m}/meetings/{meeting}"))
            .await,
        401,
        "unauthorized",
    );
    let forged = meeting_events::issue_token(
        &meeting_events::config::Secret::new("another-secret-entirely"),
        "alice",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_error(
        Client::with_token(&forged)
            .get(&format!("{m}/meetings/{meeting}"))
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        Client::with_token("not.a.jwt")
            .post(
                &format!("{}/ballots/x/votes", stack.voting.base),
                json!({"choice": "a"}),
            )
            .await,
        401,
        "unauthorized",
    );
    // Health and readiness stay open to probes.
    assert_eq!(
        Client::anonymous().get(&format!("{m}/health")).await,
        (200, json!({"status": "ok"}))
    );

    // 400: bodies and queries that do not parse.
    assert_error(
        alice
            .post_raw(&format!("{m}/meetings"), "{\"title\": ")
            .await,
        400,
        "bad_request",
    );
    assert_error(
        alice
            .post(&format!("{m}/meetings"), json!({"name": "no title"}))
            .await,
        400,
        "bad_request",
    );
    assert_error(
        alice
            .post(&format!("{m}/meetings"), json!({"title": 42}))
            .await,
        400,
        "bad_request",
    );
    assert_error(
        alice.get(&format!("{m}/meetings?limit=many")).await,
        400,
        "bad_request",
    );

    // 422: well-formed but unacceptable values.
    assert_error(
        alice
            .post(&format!("{m}/meetings"), json!({"title": "   "}))
            .await,
        422,
        "invalid",
    );
    assert_error(
        alice
            .post(&items, json!({"title": "x", "kind": "party"}))
            .await,
        422,
        "invalid",
    );
    assert_error(
        alice.get(&format!("{m}/meetings?limit=5000")).await,
        422,
        "invalid",
    );

    // 403: not a manager.
    assert_error(
        mallory
            .post(&items, json!({"title": "x", "kind": "discussion"}))
            .await,
        403,
        "forbidden",
    );
    let perms = format!("{}/meetings/{meeting}/permissions", stack.permission.base);
    assert_error(
        mallory
            .post(&perms, json!({"user_id": "mallory", "role": "manager"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        alice
            .post(&perms, json!({"user_id": "bob", "role": "owner"}))
            .await,
        422,
        "invalid",
    );

    // 404: unknown things.
    assert_error(
        alice.get(&format!("{m}/meetings/nope")).await,
        404,
        "not_found",
    );
    assert_error(
        alice
            .post(
                &format!("{m}/meetings/nope/agenda-items"),
                json!({"title": "x", "kind": "election"}),
            )
            .await,
        404,
        "not_found",
    );
    assert_error(
        alice.post(&format!("{items}/nope/open"), json!({})).await,
        404,
        "not_found",
    );
    assert_error(
        alice
            .get(&format!("{}/elections/nope", stack.election.base))
            .await,
        404,
        "not_found",
    );
    assert_error(
        alice
            .post(
                &format!("{}/ballots/nope/votes", stack.voting.base),
                json!({"choice": "a"}),
            )
            .await,
        404,
        "not_found",
    );
    assert_error(
        alice
            .get(&format!(
                "{}/meetings/nope/permissions",
                stack.permission.base
            ))
            .await,
        404,
        "not_found",
    );
    assert_error(
        alice.get(&format!("{m}/no/such/route")).await,
        404,
        "not_found",
    );

    // 409: state conflicts.
    let (_, item) = alice
        .post(&items, json!({"title": "Chair", "kind": "election"}))
        .await;
    let item = item["id"].as_str().unwrap().to_string();
    let (_, discussion) = alice
        .post(&items, json!({"title": "AOB", "kind": "discussion"}))
        .await;
    let discussion = discussion["id"].as_str().unwrap().to_string();
    assert_error(
        alice
            .post(&format!("{items}/{item}/start-election"), json!({}))
            .await,
        409,
        "conflict",
    );
    assert_eq!(
        alice
            .post(&format!("{items}/{item}/open"), json!({}))
            .await
            .0,
        200
    );
    assert_error(
        alice.post(&format!("{items}/{item}/open"), json!({})).await,
        409,
        "conflict",
    );
    assert_error(
        alice
            .post(&format!("{items}/{discussion}/open"), json!({}))
            .await,
        409,
        "conflict",
    );
    assert_error(
        alice.delete(&format!("{perms}/alice/manager")).await,
        409,
        "conflict",
    );

    let url = format!("{}/elections?meeting_id={meeting}", stack.election.base);
    let election = eventually(std::time::Duration::from_secs(15), || async {
        alice.get(&url).await.1.as_array()?.first()?["id"]
            .as_str()
            .map(String::from)
    })
    .await
    .unwrap();
    let nominations = format!("{}/elections/{election}/nominations", stack.election.base);
    assert_eq!(
        alice
            .post(&nominations, json!({"candidate": "ada"}))
            .await
            .0,
        201
    );
    assert_error(
        alice.post(&nominations, json!({"candidate": "ada"})).await,
        409,
        "conflict",
    );
    assert_error(
        alice.post(&nominations, json!({"candidate": ""})).await,
        422,
        "invalid",
    );
    assert_eq!(
        alice
            .post(&format!("{items}/{item}/start-election"), json!({}))
            .await
            .0,
        200
    );
    assert_error(
        alice
            .post(&format!("{items}/{item}/start-election"), json!({}))
            .await,
        409,
        "conflict",
    );
    let ballot_url = format!("{}/ballots?election_id={election}", stack.voting.base);
    let ballot = eventually(std::time::Duration::from_secs(15), || async {
        alice.get(&ballot_url).await.1.as_array()?.first()?["id"]
            .as_str()
            .map(String::from)
    })
    .await
    .unwrap();
    // Nominations are closed once voting started.
    assert_error(
        alice.post(&nominations, json!({"candidate": "late"})).await,
        409,
        "conflict",
    );
    let votes = format!("{}/ballots/{ballot}/votes", stack.voting.base);
    assert_error(
        alice.post(&votes, json!({"choice": "zed"})).await,
        422,
        "invalid",
    );
    assert_eq!(alice.post(&votes, json!({"choice": "ada"})).await.0, 201);
    assert_error(
        alice.post(&votes, json!({"choice": "ada"})).await,
        409,
        "conflict",
    );
    assert_error(
        mallory
            .post(
                &format!("{}/ballots/{ballot}/close", stack.voting.base),
                json!({}),
            )
            .await,
        403,
        "forbidden",
    );
    assert_eq!(
        alice
            .post(
                &format!("{}/ballots/{ballot}/close", stack.voting.base),
                json!({})
            )
            .await
            .0,
        200
    );
    assert_error(
        alice
            .post(
                &format!("{}/ballots/{ballot}/close", stack.voting.base),
                json!({}),
            )
            .await,
        409,
        "conflict",
    );
    assert_error(
        mallory.post(&votes, json!({"choice": "ada"})).await,
        409,
        "conflict",
    );
    stack.stop().await;
}

#[tokio::test]
async fn browsers_from_allowed_origins_get_cors_answers_and_others_do_not() {
    let mut ctx = Ctx::new();
    ctx.extra.insert(
        "CORS_ALLOWED_ORIGINS".into(),
        "http://localhost:5173".into(),
    );
    let meeting = Running::spawn(&ctx, &MEETING).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/meetings", meeting.base),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
    };
    let ok = preflight("http://localhost:5173").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A lower-case scheme is still a bearer token.
    let r = http
        .get(format!("{}/meetings", meeting.base))
        .header("Authorization", format!("bearer {}", token("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    meeting.stop().await.unwrap();
}
