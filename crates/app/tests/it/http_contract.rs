//! The HTTP contract (`openapi.json`, docs/architecture.md §4): the committed document is
//! what the code generates, and each role serves its own part of it.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::helpers::*;

fn committed() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    std::fs::read_to_string(path).expect("openapi.json at the repository's root")
}

fn generated() -> String {
    let out = Command::new(app_bin())
        .arg("openapi")
        .env("CONFIG_DIR", "/nonexistent")
        .output()
        .expect("app openapi runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_committed_openapi_json_is_what_the_code_generates() {
    let (committed, generated) = (committed(), generated());
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "openapi.json differs from what the code generates (first at line {}): run `cargo run --bin app -- openapi > openapi.json` and commit it\n  committed: {:?}\n  generated: {:?}",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            generated.lines().nth(first).unwrap_or("<end>"),
        );
    }
    let doc: Value = serde_json::from_str(&generated).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // Every error answer of every operation carries the JSON error body.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            for (status, response) in op["responses"].as_object().expect("responses") {
                if !status.starts_with('4') && !status.starts_with('5') || path == "/ready" {
                    continue;
                }
                let body = match response.get("$ref").and_then(Value::as_str) {
                    Some(r) => {
                        let name = r.rsplit('/').next().expect("a ref name");
                        doc["components"]["responses"][name]["content"]["application/json"]
                            ["schema"]["$ref"]
                            .clone()
                    }
                    None => response["content"]["application/json"]["schema"]["$ref"].clone(),
                };
                assert_eq!(
                    body, "#/components/schemas/ErrorBody",
                    "{method} {path} {status} answers without the error body"
                );
            }
        }
    }
}

#[tokio::test]
async fn each_role_serves_its_part_of_the_contract() {
    let ctx = Ctx::new();
    let stack = Stack::start(&ctx).await;
    let whole: Value = serde_json::from_str(&committed()).expect("JSON");
    let all: BTreeSet<String> = whole["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let mut served = BTreeSet::new();
    for (running, prefix) in [
        (&stack.meeting, "/meetings"),
        (&stack.election, "/elections"),
        (&stack.voting, "/ballots"),
        (&stack.permission, "/meetings/{id}/permissions"),
        (&stack.live, "/live"),
    ] {
        let response = reqwest::get(format!("{}/openapi.json", running.base))
            .await
            .expect("answers");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let doc: Value = response.json().await.expect("JSON");
        let paths: BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        assert!(
            paths.iter().any(|p| p.starts_with(prefix)),
            "{} describes none of its routes: {paths:?}",
            running.role
        );
        assert!(
            paths.is_subset(&all),
            "{} serves routes the whole document lacks: {:?}",
            running.role,
            paths.difference(&all).collect::<Vec<_>>()
        );
        served.extend(paths);
    }
    assert_eq!(
        served, all,
        "the whole document is the union of what the roles serve"
    );
    stack.stop().await;
}
