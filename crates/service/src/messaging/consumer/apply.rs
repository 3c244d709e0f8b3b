//! Applying deliveries (docs/architecture.md §5): a batch of what the prefetch holds in one
//! unit of work, each event recorded in the inbox with its effect, acked after the commit;
//! one at a time when anything in the batch fails, so only the failing one is retried or
//! parked. While the store is out the deliveries stay in hand.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tracing::Instrument;

use super::incoming::Incoming;
use super::{Applied, Consumer, HandleError};
use crate::envelope::Envelope;
use crate::events::Event;
use crate::messaging::decision::{Handled, ParkReason};
use crate::messaging::inbox::{self, Recorded};
use crate::messaging::watchdog::Progress;
use crate::messaging::Session;
use crate::store::{is_retryable, race_backoff, RACE_RETRIES};
use crate::text::{short, Chain};

/// The longest wait between two probes of a store that is out.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// An event ready to apply: its envelope, its typed event and the span it is applied in.
type Ready<'a> = (&'a Envelope, Event, tracing::Span);

impl Consumer {
    /// Several deliveries at once: decoded and trusted ones applied in one transaction and
    /// acked after its commit. If any handler fails, nothing of the batch is kept and each
    /// delivery goes through [`Self::process`] alone.
    pub(super) async fn process_batch(
        &self,
        session: &Session,
        progress: &Progress,
        batch: Vec<Delivery>,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let mut ready = Vec::with_capacity(batch.len());
        for delivery in batch {
            let incoming = Incoming::new(mq, delivery);
            if incoming.decoded.is_ok() && incoming.trusted(mq).is_ok() {
                ready.push(incoming);
            } else {
                // Can never succeed, or not from this sender: parked, with its reason.
                self.process(session, progress, incoming).await?;
            }
        }
        if ready.len() == 1 {
            let incoming = ready.remove(0);
            return self.process(session, progress, incoming).await;
        }
        if ready.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let items = ready
            .iter()
            .filter_map(|i| {
                let (env, event) = i.decoded.as_ref().ok()?;
                Some((env, event.clone(), i.span.clone()))
            })
            .collect();
        match self.apply_all(items, progress).await {
            Ok(outcomes) => {
                let service = &mq.service_name;
                let each = started.elapsed().as_secs_f64() / ready.len().max(1) as f64;
                for (incoming, applied) in ready.iter().zip(outcomes) {
                    crate::metric::event_handler_duration_seconds(service.clone(), incoming.label)
                        .record(each);
                    incoming
                        .span
                        .in_scope(|| self.record_applied(incoming, &applied));
                }
                // The acks go out together: each queues its frame when first polled, so
                // the batch costs one hand-off to the connection's writer, not one each.
                let acks = ready.iter().map(|incoming| {
                    incoming
                        .delivery
                        .ack(BasicAckOptions::default())
                        .instrument(incoming.span.clone())
                });
                join_all(acks)
                    .await
                    .into_iter()
                    .try_for_each(|r| r.map(drop))
            }
            Err(_) => {
                for incoming in ready {
                    self.process(session, progress, incoming).await?;
                }
                Ok(())
            }
        }
    }

    /// Handle one delivery to the end, in its span: acked after commit, or retried, or
    /// parked.
    async fn process(
        &self,
        session: &Session,
        progress: &Progress,
        incoming: Incoming,
    ) -> lapin::Result<()> {
        let span = incoming.span.clone();
        self.process_in(session, progress, incoming)
            .instrument(span)
            .await
    }

