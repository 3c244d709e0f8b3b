//! The AMQP properties of our messages: the envelope mirrored into standard properties, and
//! the `x-…` headers that carry retry and parking history (docs/architecture.md §5).

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::config::MqSettings;

/// Attempts made so far (1 after the first failure).
pub const ATTEMPTS: &str = "x-attempts";
/// Why the last attempt failed, or why the message was parked.
pub const REASON: &str = "x-reason";
/// The routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// When the message was parked (RFC 3339).
pub const PARKED_AT: &str = "x-parked-at";
/// The service that parked it.
pub const PARKED_BY: &str = "x-parked-by";
/// The broker user that first published a message a service has since moved (to a retry
/// queue, to the dead-letter queue): the move is published as the service's own user.
pub const PRODUCER_USER: &str = "x-producer-user";

/// Who published a message, by the broker user RabbitMQ verified (`user_id` must equal the
/// publishing connection's user). A message moved by `own_user` itself — from its retry or
/// dead-letter queue — names its first publisher in [`PRODUCER_USER`], which only `own_user`
/// could have set on a message whose `user_id` is its own.
pub fn producer_user(props: &BasicProperties, own_user: &str) -> Option<String> {
    let user = props.user_id().as_ref()?.as_str().to_string();
    if user == own_user {
        text(props, PRODUCER_USER).or(Some(user))
    } else {
        Some(user)
    }
}

/// Who published a delivery that reached us from `exchange`: its stamped broker user
/// ([`producer_user`]), or, unstamped, the producer whose ingress exchange it was first
/// published to (only that producer may write there; docs/architecture.md §10).
pub fn sender(mq: &MqSettings, exchange: &str, props: &BasicProperties) -> Option<String> {
    producer_user(props, mq.url.user())
        .or_else(|| super::trust::ingress_sender(mq, exchange).map(String::from))
}

/// The properties for moving a message first published by `first` as `own_user`:
/// `user_id` set to it (the broker refuses any other), `first` kept in [`PRODUCER_USER`].
pub fn moved_by(props: &BasicProperties, own_user: &str, first: Option<&str>) -> BasicProperties {
    let props = props.clone().with_user_id(own_user.into());
    match first {
        Some(user) => with_headers(&props, &[(PRODUCER_USER, text_value(user))]),
        None => without_headers(&props, &[PRODUCER_USER]),
    }
}

/// Properties mirroring an envelope (docs/architecture.md §3): JSON, persistent, ids and type.
pub fn for_event(
    event_id: &str,
    event_type: &str,
    producer: &str,
    correlation_id: Option<&str>,
    unix_seconds: u64,
) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event_id.into())
        .with_type(event_type.into())
        .with_app_id(producer.into())
        .with_timestamp(unix_seconds);
    match correlation_id {
        Some(id) => props.with_correlation_id(id.into()),
        None => props,
    }
}

/// A header as text, whatever string type the sender used.
pub fn text(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A header as a count, whatever integer type the sender used.
pub fn count(props: &BasicProperties, key: &str) -> Option<u64> {
    let v = props.headers().as_ref()?.inner().get(key)?;
    let n: i128 = match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// The properties with some headers set (others kept).
pub fn with_headers(props: &BasicProperties, set: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    for (key, value) in set {
        table.insert(ShortString::from(*key), value.clone());
    }
    props.clone().with_headers(table)
}

/// The properties without the given headers.
pub fn without_headers(props: &BasicProperties, keys: &[&str]) -> BasicProperties {
    let table: FieldTable = props
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    props.clone().with_headers(table)
}

/// A text header value.
pub fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings(user: &str) -> MqSettings {
        let env = [
            ("AMQP_URL", format!("amqp://{user}:pw@rabbit:5672/%2f")),
            ("MQ_EXCHANGE", "events".to_string()),
            (
                "MQ_PRODUCERS",
                "meeting=meeting-service,meeting=py-meeting".to_string(),
            ),
            ("MQ_INGRESS", "py-meeting".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let election = crate::system::find("election").unwrap();
        Settings::load(election, &env, std::path::Path::new("/nonexistent"))
            .unwrap()
            .mq
    }

    #[test]
    fn the_sender_is_the_stamp_or_the_ingress_and_survives_a_move() {
        let mq = settings("election-service");
        let stamped = BasicProperties::default().with_user_id("meeting-service".into());
        let bare = BasicProperties::default();
        assert_eq!(
            sender(&mq, "events", &stamped).as_deref(),
            Some("meeting-service")
        );
        assert_eq!(
            sender(&mq, "events.from.py-meeting", &stamped).as_deref(),
            Some("meeting-service"),
            "a stamp wins over the exchange"
        );
        assert_eq!(
            sender(&mq, "events.from.py-meeting", &bare).as_deref(),
            Some("py-meeting")
        );
        assert_eq!(
            sender(&mq, "events", &bare),
            None,
            "unstamped, shared exchange"
        );
        assert_eq!(sender(&mq, "events.from.mallory", &bare), None);

        // Moved to a retry queue by the election role and back through the default
        // exchange: still the ingress producer's.
        let first = sender(&mq, "events.from.py-meeting", &bare);
        let moved = moved_by(&bare, "election-service", first.as_deref());
        assert_eq!(sender(&mq, "", &moved).as_deref(), Some("py-meeting"));
        // Moved with no known sender, it reads as the mover's own, and no role consumes
        // what it produces itself.
        let moved = moved_by(&moved, "election-service", None);
        assert_eq!(sender(&mq, "", &moved).as_deref(), Some("election-service"));
    }
}
