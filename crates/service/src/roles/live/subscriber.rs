//! One open stream (docs/architecture.md §12): the response body itself. hyper polls it for
//! the next frame whenever the client can take one, so a stream costs one task (the
//! connection's) and no queue of its own: what it has not read yet waits in the hub's
//! broadcast, which holds each event once for every subscriber, bounded by
//! `LIVE_CLIENT_BUFFER` events. A subscriber that falls further behind fails its body, and
//! hyper aborts the connection instead of ending the stream cleanly, so neither a proxy nor
//! the browser takes a cut stream for a finished one; the browser resumes by id.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::{Instant, Sleep};

use super::api::Live;
use super::hub::{Attach, Item, Position, Shown, Signal};
use super::stream::Replay;
use crate::domain::MeetingRole;
use crate::http::ApiError;
use crate::roles::grants;

/// A stream's first bytes: proxies and browsers see it open before any event.
const CONNECTED: &[u8] = b": connected\n\n";

/// Why a stream failed mid-way: its body ends with this error, and the connection is aborted.
#[derive(Debug, thiserror::Error)]
pub(super) enum Cut {
    #[error("the client fell more than LIVE_CLIENT_BUFFER events behind")]
    FellBehind,
    #[error("the broker's stream could not be read further for a resume")]
    StreamLost,
}

/// The body of a stream whose credential has expired: it asks the page to renew it.
pub(super) fn expired() -> Body {
    crate::metric::live_reauths_total().increment(1);
    let frames = [Bytes::from_static(CONNECTED), reauth_frame()];
    Body::from_stream(futures_util::stream::iter(
        frames.map(Ok::<_, std::convert::Infallible>),
    ))
}

fn reauth_frame() -> Bytes {
    Bytes::from_static(
        b"event: reauth\ndata: {\"reason\":\"the credential expires: POST /live/session again and reconnect with ?last_event_id=\"}\n\n",
    )
}

/// The data of an `event: resync` frame.
#[derive(Serialize)]
struct Resync<'a> {
    reason: &'a str,
}

fn resync_frame(why: &str) -> Bytes {
    let data = serde_json::to_string(&Resync { reason: why }).unwrap_or_default();
    Bytes::from(format!("event: resync\ndata: {data}\n\n"))
}

/// One of the streams a user may hold open on this replica.
pub(super) struct Seat {
    live: Arc<Live>,
    user: String,
}

impl Seat {
    pub(super) fn take(live: &Arc<Live>, user: &str) -> Result<Self, ApiError> {
        let mut open = live.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(user.to_string()).or_default();
        if *held >= live.settings.streams_per_user {
            crate::metric::live_streams_refused_total().increment(1);
            return Err(ApiError::TooMany(format!(
                "{} already holds {held} open streams on this replica (LIVE_STREAMS_PER_USER); one stream follows several meetings",
                crate::text::short(user)
            )));
        }
        *held += 1;
        crate::metric::live_streams_open().increment(1.0);
        Ok(Self {
            live: live.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut open = self.live.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.user) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.user);
            }
        }
        crate::metric::live_streams_open().decrement(1.0);
    }
}

