//! One replica's view of the live stream: the latest events in memory, in stream order, and
//! their fan-out to the open streams (docs/architecture.md §12).
//!
//! Every event read from the stream becomes an [`Item`] whose SSE frame is rendered once and
//! shared by every connection that sends it. The ring holds the last `LIVE_MEMORY_EVENTS`
//! items with consecutive offsets; a connection attaches under the ring's lock, so what it
//! copies from the ring and what it then receives from the broadcast meet with nothing lost
//! and nothing twice.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::domain::MeetingRole;
use crate::envelope::Envelope;
use crate::events::Event;
use crate::wire::versions::Pins;

/// Where an event is in the stream: its offset, and a tag of its body that tells an offset
/// of this stream from the same offset of a stream deleted and declared anew. An SSE `id`
/// is its text, `<offset>-<tag>`, and means the same on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) offset: u64,
    pub(super) tag: u32,
}

impl Position {
    pub(super) fn of(offset: u64, body: &[u8]) -> Self {
        Self {
            offset,
            tag: fnv1a(body),
        }
    }

    /// Parse an id sent back as `Last-Event-ID` (or `?last_event_id=`).
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an event id of this stream (<offset>-<tag>)");
        let (offset, tag) = text.trim().split_once('-').ok_or_else(bad)?;
        if tag.len() != 8 {
            return Err(bad());
        }
        Ok(Self {
            offset: offset.parse().map_err(|_| bad())?,
            tag: u32::from_str_radix(tag, 16).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:08x}", self.offset, self.tag)
    }
}

/// 32-bit FNV-1a: the same tag on every replica for the same stored body.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A `permission.*` event: whose role changed, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Subject {
    pub(super) user: String,
    pub(super) role: MeetingRole,
    pub(super) granted: bool,
}

/// One event of the stream, as every connection sends it.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) position: Position,
    /// What a stream may show, or `None` for a message no page is shown (not an event of the
    /// catalogue, or from a sender not trusted with it); it still holds its place.
    pub(super) event: Option<Shown>,
}

/// The part of an item a connection filters on, and its rendered frame.
#[derive(Debug)]
pub(super) struct Shown {
    pub(super) meeting_id: Arc<str>,
    /// Set for `permission.*`: shown only to the meeting's managers.
    pub(super) subject: Option<Subject>,
    /// `id:`, `event:` and `data:` lines, ready to write.
    pub(super) frame: Bytes,
}

impl Item {
    /// The item for the message at `offset`, its event upcast to its type's newest version
    /// (of those `reads` lets this role read). `trusted` says whether its sender may publish
    /// the event it carries.
    pub(super) fn new(
        offset: u64,
        body: &[u8],
        reads: &Pins,
        trusted: impl Fn(&Event) -> bool,
    ) -> Self {
        let position = Position::of(offset, body);
        let event = Envelope::from_bytes(body).ok().and_then(|env| {
            let event = env.event_reading(reads).ok()?;
            trusted(&event).then(|| Shown::new(position, &env, &event))
        });
        Self { position, event }
    }
}

impl Shown {
    fn new(position: Position, env: &Envelope, event: &Event) -> Self {
        let subject = match event {
            Event::PermissionGranted(c) | Event::PermissionRevoked(c) => Some(Subject {
                user: c.user_id.clone(),
                role: c.role,
                granted: matches!(event, Event::PermissionGranted(_)),
            }),
            _ => None,
        };
        // The page reads one shape of each event: the newest, whatever version arrived.
        let mut data = match event.data() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        data.insert("event_id".into(), Value::String(env.event_id.clone()));
        data.insert("timestamp".into(), Value::String(env.timestamp.clone()));
        let frame = format!(
            "id: {position}\nevent: {}\ndata: {}\n\n",
            event.event_type().routing_key(),
            Value::Object(data)
        );
        Self {
            meeting_id: event.meeting_id().into(),
            subject,
            frame: Bytes::from(frame),
        }
    }
}

