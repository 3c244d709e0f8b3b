//! Publisher confirms matched to their messages by id (docs/architecture.md §5, "Which
//! publish came back").
//!
//! RabbitMQ sends a mandatory message it cannot route back (`basic.return`) before it acks
//! it, but a return carries no delivery tag, and the ack of another message may come between
//! the two — or one `multiple` ack may cover both. lapin hands each return to whichever
//! confirm it resolves next (the oldest return waiting goes to each confirm it resolves), so
//! with several publishes in flight an unroutable event can be confirmed as routed (and
//! deleted from the outbox: lost) while a routed one is reported unroutable. Only the
//! message's own `message_id` tells them apart.
//!
//! So every confirm of a channel goes to one task. It polls all of them in *sweeps*, records
//! each return under the id it carries, whichever confirm brought it, and gives a publish
//! its outcome once no return of it can still come:
//! - a return with its id was seen: unroutable;
//! - its own confirm brought no return: none was waiting then, so its own (which comes
//!   before its ack) went to a confirm resolved earlier — seen by the next full sweep, once
//!   every publish begun by then has handed its confirm over;
//! - otherwise a later confirm that brought none (a *witness*) proves the same for it;
//! - or the channel is quiet: every publish begun is confirmed, so no return is waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::publisher::{Published, CONFIRM_TIMEOUT};

/// The outcome of one publish, once it is certain.
pub struct Pending(oneshot::Receiver<lapin::Result<Published>>);

impl Pending {
    pub(super) async fn outcome(self) -> lapin::Result<Published> {
        self.0.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> lapin::Error {
    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Error, "basic.publish").into()
}

type Reply = oneshot::Sender<lapin::Result<Published>>;

enum Note {
    /// Sent in `sweep`'s time; its confirm to poll.
    Sent {
        id: Option<String>,
        confirm: PublisherConfirm,
        reply: Reply,
        began: u64,
    },
    /// A send failed or was dropped: only a wake-up.
    Abort,
}

/// What senders and the task share: the current sweep, and the publishes begun in each
/// sweep's time whose confirm is not handed over yet.
#[derive(Default)]
struct Shared {
    sweep: u64,
    open: BTreeMap<u64, usize>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The confirms of one channel; cheap to clone.
#[derive(Clone)]
pub(super) struct Confirms {
    notes: mpsc::UnboundedSender<Note>,
    shared: Arc<Mutex<Shared>>,
}

impl Confirms {
    /// Start the task that matches this channel's confirms.
    pub(super) fn start() -> Self {
        let (notes, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(drive(rx, shared.clone()));
        Self { notes, shared }
    }

    /// Mark a publish begun, before lapin numbers it; the guard ends it.
    pub(super) fn begin(&self) -> Sending<'_> {
        let mut shared = lock(&self.shared);
        let began = shared.sweep;
        *shared.open.entry(began).or_default() += 1;
        Sending {
            confirms: self,
            began,
            done: false,
        }
    }

    /// Close a begun publish: the note is queued before the count drops, under the lock, so
    /// the task never sees a publish closed whose confirm it has not been given.
    fn end(&self, began: u64, note: Note) {
        let mut shared = lock(&self.shared);
        let _ = self.notes.send(note);
        if let Some(n) = shared.open.get_mut(&began) {
            *n -= 1;
            if *n == 0 {
                shared.open.remove(&began);
            }
        }
    }
}

/// A publish on its way; dropped unfinished (failed or cancelled), no confirm will come.
pub(super) struct Sending<'a> {
    confirms: &'a Confirms,
    began: u64,
    done: bool,
}

impl Sending<'_> {
    /// Hand over the publish's confirm.
    pub(super) fn sent(mut self, id: Option<String>, confirm: PublisherConfirm) -> Pending {
        self.done = true;
        let (reply, outcome) = oneshot::channel();
        let began = self.began;
        let note = Note::Sent {
            id,
            confirm,
            reply,
            began,
        };
        self.confirms.end(began, note);
        Pending(outcome)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.confirms.end(self.began, Note::Abort);
        }
    }
}

