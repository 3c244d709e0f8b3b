//! The crate's floors point one way (docs/architecture.md §2): each top-level module imports
//! only from the floors below its own, so no import points up and none closes a circle. The
//! floors are declared here, and §2 draws the same list; the test reads every `crate::…`
//! path (and a top-level module's `super::…`) in `src/`, test modules left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The floors, bottom first. A module may import from any floor below its own, never from
/// its own floor's other modules or from above.
const FLOORS: &[&[&str]] = &[
    &["text", "domain", "metric"],
    &["wire"],
    &["system"],
    &["config"],
    &["store"],
    &["trace"],
    &["telemetry"],
    &["messaging"],
    &["http"],
    &["roles"],
    &["shutdown"],
];

/// Names the crate root re-exports from a floor, as they are written in paths.
const ALIASES: &[(&str, &str)] = &[("envelope", "wire"), ("events", "wire")];

fn floor_of(module: &str) -> Option<usize> {
    let module = ALIASES
        .iter()
        .find(|(alias, _)| *alias == module)
        .map_or(module, |(_, real)| real);
    FLOORS.iter().position(|floor| floor.contains(&module))
}

fn canonical(module: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == module)
        .map_or(module, |(_, real)| real)
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ reads") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its test module (`#[cfg(test)] mod tests { … }` closes a file) and
/// without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names: `crate::x`, each name of `crate::{x, y::z}`,
/// and in a top-level module's own file `super::x`.
fn named(code: &str, top_file: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut prefixes = vec!["crate::"];
    if top_file {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.push(first_segment(&item));
                            item.clear();
                        }
                        _ => item.push(c),
                    }
                }
                names.push(first_segment(&item));
            } else {
                names.push(first_segment(rest));
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every import that points up or sideways: (file, its module, the module it names).
fn violations(src: &Path) -> Vec<(String, String, String)> {
    let mut paths = Vec::new();
    files(src, &mut paths);
    let mut found = Vec::new();
    for path in paths {
        let relative = path.strip_prefix(src).expect("under src/");
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let file = parts.last().expect("a file name").clone();
        if parts.len() == 1 && file == "lib.rs" || file == "tests.rs" {
            continue;
        }
        let module = parts[0].trim_end_matches(".rs").to_string();
        let top_file = parts.len() == 1 || (parts.len() == 2 && file == "mod.rs");
        let Some(own) = floor_of(&module) else {
            found.push((
                relative.display().to_string(),
                module.clone(),
                "(no floor)".into(),
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("a source file");
        for name in named(&code(&text), top_file) {
            let Some(theirs) = floor_of(&name) else {
                continue; // an item of the crate root (`crate::run`), not a module
            };
            if canonical(&name) != module && theirs >= own {
                found.push((relative.display().to_string(), module.clone(), name));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_import_points_down_the_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (file, module, name) in &found {
        by_file
            .entry(format!("{file} ({module})"))
            .or_default()
            .push(name.clone());
    }
    assert!(
        found.is_empty(),
        "imports that point up or sideways (floors, bottom first: {FLOORS:?}):\n{}",
        by_file
            .iter()
            .map(|(file, names)| format!("  {file} -> {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_floor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for line in lib.lines() {
        let line = line.trim();
        let Some(name) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'))
        else {
            continue;
        };
        assert!(floor_of(name).is_some(), "{name} is on no floor of FLOORS");
    }
}

#[test]
fn the_reader_finds_the_imports_it_is_meant_to() {
    let code = code("use crate::{config::{A, B}, store::Store};\nlet x = crate::trace::f(); // crate::http\nsuper::roles::x;\n#[cfg(test)]\nmod tests {\n use crate::roles;\n}\n");
    assert_eq!(named(&code, false), vec!["config", "store", "trace"]);
    assert_eq!(
        named(&code, true),
        vec!["config", "store", "trace", "roles"]
    );
}
