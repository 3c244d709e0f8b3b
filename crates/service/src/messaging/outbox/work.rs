//! The unit of work (docs/architecture.md §5): a store transaction and the events it causes,
//! committed together. Every HTTP handler and event handler writes through it.

use sqlx::{Any, AnyConnection, Transaction};
use tracing::Instrument;

use super::leader::NOTIFY_CHANNEL;
use super::{insert, Outbox};
use crate::envelope::Envelope;
use crate::events::Event;
use crate::store::Dialect;

/// Why an event did not join the outbox.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EmitError {
    /// The version this role emits of the event's type cannot say it: `EVENT_EMIT_VERSIONS`
    /// holds the type back until every consumer reads the newer version.
    #[error("{0} (EVENT_EMIT_VERSIONS holds it back until its consumers read the newer version)")]
    Unsayable(String),
    #[error("store")]
    Store(#[from] sqlx::Error),
}

/// A store transaction and the events it causes: both land at [`Work::commit`] or neither
/// does. It dereferences to the transaction's connection for the role's own queries.
pub(crate) struct Work {
    tx: Transaction<'static, Any>,
    outbox: Outbox,
    /// The event being handled, when this work applies one: emitted events join its chain.
    cause: Option<Cause>,
    /// The rows emitted, handed to the relay after the commit.
    emitted: Vec<super::OutboxRow>,
}

struct Cause {
    event_id: String,
    chain_id: String,
}

impl Work {
    pub(super) async fn begin(outbox: Outbox) -> sqlx::Result<Self> {
        Ok(Self {
            tx: outbox.store.begin().await?,
            outbox,
            cause: None,
            emitted: Vec::new(),
        })
    }

    /// Events emitted from now on are caused by `envelope` (same correlation id, causation
    /// id = its event id).
    pub(crate) fn caused_by(&mut self, envelope: &Envelope) {
        self.cause = Some(Cause {
            event_id: envelope.event_id.clone(),
            chain_id: envelope.chain_id().to_string(),
        });
    }

    /// Whether `event` can be said in the version this role emits of its type; an
    /// [`EmitError::Unsayable`] otherwise, before anything is written.
    pub(crate) fn sayable(&self, event: &Event) -> Result<(), EmitError> {
        let version = self.outbox.emit.of(event.event_type());
        event
            .data_at(version)
            .map(drop)
            .map_err(EmitError::Unsayable)
    }

    /// Add `event` to the outbox inside this transaction, in the version this role emits of
    /// its type (`EVENT_EMIT_VERSIONS`, docs/architecture.md §3).
    pub(crate) async fn emit(&mut self, event: Event) -> Result<(), EmitError> {
        let mut envelope = Envelope::pinned(&event, &self.outbox.producer, &self.outbox.emit)
            .map_err(EmitError::Unsayable)?;
        if let Some(cause) = &self.cause {
            envelope.correlation_id = Some(cause.chain_id.clone());
            envelope.causation_id = Some(cause.event_id.clone());
        }
        // The event's PRODUCER `create` span, under the request's or the delivery's span; its
        // context goes into the row and, unchanged, into the message's headers.
        let span = create_span(&self.outbox.exchange, &envelope);
        let carrier = crate::trace::Carrier::of(&span);
        let row = insert(&mut self.tx, &envelope, carrier)
            .instrument(span)
            .await?;
        self.emitted.push(row);
        tracing::info!(event_id = %envelope.event_id, event_type = %envelope.event_type, event_version = envelope.event_version, correlation_id = %envelope.chain_id(), "event committed to the outbox");
        Ok(())
    }

    /// Commit, and hand the emitted rows to this process's relay when it is the one that
    /// relays; on PostgreSQL, when another replica relays, wake that one instead (a
    /// notification delivered at commit).
    pub(crate) async fn commit(mut self) -> sqlx::Result<()> {
        let leading = self.outbox.leading();
        if !self.emitted.is_empty() && !leading && self.outbox.store.dialect() == Dialect::Postgres
        {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(NOTIFY_CHANNEL)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        if !self.emitted.is_empty() {
            if leading {
                self.outbox.hand_off(std::mem::take(&mut self.emitted));
            } else {
                self.outbox.wake();
            }
        }
        Ok(())
    }
}

impl std::ops::Deref for Work {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Work {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// The PRODUCER `create` span of an event (none when traces are not exported).
fn create_span(exchange: &str, envelope: &Envelope) -> tracing::Span {
    use crate::trace::attr;
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(target: crate::trace::TARGET, "create",
        otel.name = %format_args!("create {exchange}:{}", envelope.event_type), otel.kind = "producer",
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    let mut attributes = crate::trace::message_attributes(
        ("create", "create"),
        format!("{exchange}:{}", envelope.event_type),
        &envelope.event_type,
        &envelope.event_id,
        envelope.chain_id(),
    );
    if let Some(cause) = &envelope.causation_id {
        attributes.push((attr::CAUSATION_ID, cause.clone()));
    }
    crate::trace::set(&span, &attributes);
    crate::trace::start(&span, None, false);
    span
}