    async fn process_in(
        &self,
        session: &Session,
        progress: &Progress,
        incoming: Incoming,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let (envelope, event) = match &incoming.decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                let handled = Handled::Impossible(ParkReason::from(e));
                return self
                    .settle(session, &incoming, handled, &e.to_string())
                    .await;
            }
        };
        if let Err(detail) = incoming.trusted(mq) {
            let handled = Handled::Impossible(ParkReason::UntrustedProducer);
            return self.settle(session, &incoming, handled, &detail).await;
        }
        let service = &mq.service_name;
        let started = Instant::now();
        let outcome = self
            .apply_all(
                vec![(envelope, event.clone(), tracing::Span::current())],
                progress,
            )
            .await
            .map(|mut outcomes| outcomes.pop().unwrap_or(Applied::Duplicate));
        crate::metric::event_handler_duration_seconds(service.clone(), incoming.label)
            .record(started.elapsed().as_secs_f64());
        let (handled, detail) = match outcome {
            Ok(applied) => {
                self.record_applied(&incoming, &applied);
                (Handled::Done, String::new())
            }
            Err(e) => {
                crate::metric::events_failed_total(service.clone(), incoming.label).increment(1);
                (e.handled(), Chain(&e).to_string())
            }
        };
        self.settle(session, &incoming, handled, &detail).await
    }

    fn record_applied(&self, incoming: &Incoming, applied: &Applied) {
        let Ok((envelope, _)) = &incoming.decoded else {
            return;
        };
        let label = incoming.label;
        let outcome = match applied {
            Applied::Applied => {
                tracing::info!(event_id = %short(&envelope.event_id), event_type = label, correlation_id = %short(envelope.chain_id()), producer = %short(&envelope.producer), "event applied");
                "applied"
            }
            Applied::Duplicate => {
                tracing::info!(event_id = %short(&envelope.event_id), event_type = label, correlation_id = %short(envelope.chain_id()), "event already applied; duplicate acked");
                "duplicate"
            }
        };
        crate::metric::events_consumed_total(
            self.broker.settings().service_name.clone(),
            label,
            outcome,
        )
        .increment(1);
    }

    /// Apply events in order in one unit of work, each recorded in the inbox with its
    /// effect. An event already in the inbox (redelivered, or twice in this batch) changes
    /// nothing. While the store cannot be reached the deliveries stay in hand and the unit
    /// runs again once it answers: nothing is wrong with the events, so no retry is spent
    /// and nothing is parked for it.
    async fn apply_all(
        &self,
        items: Vec<Ready<'_>>,
        progress: &Progress,
    ) -> Result<Vec<Applied>, HandleError> {
        let mut attempt = 0;
        // The wait before the next try while the store is out; it grows across tries, since
        // a store that answers `SELECT 1` may still refuse writes (a full disk).
        let mut outage: Option<Duration> = None;
        loop {
            match self.apply_once(&items).await {
                Err(HandleError::Store(e)) if crate::store::is_unavailable(&e) => {
                    outage = Some(self.wait_for_store(&e, progress, outage).await);
                }
                // Lost a race with another replica (serialization failure, deadlock): run
                // the whole unit again here; the broker's retry queue is for failures that
                // need time, not for this.
                Err(HandleError::Store(e)) if is_retryable(&e) && attempt < RACE_RETRIES => {
                    tracing::debug!(attempt, error = %e, "store transaction lost a race; running it again");
                    race_backoff(attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Hold the consumer until the store answers a `SELECT 1` again, polling with backoff
    /// from `previous` (the wait of the try before, within one outage); the watchdog is kept
    /// from taking the pause for a stall. Returns the last wait.
    async fn wait_for_store(
        &self,
        error: &sqlx::Error,
        progress: &Progress,
        previous: Option<Duration>,
    ) -> Duration {
        let service = &self.broker.settings().service_name;
        if previous.is_none() {
            tracing::warn!(service = %service, error = %Chain(error), "the store cannot be reached or written; the consumer holds its deliveries until it can (no retry is spent)");
        }
        let paused = crate::metric::consumer_paused(service.clone());
        paused.set(1.0);
        let started = Instant::now();
        let mut wait = previous.map_or(Duration::from_millis(200), |w| (w * 2).min(MAX_PAUSE));
        loop {
            progress.touch();
            tokio::time::sleep(wait).await;
            progress.touch();
            let probe = tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(self.outbox.store().pool()),
            )
            .await;
            if matches!(probe, Ok(Ok(_))) {
                break;
            }
            wait = (wait * 2).min(MAX_PAUSE);
        }
        paused.set(0.0);
        tracing::info!(service = %service, paused_for = ?started.elapsed(), "the store answers again; the consumer tries its deliveries again");
        wait
    }

    /// Each item is applied inside its own `process` span, so what its handler emits
    /// continues that message's trace.
    async fn apply_once(&self, items: &[Ready<'_>]) -> Result<Vec<Applied>, HandleError> {
        let mut work = self.outbox.begin().await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for (envelope, event, span) in items {
            let applied = async {
                match inbox::record(&mut work, envelope).await? {
                    Recorded::New => {}
                    Recorded::Duplicate => return Ok(Applied::Duplicate),
                    Recorded::Conflict => {
                        return Err(HandleError::Conflict(format!(
                            "event {} was applied before with another body",
                            short(&envelope.event_id)
                        )))
                    }
                }
                work.caused_by(envelope);
                AssertUnwindSafe((self.handler)(&mut work, envelope, event.clone()))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(HandleError::Retry("handler panicked".into())))?;
                Ok(Applied::Applied)
            }
            .instrument(span.clone())
            .await?;
            outcomes.push(applied);
        }
        work.commit().await?;
        Ok(outcomes)
    }
}
