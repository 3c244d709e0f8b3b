//! The outbox relay (docs/architecture.md §5): rows published in `seq` order with confirms,
//! each row deleted only once the broker confirmed it. The relay publishes the rows its
//! process's commits hand it and reads the table only when it must — at start, when it
//! becomes the replica that relays, on the idle poll, after another replica's commit, after
//! a failure or an overflowing hand-off — so no row is missed and none waits for a poll.
//! Handed-off batches are pipelined: the next is sent while the confirms of the earlier
//! ones are still coming, up to [`MAX_UNCONFIRMED`] rows. A read of the table waits until
//! every batch sent is settled and its confirmed rows deleted (`deletes.rs`), so it never
//! returns a row in flight or already confirmed.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use sqlx::AnyPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{fetch, publish, send, settle, Batch, RelayError};
use super::deletes::Deletes;
use super::leader::{listen, notified, Lead};
use super::{backlog, Outbox, BATCH, GAUGE_EVERY, IDLE_POLL, SET_ASIDE};
use crate::messaging::Broker;

/// Rows sent and not yet confirmed, at most; beyond it the relay waits for the oldest batch.
const MAX_UNCONFIRMED: usize = 4 * BATCH as usize;

/// A batch in flight: its row count, and its settlement.
type InFlight = BoxFuture<'static, (usize, Result<Batch, RelayError>)>;

/// What the relay keeps between rounds.
struct Relay {
    /// The next round reads the table.
    scan: bool,
    /// When the table is read at the latest (the idle poll).
    next_scan: Instant,
    /// The rows the last read returned: a hand-off of one of them is already published.
    scanned: HashSet<i64>,
    /// Rows still to publish one by one to find one the broker refuses for good.
    probing: i64,
    /// Confirmed rows, deleted together.
    deletes: Deletes,
    /// Batches sent, oldest first, and the rows they hold.
    inflight: FuturesOrdered<InFlight>,
    unconfirmed: usize,
}

impl Relay {
    /// When the relay must look again without a wake-up.
    fn deadline(&self) -> Instant {
        match self.deletes.deadline() {
            Some(t) => self.next_scan.min(t),
            None => self.next_scan,
        }
    }

    /// After a failure: look again one idle poll from now (or at a wake-up), reading the
    /// table.
    fn pause(&mut self) {
        self.scan = true;
        self.next_scan = Instant::now() + IDLE_POLL;
    }

    /// What a settled batch means for the next rounds.
    fn settled(&mut self, (rows, result): (usize, Result<Batch, RelayError>), service: &str) {
        self.unconfirmed -= rows;
        match result {
            Ok(batch) => {
                self.probing = match (self.probing, batch.refused, batch.set_aside) {
                    (_, _, true) => 0,
                    (_, true, _) => BATCH,
                    // Never below zero: a batch that was not probing must not keep the
                    // next refusal from starting a probe.
                    (n, _, _) => (n - batch.fetched as i64).max(0),
                };
                self.scan |= batch.left || batch.refused;
                self.deletes.add(batch.done);
            }
            Err(e) => {
                if let RelayError::Broker(_, done) = &e {
                    self.deletes.add(done.clone());
                }
                self.pause();
                tracing::warn!(service, error = %crate::text::Chain(&e), "outbox relay paused");
            }
        }
    }

    /// Settle the batches whose confirms are all in, without waiting.
    fn settle_ready(&mut self, service: &str) {
        while let Some(Some(done)) = self.inflight.next().now_or_never() {
            self.settled(done, service);
        }
    }

    /// Wait for every batch in flight.
    async fn settle_all(&mut self, service: &str) {
        while let Some(done) = self.inflight.next().await {
            self.settled(done, service);
        }
    }
}

