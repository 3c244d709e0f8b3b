//! Deleting published rows (docs/architecture.md §5): the rows the broker confirmed are
//! deleted together, in one statement per [`DELETE_EVERY`] rows or [`DELETE_AFTER`], in a
//! task of its own so the relay goes on publishing meanwhile — a delete waits for a store
//! connection behind the requests' transactions. Before the relay reads the table every
//! confirmed row is deleted ([`Deletes::finish`]), so a read never returns one.

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::batch::delete;
use super::{DELETE_AFTER, DELETE_EVERY, IDLE_POLL};
use crate::store::Store;

/// Confirmed rows not deleted yet.
#[derive(Default)]
pub(super) struct Deletes {
    confirmed: Vec<i64>,
    /// When the confirmed rows are deleted at the latest.
    due: Option<Instant>,
    /// The last delete failed: the next waits for `due` (one idle poll later).
    failing: bool,
    /// The delete running, and its rows.
    running: Option<(Vec<i64>, JoinHandle<sqlx::Result<()>>)>,
}

impl Deletes {
    pub(super) fn add(&mut self, seqs: Vec<i64>) {
        if !seqs.is_empty() {
            self.due
                .get_or_insert_with(|| Instant::now() + DELETE_AFTER);
            self.confirmed.extend(seqs);
        }
    }

    /// Collect a finished delete, and start the next when it is due; never waits.
    pub(super) fn tick(&mut self, store: &Store, service: &str) {
        if let Some((_, handle)) = &self.running {
            if !handle.is_finished() {
                return;
            }
            if let Some(Err(e)) = self.collect() {
                tracing::warn!(service, error = %crate::text::Chain(&e), "deleting published events from the outbox failed; trying again");
            }
        }
        let due = self.due.is_some_and(|t| {
            Instant::now() >= t || (self.confirmed.len() >= DELETE_EVERY && !self.failing)
        });
        if due {
            let seqs = std::mem::take(&mut self.confirmed);
            self.due = None;
            let (store, rows) = (store.clone(), seqs.clone());
            let handle = tokio::spawn(async move { delete(&store, &rows).await });
            self.running = Some((seqs, handle));
        }
    }

    /// Every confirmed row deleted: the running delete awaited, then the rest deleted here.
    /// Rows whose delete failed are kept, for a try one idle poll later.
    pub(super) async fn finish(&mut self, store: &Store) -> sqlx::Result<()> {
        if let Some((seqs, handle)) = self.running.take() {
            let result = handle
                .await
                .unwrap_or_else(|e| Err(sqlx::Error::Io(std::io::Error::other(e.to_string()))));
            self.settled(seqs, result)?;
        }
        let seqs = std::mem::take(&mut self.confirmed);
        self.due = None;
        let result = delete(store, &seqs).await;
        self.settled(seqs, result)
    }

    /// When the relay must look again to delete, without a wake-up.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.running {
            Some(_) => Some(Instant::now() + DELETE_AFTER),
            None => self.due,
        }
    }

    /// The result of a finished delete (None when none is running).
    fn collect(&mut self) -> Option<sqlx::Result<()>> {
        let (seqs, mut handle) = self.running.take()?;
        let result = match (&mut handle).now_or_never() {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(sqlx::Error::Io(std::io::Error::other(e.to_string()))),
            None => {
                self.running = Some((seqs, handle));
                return None;
            }
        };
        Some(self.settled(seqs, result))
    }

    fn settled(&mut self, mut seqs: Vec<i64>, result: sqlx::Result<()>) -> sqlx::Result<()> {
        match result {
            Ok(()) => {
                self.failing = self.failing && !self.confirmed.is_empty();
                Ok(())
            }
            Err(e) => {
                seqs.append(&mut self.confirmed);
                self.confirmed = seqs;
                self.due = Some(Instant::now() + IDLE_POLL);
                self.failing = true;
                Err(e)
            }
        }
    }
}
