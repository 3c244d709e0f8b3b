//! The live role's meeting page in a real browser (docs/architecture.md §12): headless
//! Chromium follows a meeting driven partly from the page and partly over REST, every change
//! appears without a reload, and when the page's live replica is replaced mid-ballot the
//! page's `EventSource` resumes on the new one by `Last-Event-ID` with nothing missing and
//! nothing twice.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

/// The page's own record: the SSE id and event id of every event it received, in order.
async fn page_log(browser: &Browser) -> Vec<(String, String)> {
    let log = browser.eval("return window.live.log", vec![]).await;
    log.as_array()
        .expect("window.live.log")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                e["event_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn text_of(browser: &Browser, id: &str) -> String {
    browser
        .eval(
            "return document.getElementById(arguments[0]).textContent",
            vec![json!(id)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Wait until the element `id` reads exactly `text`.
pub(crate) async fn until_text(browser: &Browser, id: &str, text: &str) {
    let script = format!(
        "return document.getElementById({}).textContent === {}",
        json!(id),
        json!(text)
    );
    browser
        .until(&format!("#{id} = {text:?}"), WAIT, &script)
        .await;
}

/// Sign in as alice and create a meeting titled `title` from the page; once the grant came
/// back through permission and the stream (the manager's controls appear), its id.
pub(crate) async fn sign_in_and_create(browser: &Browser, title: &str) -> String {
    browser.fill("#user", "alice").await;
    browser.click("#sign-in-form button").await;
    browser
        .until(
            "alice signed in",
            WAIT,
            "return window.live.user === 'alice'",
        )
        .await;
    browser.fill("#meeting-title", title).await;
    browser.click("#create-form button").await;
    let id = browser
        .until(
            "the new meeting",
            WAIT,
            "return !document.getElementById('meeting').hidden && window.live.meeting.id",
        )
        .await;
    until_text(browser, "managers", "alice").await;
    id.as_str().expect("a meeting id").to_string()
}

/// Add an election item (of `seats`, if given) and open it from the page; once its election
/// takes nominations, the election's id.
pub(crate) async fn add_and_open_election(
    browser: &Browser,
    title: &str,
    seats: Option<&str>,
) -> String {
    browser.fill("#item-title", title).await;
    if let Some(seats) = seats {
        browser.fill("#item-seats", seats).await;
    }
    browser.click("#item-form button").await;
    browser
        .until(
            "the item, pending",
            WAIT,
            "return document.querySelector('#agenda li[data-status=pending] button')",
        )
        .await;
    browser
        .click("#agenda li[data-status=pending] button")
        .await;
    until_text(browser, "election-status", "nominating").await;
    let election_id = browser
        .eval(
            "return [...window.live.meeting.elections.keys()][0]",
            vec![],
        )
        .await;
    election_id.as_str().expect("an election id").to_string()
}

/// The four roles a page at `page_origin` calls, with CORS for it, and the live role's
/// settings told where they answer.
pub(crate) async fn roles_for_page(
    ctx: &mut Ctx,
    page_origin: &str,
) -> (Running, Running, Running, Running) {
    ctx.extra
        .insert("CORS_ALLOWED_ORIGINS".into(), page_origin.to_string());
    let (permission, election, voting, meeting) = tokio::join!(
        Running::spawn(ctx, &PERMISSION),
        Running::spawn(ctx, &ELECTION),
        Running::spawn(ctx, &VOTING),
        Running::spawn(ctx, &MEETING),
    );
    let origins = format!(
        "meeting={},election={},voting={},permission={}",
        meeting.base, election.base, voting.base, permission.base
    );
    ctx.per_role.insert(
        LIVE.name,
        [("LIVE_API_ORIGINS".to_string(), origins)].into(),
    );
    (permission, election, voting, meeting)
}

#[tokio::test]
async fn the_meeting_page_follows_a_meeting_live_and_catches_up_on_a_new_replica() {
    let mut ctx = Ctx::new();
    // The page's origin is fixed: the replica it is on is replaced by one on the same port.
    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let (permission, election, voting, meeting) = roles_for_page(&mut ctx, &page_origin).await;
    // A witness replica that stays up: the full record to compare the page with.
    let witness = Running::spawn(&ctx, &LIVE).await;
    let page_replica = || async {
        let mut settings = ctx.settings(&LIVE);
        // Development mode: the page signs in by user name (`POST /live/dev-session`).
        settings.development = true;
        let listener = TcpListener::bind(("127.0.0.1", page_port))
            .await
            .expect("the page's port");
        Running::spawn_on(&LIVE, settings, listener).await
    };
    let first_replica = page_replica().await;
    let urls = Urls {
        meeting: meeting.base.clone(),
        election: election.base.clone(),
        voting: voting.base.clone(),
        permission: permission.base.clone(),
        live: witness.base.clone(),
    };

    let browser = Browser::start().await;
    browser.goto(&format!("{page_origin}/live/")).await;
    browser
        .until("its settings", WAIT, "return window.live.config !== null")
        .await;

    // Sign in and create a meeting from the page; the page follows it at once.
    let id = sign_in_and_create(&browser, "Browser walk").await;
    // An election item, added and opened from the page.
    let election_id = add_and_open_election(&browser, "Elect the chair", None).await;

    // Nominations made over REST by others appear on the page one by one.
    for (n, who) in ["ada", "grace"].into_iter().enumerate() {
        let (s, body) = Client::as_user(who)
            .post(
                &format!("{}/elections/{election_id}/nominations", urls.election),
                json!({"candidate": who}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        let script = format!(
            "return document.querySelectorAll('#candidates li').length === {}",
            n + 1
        );
        browser
            .until(&format!("{} candidates", n + 1), WAIT, &script)
            .await;
    }

    // The vote starts from the page; alice votes there, bob over REST.
    browser.click("#start").await;
    until_text(&browser, "ballot-status", "open").await;
    let ballot = crate::flow::ballot_of(&urls, &Client::as_user("alice"), &election_id).await["id"]
        .as_str()
        .expect("a ballot id")
        .to_string();
    browser.click("#vote-form button").await;
    until_text(&browser, "votes-cast", "1").await;
    let (s, body) = crate::flow::vote(&urls, &Client::as_user("bob"), &ballot, "grace").await;
    assert_eq!(s, 201, "{body}");
    until_text(&browser, "votes-cast", "2").await;
    let before_cut = page_log(&browser).await;

    // The page's replica goes away; two votes are counted while it is gone.
    first_replica.stop().await.expect("a clean stop");
    let mut watch =
        crate::helpers::Sse::as_user(&format!("{}/live/meetings/{id}", witness.base), "alice")
            .await;
    for (who, choice) in [("carol", "grace"), ("dave", "ada")] {
        let (s, body) = crate::flow::vote(&urls, &Client::as_user(who), &ballot, choice).await;
        assert_eq!(s, 201, "{body}");
        watch.until("voting.vote.counted", WAIT).await;
    }
    assert_eq!(
        text_of(&browser, "votes-cast").await,
        "2",
        "nothing reaches the page while its replica is down"
    );

    // Another replica on the same address, with nothing in memory: the browser reconnects
    // by itself with Last-Event-ID and the replica reads what was missed from the stream.
    let second_replica = page_replica().await;
    until_text(&browser, "votes-cast", "4").await;
    browser.click("#close").await;
    browser
        .until(
            "the result",
            WAIT,
            "return !document.getElementById('result').hidden && document.getElementById('result-text').textContent",
        )
        .await;
    let result = text_of(&browser, "result-text").await;
    assert!(
        result.starts_with("tie: ada, grace"),
        "two votes each: {result}"
    );
    let shot = browser
        .screenshot("meeting-page-after-replica-replaced")
        .await;
    eprintln!("the final page: {}", shot.display());

    // Nothing missing and nothing twice: the page's record, from its first event on, is the
    // witness's record of the same stretch of the stream, in order.
    let log = page_log(&browser).await;
    assert!(
        log.len() > before_cut.len(),
        "events after the cut: {log:?}"
    );
    assert_eq!(
        browser.eval("return window.live.duplicates", vec![]).await,
        json!(0),
        "no event twice"
    );
    let mut record = crate::helpers::Sse::open(
        &format!(
            "{}/live/meetings/{id}?last_event_id={}",
            witness.base, log[0].0
        ),
        &[("authorization", format!("Bearer {}", token("alice")))],
    )
    .await;
    let rest = record.until("election.finalized", WAIT).await;
    let expected: Vec<String> = std::iter::once(log[0].1.clone())
        .chain(rest.iter().map(|e| {
            e.data["event_id"]
                .as_str()
                .expect("an event id")
                .to_string()
        }))
        .collect();
    let got: Vec<String> = log.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        got, expected,
        "the page's events are the stream's, in order"
    );
    let types: Vec<Value> = rest.iter().map(|e| json!(e.event)).collect();
    assert!(
        types.contains(&json!("voting.completed")),
        "the close reached the page: {types:?}"
    );

    drop((watch, record));
    browser.close().await;
    for r in [
        second_replica,
        witness,
        meeting,
        election,
        voting,
        permission,
    ] {
        r.stop().await.expect("a clean stop");
    }
}
