//! A three-seat election on the live role's meeting page, in headless Chromium
//! (docs/architecture.md §3, "Changing an event"): the item is added with `seats` from the
//! page, `agenda.election.create` version 2 carries them through the election role, the page
//! shows them from `election.opened`, and the result names three winners.

use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;

use crate::browser::{add_and_open_election, roles_for_page, sign_in_and_create, until_text};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_page_walks_a_three_seat_election_to_three_winners() {
    let mut ctx = Ctx::new();
    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let (permission, election, voting, meeting) = roles_for_page(&mut ctx, &page_origin).await;
    let mut settings = ctx.settings(&LIVE);
    settings.development = true;
    let listener = TcpListener::bind(("127.0.0.1", page_port))
        .await
        .expect("the page's port");
    let live = Running::spawn_on(&LIVE, settings, listener).await;
    let urls = Urls {
        meeting: meeting.base.clone(),
        election: election.base.clone(),
        voting: voting.base.clone(),
        permission: permission.base.clone(),
        live: live.base.clone(),
    };

    let browser = Browser::start().await;
    browser.goto(&format!("{page_origin}/live/")).await;
    browser
        .until("its settings", WAIT, "return window.live.config !== null")
        .await;
    sign_in_and_create(&browser, "Annual general meeting").await;
    // A board of three, added and opened from the page.
    let election_id = add_and_open_election(&browser, "Elect the board", Some("3")).await;
    until_text(&browser, "election-seats", "3 seats").await;
    let alice = Client::as_user("alice");
    crate::flow::nominate(&urls, &alice, &election_id, &["ada", "bob", "cy", "dee"]).await;
    browser
        .until(
            "4 candidates",
            WAIT,
            "return document.querySelectorAll('#candidates li').length === 4",
        )
        .await;

    browser.click("#start").await;
    until_text(&browser, "ballot-status", "open").await;
    let ballot = crate::flow::ballot_of(&urls, &alice, &election_id).await["id"]
        .as_str()
        .expect("a ballot id")
        .to_string();
    let votes = [
        ("v1", "ada"),
        ("v2", "ada"),
        ("v3", "cy"),
        ("v4", "cy"),
        ("v5", "dee"),
        ("v6", "bob"),
        ("v7", "dee"),
    ];
    for (who, choice) in votes {
        let (s, body) = crate::flow::vote(&urls, &Client::as_user(who), &ballot, choice).await;
        assert_eq!(s, 201, "{body}");
    }
    until_text(&browser, "votes-cast", "7").await;
    browser.click("#close").await;
    browser
        .until(
            "the result",
            WAIT,
            "return !document.getElementById('result').hidden && document.getElementById('result-text').textContent",
        )
        .await;
    until_text(
        &browser,
        "result-text",
        "elected: ada, cy, dee (ada 2, bob 1, cy 2, dee 2)",
    )
    .await;
    let shot = browser.screenshot("three-seat-election").await;
    eprintln!("the final page: {}", shot.display());

    // The meeting role took the same three from election.finalized.
    let meeting_id = page_value(&browser, "window.live.meeting.id").await;
    let item_id = page_value(&browser, "window.live.meeting.current").await;
    let item = crate::flow::item_result(&urls, &alice, &meeting_id, &item_id).await;
    assert_eq!(item["winners"], json!(["ada", "cy", "dee"]), "{item}");

    browser.close().await;
    for r in [live, meeting, election, voting, permission] {
        r.stop().await.expect("a clean stop");
    }
}

async fn page_value(browser: &Browser, expression: &str) -> String {
    browser
        .eval(&format!("return {expression}"), vec![])
        .await
        .as_str()
        .unwrap_or_else(|| panic!("{expression} is a string"))
        .to_string()
}
