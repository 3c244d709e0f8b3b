//! The inbox: which events this role has applied, each with a digest of its envelope.
//! Written in the handler's transaction, so an event is applied exactly once however often
//! it is delivered; the same `event_id` with another body is a conflict, not a duplicate
//! (docs/architecture.md §5).

use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::envelope::Envelope;
use crate::store::now_ms;

/// What the inbox says of an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// First seen: recorded now; apply it.
    New,
    /// Applied before, with the same body: skip it.
    Duplicate,
    /// Applied before with another body: someone reused the id.
    Conflict,
}

/// The digest stored for an envelope (its canonical serialisation).
fn digest(envelope: &Envelope) -> String {
    let hash = Sha256::digest(envelope.to_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Record `envelope` as applied, unless it was.
pub(crate) async fn record(tx: &mut AnyConnection, envelope: &Envelope) -> sqlx::Result<Recorded> {
    let hash = digest(envelope);
    let done = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, applied_at_ms, body_hash, event_version)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&envelope.event_id)
    .bind(&envelope.event_type)
    .bind(now_ms())
    .bind(&hash)
    .bind(i64::from(envelope.event_version))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Recorded::New);
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT body_hash FROM inbox WHERE event_id = $1")
            .bind(&envelope.event_id)
            .fetch_one(&mut *tx)
            .await?;
    // Rows from before digests were kept have none: a duplicate, as they were then.
    Ok(match stored {
        Some(stored) if stored != hash => Recorded::Conflict,
        _ => Recorded::Duplicate,
    })
}