/// What a confirm said.
enum Heard {
    Ack { brought_none: bool },
    Nack,
    Failed(lapin::Error),
    TimedOut,
}

struct Entry {
    id: Option<String>,
    /// Until the outcome is given.
    reply: Option<Reply>,
    /// Until it resolves — also after it timed out: a late confirm may still bring another
    /// publish's return.
    confirm: Option<PublisherConfirm>,
    /// Until it resolves or times out.
    deadline: Option<Instant>,
    began: u64,
    /// The last sweep that found it unresolved.
    last_pending: Option<u64>,
    /// What it said, and the sweep that found it.
    heard: Option<(Heard, u64)>,
}

#[derive(Default)]
struct Driver {
    sweep: u64,
    entries: Vec<Entry>,
    /// Returns by the message id they carry.
    returned: HashMap<String, VecDeque<String>>,
    /// Witnesses not yet usable: (the sweep that found one, the sweep it covers up to).
    witnesses: Vec<(u64, u64)>,
    /// Every acked publish found in this sweep or earlier has its return seen, if any.
    covered: Option<u64>,
    /// A confirm failed: the channel broke, and lapin resolved the rest without taking the
    /// returns waiting, so a quiet channel proves nothing.
    broken: bool,
}

impl Driver {
    fn note(&mut self, note: Note) {
        if let Note::Sent {
            id,
            confirm,
            reply,
            began,
        } = note
        {
            self.entries.push(Entry {
                id,
                reply: Some(reply),
                confirm: Some(confirm),
                deadline: Some(Instant::now() + CONFIRM_TIMEOUT),
                began,
                last_pending: None,
                heard: None,
            });
        }
    }

    /// Poll every confirm not yet resolved; whether any resolved.
    fn poll_all(&mut self, cx: &mut Context<'_>, s: u64) -> bool {
        let now = Instant::now();
        let mut any = false;
        for entry in &mut self.entries {
            let Some(confirm) = entry.confirm.as_mut() else {
                continue;
            };
            let heard = match Pin::new(confirm).poll(cx) {
                Poll::Pending if entry.deadline.is_none_or(|d| now < d) => {
                    entry.last_pending = Some(s);
                    continue;
                }
                Poll::Pending => {
                    // No confirm in time: the connection is presumed dead. The publish's
                    // outcome is given now; the confirm is still polled for its return.
                    entry.deadline = None;
                    entry.heard = Some((Heard::TimedOut, s));
                    any = true;
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    self.broken = true;
                    Heard::Failed(e)
                }
                Poll::Ready(Ok(confirmation)) => {
                    // `witness`: lapin took the oldest return waiting when it resolved this
                    // one, and there was none.
                    let (ack, returned, witness) = match confirmation {
                        Confirmation::Ack(r) => (true, r, true),
                        Confirmation::Nack(r) => (false, r, true),
                        // Always in confirm mode: a missing confirm is a broken channel.
                        Confirmation::NotRequested => (false, None, false),
                    };
                    let brought_none = returned.is_none();
                    if let Some(message) = returned {
                        let id = message.properties.message_id().as_ref();
                        // A message without an id: lapin's guess is all there is.
                        let id = id.map(|i| i.to_string()).or_else(|| entry.id.clone());
                        let why = message.reply_text.to_string();
                        self.returned
                            .entry(id.unwrap_or_default())
                            .or_default()
                            .push_back(why);
                    }
                    if brought_none && witness {
                        // A witness for the publishes found before it was.
                        let before = entry.last_pending.unwrap_or(0).max(entry.began);
                        if let Some(upto) = before.checked_sub(1) {
                            self.witnesses.push((s, upto));
                        }
                    }
                    if ack {
                        Heard::Ack { brought_none }
                    } else {
                        Heard::Nack
                    }
                }
            };
            entry.confirm = None;
            entry.deadline = None;
            entry.heard.get_or_insert((heard, s));
            any = true;
        }
        any
    }

