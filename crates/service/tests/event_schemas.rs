//! The event contract's history (docs/architecture.md §3, "Changing an event"): every version
//! of every event's `data` has a JSON Schema made from the Rust types and committed under
//! `schemas/events/`. This test fails when
//! - the code's schema of a version differs from the committed one: a version, once
//!   committed, never changes; an incompatible change needs a new version (the failure says
//!   which rule it breaks: a removed, retyped or newly required field);
//! - a step declared forward-compatible does more than add optional fields;
//! - a step without an upcaster adds a required field or retypes one;
//! - a committed file names a version the code does not have.
//!
//! `UPDATE_SCHEMAS=1 cargo test -p meeting-events --test event_schemas` writes the files of
//! versions not committed yet, and of versions whose descriptions alone changed; it never
//! rewrites a committed version's shape.

use std::path::{Path, PathBuf};

use meeting_events::events::EventType;
use meeting_events::wire::schemas::{breaking, file_name, schema};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/events")
}

fn committed(t: EventType, v: u32) -> Option<Value> {
    let text = std::fs::read_to_string(dir().join(file_name(t, v))).ok()?;
    Some(serde_json::from_str(&text).expect("a committed schema is JSON"))
}

/// A schema without its descriptions and titles: what a reader is held to.
fn words_left_out(value: &Value) -> Value {
    match value {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| *k != "description" && *k != "title")
            .map(|(k, v)| (k.clone(), words_left_out(v)))
            .collect(),
        Value::Array(items) => items.iter().map(words_left_out).collect(),
        other => other.clone(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a schema serialises") + "\n"
}

/// What is wrong with the committed versions of `t`, as one line each.
fn problems_of(t: EventType) -> Vec<String> {
    let mut problems = Vec::new();
    for v in t.versions() {
        let code = schema(t, v).expect("every version has a schema");
        let Some(file) = committed(t, v) else {
            if std::env::var("UPDATE_SCHEMAS").is_ok() {
                std::fs::create_dir_all(dir()).expect("schemas/events");
                std::fs::write(dir().join(file_name(t, v)), pretty(&code)).expect("written");
                continue;
            }
            problems.push(format!(
                "{t} v{v} is not committed: run UPDATE_SCHEMAS=1 cargo test -p meeting-events --test event_schemas"
            ));
            continue;
        };
        if file == code {
            continue;
        }
        if words_left_out(&file) == words_left_out(&code) {
            // Only the words for humans moved (a doc comment): the contract is the same.
            if std::env::var("UPDATE_SCHEMAS").is_ok() {
                std::fs::write(dir().join(file_name(t, v)), pretty(&code)).expect("written");
            } else {
                problems.push(format!(
                    "{t} v{v}: only its descriptions differ from the committed schema; run UPDATE_SCHEMAS=1 cargo test -p meeting-events --test event_schemas"
                ));
            }
            continue;
        }
        let rules = breaking(&file, &code);
        if rules.is_empty() {
            problems.push(format!(
                "{t} v{v} differs from its committed schema: a committed version never changes; give the change version {}",
                t.newest() + 1
            ));
        } else {
            problems.push(format!(
                "{t} v{v} changed incompatibly without a new version: {}; add version {} with an upcaster",
                rules.join(", "),
                t.newest() + 1
            ));
        }
    }
    for (i, step) in t.steps().iter().enumerate() {
        let from = i as u32 + 1;
        let (Some(old), Some(new)) = (committed(t, from), committed(t, from + 1)) else {
            continue;
        };
        let rules = breaking(&old, &new);
        if step.forward_compatible && !rules.is_empty() {
            problems.push(format!(
                "{t} {from} → {} is declared forward-compatible, but: {}",
                from + 1,
                rules.join(", ")
            ));
        }
        let needs_upcaster: Vec<&String> = rules
            .iter()
            .filter(|r| r.ends_with("required") || r.ends_with("retyped"))
            .collect();
        if step.up.is_none() && !needs_upcaster.is_empty() {
            problems.push(format!(
                "{t} {from} → {} has no upcaster, but: {needs_upcaster:?}",
                from + 1
            ));
        }
    }
    problems
}

#[test]
fn every_committed_version_is_the_codes_and_every_step_keeps_its_promise() {
    let problems: Vec<String> = EventType::ALL
        .iter()
        .flat_map(|t| problems_of(*t))
        .collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_committed_schema_names_a_version_the_code_lacks() {
    let known: Vec<String> = EventType::ALL
        .iter()
        .flat_map(|t| t.versions().map(|v| file_name(*t, v)))
        .collect();
    for entry in std::fs::read_dir(dir()).expect("schemas/events") {
        let name = entry
            .expect("an entry")
            .file_name()
            .into_string()
            .expect("UTF-8");
        assert!(
            known.contains(&name),
            "schemas/events/{name}: no such version in the code"
        );
    }
}
