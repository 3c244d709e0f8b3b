//! Whom a consumer believes (docs/architecture.md §10): in `open` mode every broker user; in
//! `strict` mode only the broker users of the roles the catalogue names as an event's
//! producers (`MQ_PRODUCERS`), and an `MQ_INGRESS` producer by the exchange only it may write.

use crate::config::{MqSettings, Trust};
use crate::events::EventType;

/// Whether `user` may publish `event_type` here: always in `open` mode; in `strict` mode only
/// a broker user of a role the catalogue names as its producer.
pub fn trusts(mq: &MqSettings, event_type: EventType, user: Option<&str>) -> bool {
    match mq.trust {
        Trust::Open => true,
        Trust::Strict => user.is_some_and(|user| {
            event_type.producers().any(|role| {
                mq.producers
                    .iter()
                    .any(|p| p.role == role && p.user == user)
            })
        }),
    }
}

/// The ingress producer whose exchange a message was first published to, if any.
pub fn ingress_sender<'a>(mq: &'a MqSettings, exchange: &str) -> Option<&'a str> {
    mq.ingress
        .iter()
        .find(|user| mq.ingress_exchange(user) == exchange)
        .map(String::as_str)
}
