//! The inbox: which events this role has applied. Written in the handler's transaction, so
//! an event is applied exactly once however often it is delivered.

use sqlx::AnyConnection;

use crate::envelope::Envelope;
use crate::store::now_ms;

/// Record `envelope` as applied. `false` means it already was: skip it.
pub(crate) async fn record(tx: &mut AnyConnection, envelope: &Envelope) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, applied_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&envelope.event_id)
    .bind(&envelope.event_type)
    .bind(now_ms())
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