/// What the broadcast carries.
#[derive(Clone, Debug)]
pub(super) enum Signal {
    Item(Arc<Item>),
    /// The stream is not the one the ring followed (deleted and declared anew, or cut
    /// ahead of this replica): every open stream is told to `resync`.
    Reset,
}

/// How a connection starts, decided under the ring's lock.
pub(super) enum Attach {
    /// Follow the live tail, after sending `backlog` (the items after the id it resumes from).
    Live {
        backlog: Vec<Arc<Item>>,
        rx: broadcast::Receiver<Signal>,
    },
    /// The id is older than the memory (or this replica has read nothing yet): read the
    /// stream from it.
    Replay,
    /// The id is not one of this stream's.
    Resync(&'static str),
}

/// The ring and the broadcast of one replica.
pub(super) struct Hub {
    ring: RwLock<VecDeque<Arc<Item>>>,
    capacity: usize,
    tx: broadcast::Sender<Signal>,
}

impl Hub {
    /// A hub keeping `capacity` items; a connection may fall `lag` items behind the
    /// broadcast before it is cut off.
    pub(super) fn new(capacity: usize, lag: usize) -> Self {
        let (tx, _) = broadcast::channel(lag.max(16));
        Self {
            ring: RwLock::new(VecDeque::with_capacity(capacity.min(100_000))),
            capacity: capacity.max(1),
            tx,
        }
    }

    /// The offset to read next, once something has been read.
    pub(super) fn next_offset(&self) -> Option<u64> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        ring.back().map(|i| i.position.offset + 1)
    }

    /// Add the next item of the stream. An offset that does not follow the last one means
    /// the ring no longer describes the stream: it is emptied and every connection told.
    pub(super) fn push(&self, item: Item) {
        let item = Arc::new(item);
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = ring.back() {
            // Offsets grow but may skip (the stream's own bookkeeping takes some); one that
            // does not grow is a stream declared anew.
            if item.position.offset <= last.position.offset {
                tracing::warn!(
                    after = last.position.offset,
                    got = item.position.offset,
                    "the live stream does not continue where this replica left it; open streams are told to resync"
                );
                ring.clear();
                let _ = self.tx.send(Signal::Reset);
            }
        }
        ring.push_back(item.clone());
        while ring.len() > self.capacity {
            ring.pop_front();
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(Signal::Item(item));
    }

    /// Start a connection that resumes after `from` (or from now, without one).
    pub(super) fn attach(&self, from: Option<Position>) -> Attach {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let Some(from) = from else {
            return Attach::Live {
                backlog: Vec::new(),
                rx: self.tx.subscribe(),
            };
        };
        let (Some(first), Some(last)) = (ring.front(), ring.back()) else {
            return Attach::Replay;
        };
        let (first, last) = (first.position.offset, last.position.offset);
        if from.offset < first || from.offset > last {
            // Older than the memory, or newer than this replica has read (another replica
            // may be ahead): the stream decides.
            return Attach::Replay;
        }
        let Ok(index) = ring.binary_search_by_key(&from.offset, |i| i.position.offset) else {
            return Attach::Resync("the id names no event of this stream");
        };
        if ring[index].position != from {
            return Attach::Resync("the id names another event of this offset");
        }
        Attach::Live {
            backlog: ring.iter().skip(index + 1).cloned().collect(),
            rx: self.tx.subscribe(),
        }
    }

    /// Switch a connection that replayed the stream up to `sent` to the live tail, when the
    /// memory reaches back to the item after it.
    pub(super) fn join_after(&self, sent: Position) -> Option<Attach> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let (first, last) = (ring.front()?.position.offset, ring.back()?.position.offset);
        // The memory is one unbroken read of the stream: once it starts at or before
        // `sent`, it holds everything after it.
        if first > sent.offset || last < sent.offset {
            return None;
        }
        Some(Attach::Live {
            backlog: ring
                .iter()
                .filter(|i| i.position.offset > sent.offset)
                .cloned()
                .collect(),
            rx: self.tx.subscribe(),
        })
    }

    /// Items in memory.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MeetingCreated;

