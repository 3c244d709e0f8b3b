//! The JSON Schema of every version of every event's `data`, made from the Rust types: the
//! newest from the catalogue's payload types, the older ones from the frozen types below.
//! They are committed under `schemas/events/` and checked against the code, version by
//! version and step by step (`crates/service/tests/event_schemas.rs`).

use serde_json::Value;

use super::events::EventType;

/// The schema of version `version` of `event_type`'s data; `None` for a version the type
/// does not have.
pub fn schema(event_type: EventType, version: u32) -> Option<Value> {
    if !event_type.versions().contains(&version) {
        return None;
    }
    let schema = if version == event_type.newest() {
        event_type.newest_schema()
    } else {
        match (event_type, version) {
            (EventType::ElectionCreate, 1) => schemars::schema_for!(v1::ElectionCreate),
            (EventType::ElectionOpened, 1) => schemars::schema_for!(v1::ElectionOpened),
            // Every older version has a frozen type above; a test walks them all.
            _ => return None,
        }
    };
    Some(schema.to_value())
}

/// The file name of a version's schema under `schemas/events/`.
pub fn file_name(event_type: EventType, version: u32) -> String {
    format!("{}.v{version}.json", event_type.routing_key())
}

/// Version 1 of the types that have moved on: frozen as they were, never changed again.
mod v1 {
    use serde::Deserialize;

    /// `agenda.election.create`, version 1.
    #[derive(Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    pub struct ElectionCreate {
        pub meeting_id: String,
        pub agenda_item_id: String,
        pub title: String,
    }

    /// `election.opened`, version 1.
    #[derive(Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    pub struct ElectionOpened {
        pub election_id: String,
        pub meeting_id: String,
        pub agenda_item_id: String,
        pub title: String,
    }
}

/// What a change from schema `old` to schema `new` breaks for a reader of `old` data read as
/// `new`, or of `new` data read as `old`: each entry names the field and the rule.
pub fn breaking(old: &Value, new: &Value) -> Vec<String> {
    let (old_props, new_props) = (properties(old), properties(new));
    let (old_req, new_req) = (required(old), required(new));
    let mut found = Vec::new();
    for (name, was) in &old_props {
        match new_props.iter().find(|(n, _)| n == name) {
            None => found.push(format!("field `{name}` removed")),
            Some((_, now)) if shape(old, was) != shape(new, now) => {
                found.push(format!("field `{name}` retyped"))
            }
            Some(_) => {}
        }
        if !old_req.contains(name) && new_req.contains(name) {
            found.push(format!("field `{name}` made required"));
        }
    }
    for name in &new_req {
        if !old_props.iter().any(|(n, _)| n == name) {
            found.push(format!("field `{name}` new and required"));
        }
    }
    found
}

fn properties(schema: &Value) -> Vec<(String, Value)> {
    schema["properties"]
        .as_object()
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn required(schema: &Value) -> Vec<String> {
    schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A property's schema as far as its readers care: references into the schema's `$defs`
/// resolved, words for humans (description, title) and defaults left out.
fn shape(root: &Value, property: &Value) -> Value {
    let mut property = property.clone();
    if let Some(reference) = property["$ref"].as_str() {
        let name = reference.trim_start_matches("#/$defs/");
        property = root["$defs"][name].clone();
    }
    if let Value::Object(map) = &mut property {
        for word in ["description", "title", "default"] {
            map.remove(word);
        }
    }
    property
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(props: Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required})
    }

    #[test]
    fn every_version_of_every_type_has_a_schema() {
        for t in EventType::ALL {
            for v in t.versions() {
                assert!(schema(*t, v).is_some(), "{t} v{v}");
            }
            assert!(schema(*t, t.newest() + 1).is_none());
        }
    }

    #[test]
    fn the_rules_name_removed_retyped_and_new_required_fields() {
        let old = object(
            json!({"a": {"type": "string"}, "b": {"type": "string"}}),
            &["a"],
        );
        let renamed = object(
            json!({"c": {"type": "string"}, "b": {"type": "string"}}),
            &["c"],
        );
        assert_eq!(
            breaking(&old, &renamed),
            ["field `a` removed", "field `c` new and required"]
        );
        let retyped = object(
            json!({"a": {"type": "integer"}, "b": {"type": "string"}}),
            &["a"],
        );
        assert_eq!(breaking(&old, &retyped), ["field `a` retyped"]);
        let stricter = object(
            json!({"a": {"type": "string"}, "b": {"type": "string"}}),
            &["a", "b"],
        );
        assert_eq!(breaking(&old, &stricter), ["field `b` made required"]);
        let optional_added = object(
            json!({"a": {"type": "string", "description": "now said"}, "b": {"type": "string"}, "d": {"type": "integer"}}),
            &["a"],
        );
        assert!(breaking(&old, &optional_added).is_empty());
    }
}
