//! The event contract (`asyncapi.yaml`) checked against the catalogue and against what the
//! roles really publish.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use meeting_events::envelope::Envelope;
use meeting_events::events::{Event, EventType, MeetingCreated};
use serde_json::Value;

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../asyncapi.yaml");
        let text = std::fs::read_to_string(path).expect("asyncapi.yaml");
        serde_yaml::from_str(&text).expect("asyncapi.yaml is YAML")
    })
}

/// The payload schema reference of the message of version `version` of `event_type`.
fn payload_ref(event_type: &str, version: u32) -> Option<String> {
    document()["components"]["messages"]
        .as_object()?
        .values()
        .find(|m| m["name"] == event_type && m["x-event-version"] == version)?["payload"]["$ref"]
        .as_str()
        .map(String::from)
}

/// The schema a `#/components/schemas/…` reference names.
fn resolve(reference: &str) -> &'static Value {
    let name = reference.trim_start_matches("#/components/schemas/");
    &document()["components"]["schemas"][name]
}

/// The field names of an object schema, and those it requires, sorted.
fn fields(schema: &Value) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    required.sort();
    (names, required)
}

/// Every envelope validates against the payload schema of its message in the contract.
pub fn assert_conforms(events: &[Envelope]) {
    for env in events {
        let reference = payload_ref(&env.event_type, env.event_version).unwrap_or_else(|| {
            panic!(
                "{} v{} is not in asyncapi.yaml",
                env.event_type, env.event_version
            )
        });
        // The whole document as the schema root, so `#/components/…` references resolve.
        let mut root = document().clone();
        root["$ref"] = Value::String(reference);
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .build(&root)
            .expect("asyncapi schemas compile");
        let instance = serde_json::to_value(env).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the contract: {errors:?}\n{instance}",
            env.event_type
        );
    }
}

/// The services the contract says `action` (send or receive) the event at `address`.
fn services(action: &str, address: &str) -> BTreeSet<String> {
    let doc = document();
    let channels = doc["channels"].as_object().expect("channels");
    let operations = doc["operations"].as_object().expect("operations");
    operations
        .values()
        .filter(|op| op["action"] == action)
        .filter(|op| {
            let reference = op["channel"]["$ref"].as_str().unwrap_or_default();
            let name = reference.trim_start_matches("#/channels/");
            channels.get(name).is_some_and(|c| c["address"] == address)
        })
        .flat_map(|op| op["tags"].as_array().cloned().unwrap_or_default())
        .filter_map(|tag| tag["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn the_contract_lists_every_version_with_the_fields_of_its_committed_schema() {
    for t in EventType::ALL {
        for v in t.versions() {
            let key = t.routing_key();
            let reference = payload_ref(key, v)
                .unwrap_or_else(|| panic!("{key} v{v} missing from asyncapi.yaml"));
            let event = resolve(&reference);
            let data = event["allOf"][1]["properties"]["data"]["$ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{reference} names its data schema"));
            assert_eq!(
                event["allOf"][1]["properties"]["event_version"]["const"], v,
                "{reference} pins its version"
            );
            let schema = meeting_events::wire::schemas::schema(*t, v).expect("a schema");
            assert_eq!(
                fields(resolve(data)),
                fields(&schema),
                "{key} v{v}: asyncapi.yaml's {data} and schemas/events disagree"
            );
        }
    }
}

#[test]
fn the_contract_describes_every_event_of_the_catalogue() {
    for t in EventType::ALL {
        let key = t.routing_key();
        assert!(
            payload_ref(key, 1).is_some(),
            "{key} missing from asyncapi.yaml"
        );
        let producers: BTreeSet<String> = t.producers().map(|r| r.service_name()).collect();
        let consumers: BTreeSet<String> = t.consumers().map(|r| r.service_name()).collect();
        assert_eq!(services("send", key), producers, "who publishes {key}");
        assert_eq!(services("receive", key), consumers, "who consumes {key}");
    }
}

#[test]
fn the_contract_rejects_an_event_that_breaks_it() {
    let mut bad = Envelope::new(
        &Event::MeetingCreated(MeetingCreated {
            meeting_id: "m".into(),
            title: "t".into(),
            created_by: "u".into(),
        }),
        "meeting-service",
    );
    bad.data = serde_json::json!({"meeting_id": "m"});
    assert!(std::panic::catch_unwind(|| assert_conforms(&[bad])).is_err());
}