    fn item(offset: u64, meeting: &str) -> Item {
        let env = Envelope::new(
            &Event::MeetingCreated(MeetingCreated {
                meeting_id: meeting.into(),
                title: "t".into(),
                created_by: "u".into(),
            }),
            "meeting-service",
        );
        Item::new(offset, &env.to_bytes(), &Pins::default(), |_| true)
    }

    #[test]
    fn a_position_reads_back_what_it_writes() {
        let p = Position::of(42, b"body");
        assert_eq!(Position::parse(&p.to_string()), Ok(p));
        for bad in ["", "42", "x-00000000", "42-zz", "42-123", "-1-00000000"] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_frame_carries_id_event_and_the_data_with_id_and_time() {
        let i = item(7, "m1");
        let shown = i.event.as_ref().unwrap();
        let text = std::str::from_utf8(&shown.frame).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("id: {}", i.position));
        assert_eq!(lines[1], "event: meeting.created");
        let data: Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["meeting_id"], "m1");
        assert!(data["event_id"].is_string() && data["timestamp"].is_string());
        assert!(text.ends_with("\n\n"));
        assert_eq!(&*shown.meeting_id, "m1");
    }

    #[test]
    fn an_untrusted_or_foreign_message_holds_its_place_and_shows_nothing() {
        assert!(Item::new(1, b"not json", &Pins::default(), |_| true)
            .event
            .is_none());
        let body = Envelope::new(
            &Event::MeetingCreated(MeetingCreated {
                meeting_id: "m".into(),
                title: "t".into(),
                created_by: "u".into(),
            }),
            "mallory",
        )
        .to_bytes();
        assert!(Item::new(2, &body, &Pins::default(), |_| false)
            .event
            .is_none());
    }

    #[test]
    fn a_resume_from_memory_gets_exactly_what_followed() {
        let hub = Hub::new(4, 16);
        let positions: Vec<Position> = (10..16)
            .map(|o| {
                let i = item(o, "m");
                let p = i.position;
                hub.push(i);
                p
            })
            .collect();
        assert_eq!(hub.len(), 4, "the oldest fell out of memory");
        match hub.attach(Some(positions[3])) {
            Attach::Live { backlog, .. } => {
                let got: Vec<u64> = backlog.iter().map(|i| i.position.offset).collect();
                assert_eq!(got, vec![14, 15]);
            }
            _ => panic!("13 is in memory"),
        }
        assert!(matches!(hub.attach(Some(positions[0])), Attach::Replay));
        let forged = Position {
            offset: 14,
            tag: positions[4].tag ^ 1,
        };
        assert!(matches!(hub.attach(Some(forged)), Attach::Resync(_)));
        assert!(matches!(
            hub.attach(Some(Position { offset: 99, tag: 0 })),
            Attach::Replay
        ));
    }

    #[test]
    fn a_replay_joins_the_tail_only_where_the_memory_reaches() {
        let hub = Hub::new(3, 16);
        for o in 20..26 {
            hub.push(item(o, "m"));
        }
        let at = |offset| Position { offset, tag: 0 };
        assert!(hub.join_after(at(10)).is_none(), "22 and before are gone");
        assert!(
            hub.join_after(at(22)).is_none(),
            "what followed 22 may be gone"
        );
        match hub.join_after(at(23)) {
            Some(Attach::Live { backlog, .. }) => {
                assert_eq!(backlog.len(), 2, "24, 25");
            }
            _ => panic!("23 is the first in memory"),
        }
    }

    #[test]
    fn a_break_in_the_offsets_empties_the_memory_and_resets_the_streams() {
        let hub = Hub::new(10, 16);
        hub.push(item(5, "m"));
        let Attach::Live { mut rx, .. } = hub.attach(None) else {
            panic!("live")
        };
        hub.push(item(0, "m"));
        assert_eq!(hub.len(), 1);
        assert!(matches!(rx.try_recv(), Ok(Signal::Reset)));
        assert!(matches!(rx.try_recv(), Ok(Signal::Item(_))));
        assert_eq!(hub.next_offset(), Some(1));
    }
}
