//! Publisher confirms matched to their messages by id (docs/architecture.md §5, "Which
//! publish came back").
//!
//! RabbitMQ sends a mandatory message it cannot route back (`basic.return`) before it acks
//! it, but a return carries no delivery tag, and the ack of another message may come between
//! the two — or one `multiple` ack may cover both. lapin hands each return to whichever
//! confirm it resolves next, so with several publishes in flight an unroutable event can be
//! confirmed as routed (and deleted from the outbox, lost) while a routed one is reported
//! unroutable. Only the message's own id tells them apart.
//!
//! So every confirm of a channel goes to one task, which records each return under the
//! `message_id` it carries, whichever confirm brought it, and gives the outcomes out only
//! when the channel is quiet: every publish begun has its confirm. By then every return
//! the broker sent has been handed to some confirm (a return comes before the ack of its
//! own message, and each confirm lapin resolves takes the oldest return waiting), so a
//! publish whose id has none was routed.

use std::collections::{HashMap, VecDeque};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

use super::publisher::{Published, CONFIRM_TIMEOUT};

/// The outcome of one publish, once the channel is quiet.
pub struct Pending(oneshot::Receiver<lapin::Result<Published>>);

impl Pending {
    pub(super) async fn outcome(self) -> lapin::Result<Published> {
        self.0.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> lapin::Error {
    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Error, "basic.publish").into()
}

enum Note {
    /// A publish is being sent: the channel is not quiet until it is confirmed or failed.
    Begin,
    /// Sent; its confirm to await.
    Sent {
        id: Option<String>,
        confirm: PublisherConfirm,
        reply: oneshot::Sender<lapin::Result<Published>>,
    },
    /// The send failed or was dropped: no confirm will come.
    Abort,
}

/// The confirms of one channel; cheap to clone.
#[derive(Clone)]
pub(super) struct Confirms(mpsc::UnboundedSender<Note>);

impl Confirms {
    /// Start the task that matches this channel's confirms.
    pub(super) fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(rx));
        Self(tx)
    }

    /// Mark a publish begun; the guard ends it, with its confirm or without.
    pub(super) fn begin(&self) -> Sending<'_> {
        let _ = self.0.send(Note::Begin);
        Sending {
            confirms: self,
            done: false,
        }
    }
}

/// A publish on its way; dropped unfinished (failed or cancelled), it tells the task that no
/// confirm will come.
pub(super) struct Sending<'a> {
    confirms: &'a Confirms,
    done: bool,
}

impl Sending<'_> {
    /// Hand over the publish's confirm.
    pub(super) fn sent(mut self, id: Option<String>, confirm: PublisherConfirm) -> Pending {
        self.done = true;
        let (reply, outcome) = oneshot::channel();
        let _ = self.confirms.0.send(Note::Sent { id, confirm, reply });
        Pending(outcome)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.confirms.0.send(Note::Abort);
        }
    }
}

/// What a confirm said, before the returns are matched.
enum Heard {
    Ack,
    Nack,
    Failed(lapin::Error),
    TimedOut,
}

struct Entry {
    id: Option<String>,
    reply: oneshot::Sender<lapin::Result<Published>>,
    heard: Option<Heard>,
    /// A return without a message id, brought by this entry's confirm: lapin's guess is all
    /// there is.
    own_return: Option<String>,
}

/// The channel's state between quiet moments.
#[derive(Default)]
struct Window {
    sending: usize,
    entries: Vec<Entry>,
    /// Returns by the message id they carry, oldest first.
    returned: HashMap<String, VecDeque<String>>,
}

impl Window {
    fn note(&mut self, note: Note, waiting: &mut FuturesUnordered<Awaited>) {
        match note {
            Note::Begin => self.sending += 1,
            Note::Abort => self.sending -= 1,
            Note::Sent { id, confirm, reply } => {
                self.sending -= 1;
                let index = self.entries.len();
                self.entries.push(Entry {
                    id,
                    reply,
                    heard: None,
                    own_return: None,
                });
                waiting.push(
                    async move { (index, tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await) }
                        .boxed(),
                );
            }
        }
    }

    fn heard(&mut self, index: usize, result: Result<lapin::Result<Confirmation>, Elapsed>) {
        let (heard, returned) = match result {
            Err(_) => (Heard::TimedOut, None),
            Ok(Err(e)) => (Heard::Failed(e), None),
            Ok(Ok(Confirmation::Ack(r))) => (Heard::Ack, r),
            Ok(Ok(Confirmation::Nack(r))) => (Heard::Nack, r),
            // The channel is always in confirm mode; a missing confirm is a broken channel.
            Ok(Ok(Confirmation::NotRequested)) => (Heard::Nack, None),
        };
        if let Some(message) = returned {
            let why = message.reply_text.to_string();
            match message.properties.message_id() {
                Some(id) => self
                    .returned
                    .entry(id.to_string())
                    .or_default()
                    .push_back(why),
                None => self.entries[index].own_return = Some(why),
            }
        }
        self.entries[index].heard = Some(heard);
    }

    /// Every publish begun is confirmed: give each its outcome.
    fn settle(&mut self) {
        for entry in self.entries.drain(..) {
            let by_id = entry
                .id
                .as_ref()
                .and_then(|id| self.returned.get_mut(id)?.pop_front());
            let outcome = match entry.heard {
                Some(Heard::Ack) => Ok(match by_id.or(entry.own_return) {
                    Some(why) => Published::Unroutable(why),
                    None => Published::Routed,
                }),
                Some(Heard::Nack) => Ok(Published::Nacked),
                Some(Heard::TimedOut) => Ok(Published::TimedOut),
                Some(Heard::Failed(e)) => Err(e),
                None => Err(closed()),
            };
            let _ = entry.reply.send(outcome);
        }
        for (id, left) in self.returned.drain() {
            tracing::warn!(message_id = %id, returns = left.len(), "the broker returned a message no publish of this channel carried");
        }
    }
}

type Elapsed = tokio::time::error::Elapsed;
type Awaited = BoxFuture<'static, (usize, Result<lapin::Result<Confirmation>, Elapsed>)>;

/// The task: await every confirm, match the returns at each quiet moment.
async fn drive(mut notes: mpsc::UnboundedReceiver<Note>) {
    let mut window = Window::default();
    let mut waiting: FuturesUnordered<Awaited> = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            note = notes.recv(), if open => match note {
                Some(note) => window.note(note, &mut waiting),
                None => open = false,
            },
            Some((index, result)) = waiting.next(), if !waiting.is_empty() => {
                window.heard(index, result);
            }
            else => break,
        }
        // Notes already sent are part of this moment.
        while let Ok(note) = notes.try_recv() {
            window.note(note, &mut waiting);
        }
        if window.sending == 0 && waiting.is_empty() && !window.entries.is_empty() {
            window.settle();
        }
    }
    window.settle();
}
