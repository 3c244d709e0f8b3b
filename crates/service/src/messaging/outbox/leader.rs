//! Which replica relays the outbox (docs/architecture.md §5), and how it learns of commits
//! on the others: a session-held advisory lock and LISTEN/NOTIFY on PostgreSQL.

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::Any;

use super::IDLE_POLL;
use crate::store::{Dialect, Store};

/// The PostgreSQL notification channel a commit with events signals.
pub(super) const NOTIFY_CHANNEL: &str = "outbox";
/// The advisory lock key of the relay: one replica of a role relays at a time.
const RELAY_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

/// Which replica relays. On SQLite the process owns its store and always does. On
/// PostgreSQL every replica commits to the one outbox, but only the replica holding the
/// role's advisory lock publishes, so the outbox leaves in commit order and each row is
/// published once in the normal case. The lock is held by a session, not a transaction: no
/// row is locked while confirms are awaited. When the holder dies its session ends, the
/// lock is released, and a survivor takes over within [`IDLE_POLL`]; rows the dead relay
/// had published but not yet deleted go out again (the consumers' inboxes absorb them).
pub(super) enum Lead {
    Always,
    Lock(Option<PoolConnection<Any>>),
}

impl Lead {
    pub(super) fn for_store(store: &Store) -> Self {
        match store.dialect() {
            Dialect::Sqlite => Lead::Always,
            Dialect::Postgres => Lead::Lock(None),
        }
    }

    /// Whether this replica relays now: the lock is still held (its session answers), or
    /// was free and is taken.
    pub(super) async fn hold(&mut self, store: &Store, service: &str) -> bool {
        let Lead::Lock(held) = self else {
            return true;
        };
        if let Some(conn) = held {
            if sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok() {
                return true;
            }
            tracing::warn!(
                service,
                "lost the outbox relay lock's session; trying to take it again"
            );
            if let Some(conn) = held.take() {
                drop(conn.detach());
            }
        }
        let Ok(mut conn) = store.pool().acquire().await else {
            return false;
        };
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or(false);
        if taken {
            tracing::info!(service, "this replica relays the outbox");
            *held = Some(conn);
        }
        taken
    }

    pub(super) async fn release(self) {
        if let Lead::Lock(Some(mut conn)) = self {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(RELAY_LOCK)
                .execute(&mut *conn)
                .await;
        }
    }
}

/// Notifications of commits on other replicas (PostgreSQL), when listening works.
pub(super) async fn listen(store: &Store) -> Option<PgListener> {
    if store.dialect() != Dialect::Postgres {
        return None;
    }
    let mut listener = PgListener::connect(store.url()).await.ok()?;
    listener.listen(NOTIFY_CHANNEL).await.ok()?;
    Some(listener)
}

pub(super) async fn notified(listener: &mut Option<PgListener>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                // The listener reconnects on its next call; poll meanwhile.
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
        None => std::future::pending().await,
    }
}