    /// Give out every outcome that is certain after sweep `s`, which began with no publish
    /// of a sweep before `open_from` still open.
    fn settle(&mut self, s: u64, open_from: Option<u64>, quiet: bool) {
        let closed_before = |sweep: u64| open_from.is_none_or(|o| o > sweep);
        let mut usable = Vec::new();
        self.witnesses.retain(|&(found, upto)| {
            let ready = found < s && closed_before(found);
            if ready {
                usable.push(upto);
            }
            !ready
        });
        if let Some(upto) = usable.into_iter().max() {
            self.covered = Some(self.covered.map_or(upto, |c| c.max(upto)));
        }
        let (returned, covered, broken) = (&mut self.returned, self.covered, self.broken);
        self.entries.retain_mut(|entry| {
            let (Some((heard, found)), Some(_)) = (&entry.heard, &entry.reply) else {
                return entry.reply.is_some() || entry.confirm.is_some();
            };
            let found = *found;
            let own = |returned: &mut HashMap<String, VecDeque<String>>| {
                let id = entry.id.clone().unwrap_or_default();
                returned.get_mut(&id)?.pop_front()
            };
            let outcome = match heard {
                Heard::Failed(e) => Err(e.clone()),
                Heard::Nack => Ok(Published::Nacked),
                Heard::TimedOut => Ok(Published::TimedOut),
                Heard::Ack { brought_none } => match own(returned) {
                    Some(why) => Ok(Published::Unroutable(why)),
                    None if (*brought_none && found < s && closed_before(found))
                        || covered.is_some_and(|c| c >= found)
                        || (quiet && !broken) =>
                    {
                        Ok(Published::Routed)
                    }
                    // Its return may have been waiting when the channel broke: unknown,
                    // so the publisher keeps the event and sends it again.
                    None if quiet => Err(closed()),
                    None => return true,
                },
            };
            if let Some(reply) = entry.reply.take() {
                let _ = reply.send(outcome);
            }
            entry.confirm.is_some()
        });
        if quiet {
            for (id, left) in self.returned.drain() {
                tracing::warn!(message_id = %id, returns = left.len(), "the broker returned a message no publish of this channel is waiting for");
            }
            self.witnesses.clear();
            self.broken = false;
        }
    }

    /// One sweep: poll every confirm, then give out what is certain; whether to sweep again.
    fn sweep(
        &mut self,
        cx: &mut Context<'_>,
        shared: &Mutex<Shared>,
        notes: &mut mpsc::UnboundedReceiver<Note>,
    ) -> bool {
        self.sweep += 1;
        let s = self.sweep;
        let open_from = {
            let mut shared = lock(shared);
            shared.sweep = s;
            shared.open.keys().next().copied()
        };
        // Every publish closed before that look has its note queued: take them all.
        while let Ok(note) = notes.try_recv() {
            self.note(note);
        }
        let any = self.poll_all(cx, s);
        let quiet = self.entries.iter().all(|e| e.confirm.is_none())
            && lock(shared).open.is_empty()
            && notes.is_empty();
        self.settle(s, open_from, quiet);
        // Outcomes waiting on a later sweep get one without waiting for a confirm.
        any && self
            .entries
            .iter()
            .any(|e| e.reply.is_some() && e.heard.is_some())
    }

    /// The earliest deadline of a confirm still awaited.
    fn deadline(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|e| e.deadline).min()
    }
}

/// The task: sweep at every wake-up (a confirm resolved, a publish handed over or ended, a
/// deadline) until the channel's senders are gone and every outcome is given.
async fn drive(mut notes: mpsc::UnboundedReceiver<Note>, shared: Arc<Mutex<Shared>>) {
    let mut driver = Driver::default();
    let mut open = true;
    let timer = tokio::time::sleep(CONFIRM_TIMEOUT);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        while open {
            match notes.poll_recv(cx) {
                Poll::Ready(Some(note)) => driver.note(note),
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        if driver.sweep(cx, &shared, &mut notes) {
            cx.waker().wake_by_ref();
        }
        if let Some(deadline) = driver.deadline() {
            timer.as_mut().reset(deadline);
            let _ = timer.as_mut().poll(cx);
        }
        if !open && driver.entries.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