/// Where a subscriber reads from.
enum Source {
    /// Not attached yet: the first poll attaches, resuming after the position if there is one.
    Start(Option<Position>),
    Live(broadcast::Receiver<Signal>),
    /// Reading the broker's stream after `from`; `checked` once the item at `from` was
    /// seen to be the one the client got.
    Replay {
        replay: Box<Replay>,
        from: Position,
        checked: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// The stream has said its last frame (or its client is gone): the body ends cleanly.
    Done,
}

/// Why a step of a stream ends it.
enum End {
    /// It ends cleanly, once the frames queued so far are sent.
    Done,
    /// It fails mid-way: the body fails with the reason.
    Cut(Cut),
}

/// One open stream.
pub(super) struct Subscriber {
    live: Arc<Live>,
    user: String,
    meetings: HashSet<String>,
    /// Meetings whose managing role this user lost in the stream, before the copy of the
    /// grants caught up with it.
    denied: HashSet<Arc<str>>,
    /// Meetings whose managing role this user gained in the stream (the copy may lag).
    granted: HashSet<Arc<str>>,
    /// The last position handled: everything up to it was sent or was not for this client.
    covered: Option<Position>,
    /// The last id the client was given.
    shown_id: Option<Position>,
    source: Source,
    /// Frames decided on and not yet taken by the body: a resume's backlog, a last word.
    pending: VecDeque<Bytes>,
    /// When the stream, idle until then, gets a keep-alive.
    idle_at: Instant,
    /// When the stream asks for a fresh credential and ends.
    reauth_at: Instant,
    /// Armed for the earlier of the two deadlines when it was last set; moved only when it
    /// fires (a frame moves `idle_at` without touching the timer wheel).
    timer: Pin<Box<Sleep>>,
    _seat: Seat,
}

impl Subscriber {
    pub(super) fn new(
        live: Arc<Live>,
        seat: Seat,
        user: String,
        meetings: HashSet<String>,
        resume: Option<Position>,
        reauth_at: Instant,
    ) -> Self {
        // Keep-alives go to idle streams only: any frame restarts the wait. The first wait
        // is drawn from half to all of the interval, so streams opened together (a replica's
        // browsers reconnecting to this one) do not all fall idle in the same instant.
        let every = live.settings.keepalive;
        let idle_at = Instant::now() + somewhere_between(every / 2, every);
        Self {
            live,
            user,
            meetings,
            denied: HashSet::new(),
            granted: HashSet::new(),
            covered: resume,
            shown_id: resume,
            source: Source::Start(resume),
            pending: VecDeque::from([Bytes::from_static(CONNECTED)]),
            idle_at,
            reauth_at,
            timer: Box::pin(tokio::time::sleep_until(idle_at.min(reauth_at))),
            _seat: seat,
        }
    }

    /// The stream as a response body.
    pub(super) fn into_body(self) -> Body {
        Body::from_stream(futures_util::stream::unfold(self, |mut sub| async move {
            let frame = sub.next_frame().await?;
            Some((frame, sub))
        }))
    }

