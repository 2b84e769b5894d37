//! The layers of `src/lib.rs`, enforced: every top-level module belongs to one layer, an import
//! never points to a layer above its own, and no modules import each other in a circle. Read
//! from the source, so a new `use` that breaks the layout fails here with the file that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer with its modules, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "audit",
            "certificate",
            "changes",
            "config",
            "drift",
            "history",
            "lock",
            "metrics",
            "notify",
            "ownership",
            "policy",
            "principal",
            "state",
            "text",
            "time",
            "verdict",
        ],
    ),
    ("store", &["store"]),
    ("operations", &["operations", "identity", "checks"]),
    ("edges", &["cli", "client", "http", "ui"]),
];

/// Layers an edge may not reach past: it asks operations, which ask the store.
const NOT_FROM_EDGES: &[&str] = &["store"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The code of a file without its test module (tests may reach anything they need to set up)
/// and without comments.
fn production_code(text: &str) -> String {
    let test_module = text.match_indices("#[cfg(test)]").find(|(at, attr)| {
        let after = text[at + attr.len()..].trim_start();
        after.starts_with("mod ") || after.starts_with("pub(crate) mod ")
    });
    let code = match test_module {
        Some((at, _)) => &text[..at],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`, including inside `use crate::{a, b}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(name) = leading_ident(item.trim()) {
                    named.insert(name);
                }
            }
        } else if let Some(name) = leading_ident(rest) {
            named.insert(name);
        }
    }
    named
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn leading_ident(text: &str) -> Option<String> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

/// module -> the modules it imports, with one file that does, for the message.
fn imports() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let edges = graph.entry(module.clone()).or_default();
        for named in named_modules(&production_code(&text)) {
            if named != module {
                edges.entry(named).or_insert_with(|| file.clone());
            }
        }
    }
    graph
}

#[test]
fn every_module_is_in_a_layer() {
    let unplaced: Vec<String> = imports()
        .into_keys()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer: {unplaced:?}: add each to LAYERS here and to the layer list of src/lib.rs"
    );
}

#[test]
fn no_import_points_to_a_higher_layer() {
    let mut wrong = Vec::new();
    for (module, targets) in imports() {
        let Some(from) = layer_of(&module) else {
            continue;
        };
        for (target, file) in targets {
            let Some(to) = layer_of(&target) else {
                continue;
            };
            let past_operations =
                LAYERS[from].0 == "edges" && NOT_FROM_EDGES.contains(&target.as_str());
            if to > from || past_operations {
                wrong.push(format!(
                    "{module} ({}) imports {target} ({}) in {}",
                    LAYERS[from].0,
                    LAYERS[to].0,
                    file.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = imports();
    let mut circles = Vec::new();
    for start in graph.keys() {
        // Depth-first from each module, looking for a way back to it.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).map(|t| t.keys()).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    circle.push(next.clone());
                    circles.push(circle.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_sees_every_kind_of_import() {
    let code =
        "use crate::{audit::{Record, Outcome}, store};\nfn f() { crate::time::Clock::system(); }";
    let named: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(named, ["audit", "store", "time"]);
    assert!(named_modules(&production_code("// crate::store\nfn f() {}")).is_empty());
    assert!(named_modules(&production_code(
        "fn f() {}\n#[cfg(test)]\nmod tests { use crate::store; }"
    ))
    .is_empty());
}
