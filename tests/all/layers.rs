//! The workspace's layering: dependencies point one way. `weir-sandbox` needs no network service,
//! database or command line; inside every crate the modules form no cycle (a module's
//! `crate::…` and `super::…` paths, and a parent's `mod` declarations, are its edges; test
//! modules aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 5] = [
    "crates/weir-sandbox",
    "crates/weir-egress",
    "crates/weir-service",
    "crates/weir-bench",
    "guests/build",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_sandbox_crate_needs_no_service_database_or_cli() {
    let manifest = std::fs::read_to_string(root().join("crates/weir-sandbox/Cargo.toml"))
        .expect("weir-sandbox's manifest");
    for forbidden in [
        "axum",
        "hyper",
        "rusqlite",
        "tungstenite",
        "clap",
        "weir-service",
        "weir-bench",
    ] {
        let listed = manifest
            .lines()
            .any(|l| l.trim_start().starts_with(forbidden));
        assert!(!listed, "weir-sandbox depends on {forbidden}");
    }
}

#[test]
fn no_crate_has_a_module_cycle() {
    for krate in CRATES {
        let graph = module_graph(&root().join(krate).join("src"));
        assert!(graph.len() > 2, "{krate}: found {} modules", graph.len());
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: modules form a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.into_iter().map(String::from).collect()))
    .collect();
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}

/// Module path (`a::b`) of every file under `src`, and the modules each one refers to.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .into_iter()
        .filter_map(|f| Some((module_of(src, &f)?, f)))
        .collect();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, file)| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let edges = references(module, &text, &names)
                .into_iter()
                .filter(|to| to != module)
                .collect();
            (module.clone(), edges)
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; the crate root has none.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [one] if one == "lib" || one == "main" => None,
        _ => Some(parts.join("::")),
    }
}

/// The modules `text` (the file of `module`) refers to, test code and comments aside.
fn references(module: &str, text: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let parent: Vec<&str> = module.split("::").collect();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        if let Some(child) = code
            .strip_prefix("pub mod ")
            .or_else(|| code.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'))
        {
            found.insert(format!("{module}::{child}"));
        }
        for path in paths_in(code, "crate::") {
            if let Some(m) = longest_module(&path, names) {
                found.insert(m);
            }
        }
        for path in paths_in(code, "super::") {
            let base = parent[..parent.len().saturating_sub(1)].join("::");
            let full = if base.is_empty() {
                path
            } else {
                format!("{base}::{path}")
            };
            found.insert(longest_module(&full, names).unwrap_or(base));
        }
    }
    found.retain(|m| names.contains(m));
    found
}

/// The paths after each `prefix` in `code`, with `prefix::{a, b::c}` lists expanded.
fn paths_in(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + prefix.len()..];
        if preceded {
            continue;
        }
        if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            out.extend(list[..end].split(',').map(|p| ident_path(p.trim())));
        } else {
            out.push(ident_path(rest));
        }
    }
    out
}

/// The leading `a::b::c` of `text`.
fn ident_path(text: &str) -> String {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':').to_string()
}

/// The longest prefix of `path` that is a module.
fn longest_module(path: &str, names: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|p| names.contains(p))
}

/// A cycle in the graph, as the modules along it (first and last the same).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}