/// The relay task. Runs until `shutdown`; then publishes what it can within `grace`.
pub(crate) async fn run_relay(
    broker: Broker,
    outbox: Outbox,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let service = broker.settings().service_name.clone();
    let store = &outbox.store;
    let pool = store.pool();
    let mut lead = Lead::for_store(store);
    let mut listener = listen(store).await;
    // The backlog gauges on their own timer: a relay waiting for confirms (a broker that
    // blocks publishes during a resource alarm) must not freeze them.
    let gauges = {
        let (pool, service, stop) = (pool.clone(), service.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                record_backlog(&pool, &service).await;
                tokio::select! {
                    _ = tokio::time::sleep(GAUGE_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    let mut relay = Relay {
        scan: true,
        next_scan: Instant::now(),
        scanned: HashSet::new(),
        probing: 0,
        deletes: Deletes::default(),
        inflight: FuturesOrdered::new(),
        unconfirmed: 0,
    };
    // Whether this replica relays, asked of the store at most once per idle poll.
    let mut checked: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        relay.settle_ready(&service);
        relay.deletes.tick(store, &service);
        let Some(session) = broker.wait_session(&shutdown).await else {
            break;
        };
        if checked.is_none_or(|t| t.elapsed() >= IDLE_POLL) {
            let held = lead.hold(store, &service).await;
            if held && !outbox.leading() {
                relay.scan = true; // rows committed while another replica relayed
            }
            outbox.set_leading(held);
            checked = Some(Instant::now());
        }
        let mut full = false;
        // While the broker blocks the connection (a resource alarm), a publish would only
        // wait: the rows stay in the outbox until it is unblocked, and are read from there.
        let blocked = session.connection.status().blocked();
        if blocked || !outbox.leading() {
            // Read the table once this replica relays again; until then wait for a wake-up
            // or the next look at the lock.
            relay.pause();
        } else if relay.scan || relay.probing > 0 || Instant::now() >= relay.next_scan {
            // A read must not return rows in flight: every batch sent is settled first.
            relay.settle_all(&service).await;
            // After a refusal, rows go one at a time until the refused one is found.
            let limit = if relay.probing > 0 { 1 } else { BATCH };
            let read = async {
                relay.deletes.finish(store).await?;
                // The read sees every row handed off so far.
                drop(outbox.take_handed());
                fetch(store, limit).await
            };
            match read.await {
                Ok(rows) => {
                    relay.scanned = rows.iter().map(|r| r.seq).collect();
                    relay.scan = rows.len() == limit as usize;
                    relay.next_scan = Instant::now() + IDLE_POLL;
                    full = relay.scan;
                    let n = rows.len();
                    relay.unconfirmed += n;
                    let result = publish(&broker, store, &session, rows).await;
                    relay.settled((n, result), &service);
                    full |= relay.probing > 0;
                }
                Err(e) => {
                    tracing::warn!(service, error = %crate::text::Chain(&e), "outbox relay paused");
                    relay.pause();
                }
            }
        } else {
            let (rows, overflowed) = outbox.take_handed();
            relay.scan |= overflowed;
            full = overflowed;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| !relay.scanned.contains(&r.seq))
                .collect();
            if !rows.is_empty() {
                while relay.unconfirmed >= MAX_UNCONFIRMED {
                    let Some(done) = relay.inflight.next().await else {
                        break;
                    };
                    relay.settled(done, &service);
                }
                let n = rows.len();
                let sent = send(&broker, &session, rows).await;
                let (b, s) = (broker.clone(), store.clone());
                relay.unconfirmed += n;
                relay
                    .inflight
                    .push_back(async move { (n, settle(b, s, sent).await) }.boxed());
            }
        }
        if full {
            continue; // more rows are waiting
        }
        // A commit since the rows were taken left a wake-up permit: nothing is missed.
        let deadline = relay.deadline();
        tokio::select! {
            _ = outbox.woken() => {}
            _ = notified(&mut listener) => relay.scan = true,
            Some(done) = relay.inflight.next(), if !relay.inflight.is_empty() => {
                relay.settled(done, &service);
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    // Shutdown: settle what is in flight, then flush what the broker takes, within the
    // grace period.
    let flush = async {
        relay.settle_all(&service).await;
        if relay.deletes.finish(store).await.is_err() || !lead.hold(store, &service).await {
            return;
        }
        while let Some(session) = broker.current() {
            let Ok(rows) = fetch(store, BATCH).await else {
                break;
            };
            match publish(&broker, store, &session, rows).await {
                Ok(batch) if batch.fetched > 0 && !batch.refused => {
                    relay.deletes.add(batch.done);
                    if relay.deletes.finish(store).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    };
    if tokio::time::timeout(grace, flush).await.is_err() {
        tracing::warn!(service, "outbox flush did not finish within the shutdown grace period; the rest is sent on next start");
    }
    let _ = relay.deletes.finish(store).await;
    lead.release().await;
    let _ = gauges.await;
    record_backlog(pool, &service).await;
}

async fn record_backlog(pool: &AnyPool, service: &str) {
    let aside: sqlx::Result<i64> =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE next_attempt_ms = $1")
            .bind(SET_ASIDE)
            .fetch_one(pool)
            .await;
    if let Ok(n) = aside {
        crate::metric::outbox_set_aside(service.to_string()).set(n as f64);
    }
    if let Ok((count, age)) = backlog(pool).await {
        crate::metric::outbox_backlog(service.to_string()).set(count as f64);
        crate::metric::outbox_oldest_age_seconds(service.to_string()).set(age);
    }
}