    /// The next frame to write; `None` once the stream has ended cleanly.
    async fn next_frame(&mut self) -> Option<Result<Bytes, Cut>> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.idle_at = Instant::now() + self.live.settings.keepalive;
                return Some(Ok(frame));
            }
            let step = match &self.source {
                Source::Done => return None,
                Source::Start(resume) => {
                    let resume = *resume;
                    Box::pin(self.attach(resume)).await
                }
                _ => self.step().await,
            };
            match step {
                Ok(()) => {}
                Err(End::Done) => self.source = Source::Done,
                Err(End::Cut(why)) => {
                    self.source = Source::Done;
                    match why {
                        Cut::FellBehind => self.slow(),
                        Cut::StreamLost => tracing::warn!("a resume's read of the live stream failed; the stream is cut and the client resumes"),
                    }
                    return Some(Err(why));
                }
            }
        }
    }

    fn slow(&self) {
        crate::metric::live_slow_disconnects_total().increment(1);
        tracing::info!(user = %crate::text::short(&self.user), "a live stream fell behind and was ended; it resumes by id");
    }

    /// Start following the hub, or the broker's stream for an id older than the memory.
    async fn attach(&mut self, resume: Option<Position>) -> Result<(), End> {
        let live = self.live.clone();
        match live.hub.attach(resume) {
            Attach::Live { backlog, rx } => {
                if resume.is_some() {
                    crate::metric::live_resumes_total("memory").increment(1);
                }
                self.source = Source::Live(rx);
                self.send_all(backlog).await
            }
            Attach::Replay => {
                let Some(from) = resume else {
                    return Err(End::Done);
                };
                crate::metric::live_resumes_total("stream").increment(1);
                // Boxed, as every rare await here: a stream's state is what it holds while it
                // waits for the next event, not the largest thing it ever does.
                self.source = Box::pin(self.replay(from)).await.ok_or(End::Done)?;
                Ok(())
            }
            Attach::Resync(why) => self.resync(why),
        }
    }

    /// Wait for the next thing that happens to the stream and act on it.
    async fn step(&mut self) -> Result<(), End> {
        let live = self.live.clone();
        tokio::select! {
            _ = live.stop.cancelled() => {
                // Spread the reconnects of every browser of this replica over 1–5 s.
                let spread = somewhere_between(Duration::from_secs(1), Duration::from_secs(5));
                self.last(Bytes::from(format!("retry: {}\n: this replica is stopping\n\n", spread.as_millis())))
            }
            _ = self.timer.as_mut() => {
                let now = Instant::now();
                if now >= self.reauth_at {
                    crate::metric::live_reauths_total().increment(1);
                    return self.last(reauth_frame());
                }
                let due = self.idle_at <= now;
                if due {
                    self.idle_at = now + live.settings.keepalive;
                }
                let next = self.idle_at.min(self.reauth_at);
                self.timer.as_mut().reset(next);
                if due {
                    Box::pin(self.keep_alive()).await
                } else {
                    Ok(())
                }
            }
            next = next_item(&mut self.source) => match next {
                Next::Item(item) => self.handle(&item).await,
                Next::Replayed(item) => Box::pin(self.replayed(item)).await,
                Next::Reset => self.resync("the stream was declared anew"),
                Next::Lagged => Err(End::Cut(Cut::FellBehind)),
                Next::Ended => Err(End::Done),
                Next::Lost => Err(End::Cut(Cut::StreamLost)),
            }
        }
    }

    /// Queue the stream's last frame.
    fn last(&mut self, frame: Bytes) -> Result<(), End> {
        self.pending.push_back(frame);
        Err(End::Done)
    }

    /// Start reading the broker's stream after `from`.
    async fn replay(&mut self, from: Position) -> Option<Source> {
        let live = self.live.clone();
        let permit = live.replays.clone().acquire_owned().await.ok()?;
        match Box::pin(Replay::start(&live.broker, &live.settings, from.offset)).await {
            Ok(replay) => Some(Source::Replay {
                replay: Box::new(replay),
                from,
                checked: false,
                _permit: permit,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the live stream for a resume; the client retries");
                None
            }
        }
    }

    /// An item read from the broker's stream during a replay.
    async fn replayed(&mut self, item: Item) -> Result<(), End> {
        let Source::Replay { from, checked, .. } = &mut self.source else {
            return Ok(());
        };
        if !*checked {
            if item.position.offset < from.offset {
                return Ok(()); // the chunk holding `from` starts earlier
            }
            if item.position != *from {
                let why = if item.position.offset > from.offset {
                    "the id is older than the stream holds"
                } else {
                    "the id names another event of this offset"
                };
                return self.resync(why);
            }
            *checked = true;
            return Ok(());
        }
        self.handle(&item).await?;
        self.join_live().await
    }

    /// Leave the replay for the live tail once the memory reaches back far enough.
    async fn join_live(&mut self) -> Result<(), End> {
        let (Source::Replay { checked: true, .. }, Some(covered)) = (&self.source, self.covered)
        else {
            return Ok(());
        };
        if let Some(Attach::Live { backlog, rx }) = self.live.hub.join_after(covered) {
            if let Source::Replay { replay, .. } =
                std::mem::replace(&mut self.source, Source::Live(rx))
            {
                Box::pin(replay.close()).await;
            }
            self.send_all(backlog).await?;
        }
        Ok(())
    }

    async fn send_all(&mut self, items: Vec<Arc<Item>>) -> Result<(), End> {
        for item in items {
            self.handle(&item).await?;
        }
        Ok(())
    }

    /// Send an item if it is for this client, in order, once.
    async fn handle(&mut self, item: &Item) -> Result<(), End> {
        if self
            .covered
            .is_some_and(|c| item.position.offset <= c.offset)
        {
            return Ok(());
        }
        self.covered = Some(item.position);
        let Some(shown) = &item.event else {
            return Ok(());
        };
        if !self.may_see(shown).await {
            return Ok(());
        }
        if self.pending.len() >= self.live.settings.client_buffer.max(4) {
            return Err(End::Cut(Cut::FellBehind));
        }
        self.pending.push_back(shown.frame.clone());
        self.shown_id = Some(item.position);
        crate::metric::live_events_sent_total().increment(1);
        Ok(())
    }

    /// The read policy, at the moment of sending: any signed-in user reads a meeting's
    /// events, as over REST; `permission.*` only its managers, by the live role's copy of
    /// the grants — and never after the stream itself showed this user's role revoked, always
    /// after it showed it granted.
    async fn may_see(&mut self, shown: &Shown) -> bool {
        if !self.meetings.contains(&*shown.meeting_id) {
            return false;
        }
        let Some(subject) = &shown.subject else {
            return true;
        };
        if subject.user == self.user && subject.role == MeetingRole::Manager {
            if subject.granted {
                self.denied.remove(&shown.meeting_id);
                self.granted.insert(shown.meeting_id.clone());
            } else {
                self.granted.remove(&shown.meeting_id);
                self.denied.insert(shown.meeting_id.clone());
            }
        }
        if self.denied.contains(&shown.meeting_id) {
            return false;
        }
        // The stream itself made this user a manager: its own grant, and what follows it, are
        // shown even before the copy of the grants (fed by the queue) has caught up.
        if self.granted.contains(&shown.meeting_id) {
            return true;
        }
        match Box::pin(grants::is_manager(
            &self.live.pool,
            &shown.meeting_id,
            &self.user,
        ))
        .await
        {
            Ok(manager) => manager,
            Err(e) => {
                tracing::warn!(error = %crate::text::Chain(&e), "cannot check a manager for a live permission event; not shown");
                false
            }
        }
    }

    /// A keep-alive: the id of the last position handled when it moved (the browser then
    /// resumes from there, however long nothing was for it), else a comment.
    async fn keep_alive(&mut self) -> Result<(), End> {
        self.join_live().await?;
        let moved = self.covered.filter(|c| Some(*c) != self.shown_id);
        let frame = match moved {
            Some(c) => {
                self.shown_id = Some(c);
                Bytes::from(format!("id: {c}\n\n"))
            }
            None => Bytes::from_static(b": keep-alive\n\n"),
        };
        self.pending.push_back(frame);
        Ok(())
    }

    fn resync(&mut self, why: &'static str) -> Result<(), End> {
        crate::metric::live_resyncs_total().increment(1);
        self.last(resync_frame(why))
    }
}

