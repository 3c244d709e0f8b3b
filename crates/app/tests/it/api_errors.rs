//! Every error status the API names, with its JSON body: tables of requests, each with the
//! status and error code it must get, run at the points of a meeting's life where they apply.

use serde_json::{json, Value};

use crate::helpers::*;

/// A request made as a user, and the error it must get.
struct Case<'a> {
    what: &'static str,
    by: &'a Client,
    req: Req,
    status: u16,
    code: &'static str,
}

fn case<'a>(
    what: &'static str,
    by: &'a Client,
    req: Req,
    status: u16,
    code: &'static str,
) -> Case<'a> {
    Case {
        what,
        by,
        req,
        status,
        code,
    }
}

async fn check(cases: Vec<Case<'_>>) {
    for c in cases {
        let answer = c.by.send(&c.req).await;
        assert_error(c.what, &answer, c.status, c.code, &[]);
    }
}

/// The id of the first element of a list at `url`, once there is one.
async fn first_id(by: &Client, url: &str) -> String {
    eventually(std::time::Duration::from_secs(15), || async {
        by.get(url).await.1.as_array()?.first()?["id"]
            .as_str()
            .map(String::from)
    })
    .await
    .unwrap_or_else(|| panic!("nothing appeared at {url}"))
}

async fn created_id(by: &Client, url: &str, body: Value) -> String {
    let (status, item) = by.post(url, body).await;
    assert_eq!(status, 201, "{item}");
    item["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn each_error_status_comes_with_a_json_reason() {
    use Req::{Delete, Get, Post, PostRaw};
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let (alice, mallory) = (Client::as_user("alice"), Client::as_user("mallory"));
    let (m, e, v, p) = (
        &stack.meeting.base,
        &stack.election.base,
        &stack.voting.base,
        &stack.permission.base,
    );
    let meeting = meeting_with_manager(&stack.urls(), &alice, "Errors").await;
    let items = format!("{m}/meetings/{meeting}/agenda-items");
    let perms = format!("{p}/meetings/{meeting}/permissions");
    let forged = Client::with_token(
        &meeting_events::issue_token(
            &meeting_events::config::Secret::new("another-secret-entirely"),
            "alice",
            std::time::Duration::from_secs(60),
        )
        .unwrap(),
    );
    let (anonymous, garbled) = (Client::anonymous(), Client::with_token("not.a.jwt"));
    let one_meeting = format!("{m}/meetings/{meeting}");
    check(vec![
        case(
            "no token",
            &anonymous,
            Get(one_meeting.clone()),
            401,
            "unauthorized",
        ),
        case(
            "another key",
            &forged,
            Get(one_meeting.clone()),
            401,
            "unauthorized",
        ),
        case(
            "not a JWT",
            &garbled,
            Post(format!("{v}/ballots/x/votes"), json!({"choice": "a"})),
            401,
            "unauthorized",
        ),
        case(
            "truncated body",
            &alice,
            PostRaw(format!("{m}/meetings"), "{\"title\": "),
            400,
            "bad_request",
        ),
        case(
            "missing field",
            &alice,
            Post(format!("{m}/meetings"), json!({"name": "no title"})),
            400,
            "bad_request",
        ),
        case(
            "an array for an object",
            &alice,
            Post(format!("{m}/meetings"), json!(["AGM"])),
            400,
            "bad_request",
        ),
        case(
            "wrong type",
            &alice,
            Post(format!("{m}/meetings"), json!({"title": 42})),
            400,
            "bad_request",
        ),
        case(
            "bad query",
            &alice,
            Get(format!("{m}/meetings?limit=many")),
            400,
            "bad_request",
        ),
        case(
            "blank title",
            &alice,
            Post(format!("{m}/meetings"), json!({"title": "   "})),
            422,
            "invalid",
        ),
        case(
            "unknown kind",
            &alice,
            Post(items.clone(), json!({"title": "x", "kind": "party"})),
            422,
            "invalid",
        ),
        case(
            "limit too large",
            &alice,
            Get(format!("{m}/meetings?limit=5000")),
            422,
            "invalid",
        ),
        case(
            "unknown role",
            &alice,
            Post(perms.clone(), json!({"user_id": "bob", "role": "owner"})),
            422,
            "invalid",
        ),
        case(
            "item by a non-manager",
            &mallory,
            Post(items.clone(), json!({"title": "x", "kind": "discussion"})),
            403,
            "forbidden",
        ),
        case(
            "grant by a non-manager",
            &mallory,
            Post(
                perms.clone(),
                json!({"user_id": "mallory", "role": "manager"}),
            ),
            403,
            "forbidden",
        ),
        case(
            "unknown meeting",
            &alice,
            Get(format!("{m}/meetings/nope")),
            404,
            "not_found",
        ),
        case(
            "item of an unknown meeting",
            &alice,
            Post(
                format!("{m}/meetings/nope/agenda-items"),
                json!({"title": "x", "kind": "election"}),
            ),
            404,
            "not_found",
        ),
        case(
            "unknown item",
            &alice,
            Post(format!("{items}/nope/open"), json!({})),
            404,
            "not_found",
        ),
        case(
            "unknown election",
            &alice,
            Get(format!("{e}/elections/nope")),
            404,
            "not_found",
        ),
        case(
            "unknown ballot",
            &alice,
            Post(format!("{v}/ballots/nope/votes"), json!({"choice": "a"})),
            404,
            "not_found",
        ),
        case(
            "permissions of an unknown meeting",
            &alice,
            Get(format!("{p}/meetings/nope/permissions")),
            404,
            "not_found",
        ),
        case(
            "unknown route",
            &alice,
            Get(format!("{m}/no/such/route")),
            404,
            "not_found",
        ),
        case(
            "the last manager",
            &alice,
            Delete(format!("{perms}/alice/manager")),
            409,
            "conflict",
        ),
    ])
    .await;
    // Health and readiness stay open to probes.
    assert_eq!(
        anonymous.get(&format!("{m}/health")).await,
        (200, json!({"status": "ok"}))
    );

    // An election item and a discussion: state conflicts around opening them.
    let item = created_id(
        &alice,
        &items,
        json!({"title": "Chair", "kind": "election"}),
    )
    .await;
    let discussion = created_id(
        &alice,
        &items,
        json!({"title": "AOB", "kind": "discussion"}),
    )
    .await;
    let start = format!("{items}/{item}/start-election");
    check(vec![case(
        "start before open",
        &alice,
        Post(start.clone(), json!({})),
        409,
        "conflict",
    )])
    .await;
    assert_eq!(
        alice
            .post(&format!("{items}/{item}/open"), json!({}))
            .await
            .0,
        200
    );
    check(vec![
        case(
            "open twice",
            &alice,
            Post(format!("{items}/{item}/open"), json!({})),
            409,
            "conflict",
        ),
        case(
            "open beside a running election",
            &alice,
            Post(format!("{items}/{discussion}/open"), json!({})),
            409,
            "conflict",
        ),
    ])
    .await;

    // Nominations.
    let election = first_id(&alice, &format!("{e}/elections?meeting_id={meeting}")).await;
    let nominations = format!("{e}/elections/{election}/nominations");
    assert_eq!(
        alice
            .post(&nominations, json!({"candidate": "ada"}))
            .await
            .0,
        201
    );
    check(vec![
        case(
            "nominated twice",
            &alice,
            Post(nominations.clone(), json!({"candidate": "ada"})),
            409,
            "conflict",
        ),
        case(
            "empty candidate",
            &alice,
            Post(nominations.clone(), json!({"candidate": ""})),
            422,
            "invalid",
        ),
    ])
    .await;
    assert_eq!(alice.post(&start, json!({})).await.0, 200);
    let ballot = first_id(&alice, &format!("{v}/ballots?election_id={election}")).await;
    let votes = format!("{v}/ballots/{ballot}/votes");
    let close = format!("{v}/ballots/{ballot}/close");
    check(vec![
        case(
            "started twice",
            &alice,
            Post(start.clone(), json!({})),
            409,
            "conflict",
        ),
        case(
            "nomination after the start",
            &alice,
            Post(nominations.clone(), json!({"candidate": "late"})),
            409,
            "conflict",
        ),
        case(
            "not an option",
            &alice,
            Post(votes.clone(), json!({"choice": "zed"})),
            422,
            "invalid",
        ),
    ])
    .await;
    assert_eq!(alice.post(&votes, json!({"choice": "ada"})).await.0, 201);
    check(vec![
        case(
            "voted twice",
            &alice,
            Post(votes.clone(), json!({"choice": "ada"})),
            409,
            "conflict",
        ),
        case(
            "closed by a non-manager",
            &mallory,
            Post(close.clone(), json!({})),
            403,
            "forbidden",
        ),
    ])
    .await;
    assert_eq!(alice.post(&close, json!({})).await.0, 200);
    check(vec![
        case(
            "closed twice",
            &alice,
            Post(close.clone(), json!({})),
            409,
            "conflict",
        ),
        case(
            "vote on a closed ballot",
            &mallory,
            Post(votes.clone(), json!({"choice": "ada"})),
            409,
            "conflict",
        ),
    ])
    .await;
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
