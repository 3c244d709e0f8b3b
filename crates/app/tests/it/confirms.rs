//! Which publish came back (docs/architecture.md §5): with many mandatory publishes in flight
//! on one channel, RabbitMQ's acks come singly or `multiple`, in between the returns of
//! unroutable ones, and lapin alone hands a return to whichever confirm it resolves next.
//! Matched by message id, every unroutable message is reported unroutable and every routed
//! one routed — the difference between an event held for later and an event lost.

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use lapin::BasicProperties;
use meeting_events::messaging::publisher::{self, Published, Publisher};

use crate::helpers::*;

/// Whether message `i` of `round` goes nowhere: a third of them, spread through the batch.
fn nowhere(round: usize, i: usize) -> bool {
    (i * 7 + round) % 3 == 0
}

/// Publish `rounds` batches of `n` on `publisher`, each batch sent while the confirms of up
/// to `window` messages before it are still out (a sliding window, as the relay's), and the
/// rest awaited at the end; the messages whose outcome was wrong.
async fn misreported(
    publisher: &Publisher,
    exchange: &str,
    tag: &str,
    (rounds, n, window): (usize, usize, usize),
) -> Vec<String> {
    let mut inflight = FuturesOrdered::new();
    let mut wrong = Vec::new();
    let check = |(nowhere, id, outcome): (bool, String, lapin::Result<Published>),
                 wrong: &mut Vec<String>| {
        match outcome.expect("a confirm") {
            Published::Routed if !nowhere => {}
            Published::Unroutable(why) if nowhere => assert!(why.contains("NO_ROUTE"), "{why}"),
            other => wrong.push(format!("{id}: {other:?}")),
        }
    };
    for round in 0..rounds {
        while inflight.len() + n > window.max(n) {
            let done = inflight.next().await.expect("one in flight");
            check(done, &mut wrong);
        }
        let msgs: Vec<(bool, String)> = (0..n)
            .map(|i| (nowhere(round, i), format!("{tag}-{round}-{i}")))
            .collect();
        let sent = publisher::send_all(
            publisher,
            exchange,
            msgs.iter().map(|(nowhere, id)| {
                let key = if *nowhere { "nowhere.x" } else { "routed.x" };
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.as_str().into());
                (key, id.as_bytes(), props)
            }),
        )
        .await;
        for ((nowhere, id), sent) in msgs.into_iter().zip(sent) {
            let pending = sent.expect("sent");
            inflight.push_back(async move { (nowhere, id, publisher::confirmed(pending).await) });
        }
    }
    while let Some(done) = inflight.next().await {
        check(done, &mut wrong);
    }
    wrong
}

#[tokio::test]
async fn every_return_is_matched_to_its_own_publish_however_the_acks_come() {
    let ctx = Ctx::new();
    let bus = Bus::connect(&ctx).await;
    let queue = format!("{}.routed", ctx.exchange);
    bus.durable_queue(&queue, "routed.#").await;
    let channel = bus.conn.create_channel().await.expect("a channel");
    let publisher = Publisher::open(channel).await.expect("confirm mode");

    // Two senders on one channel, as the relay and a consumer's retries share one.
    // One sends batches of 200 with up to 600 in flight, the other batches of 50 with
    // every earlier one settled first.
    let (a, b) = tokio::join!(
        misreported(&publisher, &bus.exchange, "a", (10, 200, 600)),
        misreported(&publisher, &bus.exchange, "b", (10, 50, 50)),
    );
    assert!(a.is_empty() && b.is_empty(), "misreported: {a:?} {b:?}");

    // Every routed message reached the queue, once.
    let held = bus.drain(&queue).await;
    let routed = (0..10)
        .map(|r| {
            (0..200).filter(|i| !nowhere(r, *i)).count()
                + (0..50).filter(|i| !nowhere(r, *i)).count()
        })
        .sum::<usize>();
    assert_eq!(held.len(), routed, "the routed messages in their queue");
}