impl Drop for Subscriber {
    /// A stream whose connection is dropped while it is behind the broadcast — its client
    /// stopped reading and the write timeout closed it — fell behind too.
    fn drop(&mut self) {
        if let Source::Live(rx) = &mut self.source {
            if matches!(
                rx.try_recv(),
                Err(broadcast::error::TryRecvError::Lagged(_))
            ) {
                self.slow();
            }
        }
    }
}

enum Next {
    Item(Arc<Item>),
    Replayed(Item),
    Reset,
    Lagged,
    /// The hub is gone: the role is stopping.
    Ended,
    /// The replay's read of the broker's stream failed.
    Lost,
}

async fn next_item(source: &mut Source) -> Next {
    match source {
        Source::Live(rx) => match rx.recv().await {
            Ok(Signal::Item(item)) => Next::Item(item),
            Ok(Signal::Reset) => Next::Reset,
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => Next::Ended,
        },
        Source::Replay { replay, .. } => match Box::pin(replay.next()).await {
            Ok(Some(item)) => Next::Replayed(item),
            Ok(None) | Err(_) => Next::Lost,
        },
        Source::Start(_) | Source::Done => std::future::pending().await,
    }
}

/// A duration drawn at random from `from` to `to`, so that many connections doing the same
/// thing do not do it in the same instant.
fn somewhere_between(from: Duration, to: Duration) -> Duration {
    let fraction = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
    from + to.saturating_sub(from).mul_f64(fraction)
}
