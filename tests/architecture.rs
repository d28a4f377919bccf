//! The layout's rules, checked on the source: arrows point one way (server -> worker -> proxy
//! -> {route, limits, access, upstream, http, net}; config is data everyone may read), and no module reaches back up
//! or round in a circle. Reads every `use crate::`/`use super::` path (braces expanded) and every
//! inline `crate::a::b` path of `src/`, resolves each to the file of the module it names, and
//! checks the graph of files. Re-exports in a `mod.rs` (`pub use child::X`) are a facade, not a
//! dependency of the parent, so they are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`proxy::exchange`) -> file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts = vec![String::new()];
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// Expands one `use` tree (`a::{b, c::{d, self}}`) into full paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |rest| {
                if rest == "self" {
                    prefix.to_string()
                } else {
                    format!("{prefix}::{rest}")
                }
            })
        })
        .collect()
}

/// The module a module's `super::` means (for `a/mod.rs` as for `a/b.rs`: one level up from
/// the module itself).
fn parent_of(module: &str) -> String {
    let mut parts: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
    parts.pop();
    parts.join("::")
}

/// The paths a file refers to, as crate-absolute module paths (items included).
fn references(module: &str, path: &Path, text: &str) -> Vec<String> {
    let is_mod_rs = path.file_name().is_some_and(|f| f == "mod.rs");
    let absolute = |p: &str| -> Option<String> {
        let p = p.trim();
        if let Some(rest) = p.strip_prefix("crate::") {
            Some(rest.to_string())
        } else if let Some(mut rest) = p.strip_prefix("super::") {
            let mut base = parent_of(module);
            while let Some(r) = rest.strip_prefix("super::") {
                base = parent_of(&base);
                rest = r;
            }
            Some(if base.is_empty() {
                rest.to_string()
            } else {
                format!("{base}::{rest}")
            })
        } else {
            None
        }
    };
    let mut out = Vec::new();
    // `use` statements, braces and all; a `pub use` in a mod.rs re-exports a child: skipped.
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let is_pub = before.trim_end().ends_with("pub") || before.trim_end().ends_with(")");
        let after = &rest[at + 4..];
        let Some(end) = after.find(';') else { break };
        let tree = &after[..end];
        let starts_path =
            tree.trim_start().starts_with("crate::") || tree.trim_start().starts_with("super::");
        let boundary = at == 0
            || before
                .chars()
                .last()
                .is_some_and(|c| c.is_whitespace() || c == ';' || c == '{' || c == '}');
        if starts_path && boundary && !(is_pub && is_mod_rs) {
            out.extend(expand(tree).iter().filter_map(|p| absolute(p)));
        }
        rest = &after[end..];
    }
    // Inline `crate::a::b` paths in code.
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.extend(absolute(&tail[..end]));
        rest = &tail[end.max(7)..];
    }
    out
}

/// The longest module prefix of an item path.
fn resolve(path: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &modules {
        if path.ends_with("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read source");
        // Test code may reach anywhere.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let targets = edges.entry(module.clone()).or_default();
        for reference in references(module, path, text) {
            if let Some(target) = resolve(&reference, &modules) {
                if &target != module {
                    targets.insert(target);
                }
            }
        }
    }
    edges
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn no_module_imports_in_a_circle() {
    let edges = graph();
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                0 => visit(next, edges, state, path, cycles),
                1 => {
                    let from = path.iter().position(|p| p == next).unwrap_or(0);
                    cycles.push(format!("{} -> {next}", path[from..].join(" -> ")));
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            visit(node, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "import circles:\n  {}",
        cycles.join("\n  ")
    );
    assert!(edges.len() > 30, "found only {} modules", edges.len());
}

#[test]
fn arrows_point_down_only() {
    // What each layer may import besides itself. Everything may read `config` (data) and
    // `metrics` (counters), except the framing layer, which knows nothing of the proxy.
    let allowed: &[(&str, &[&str])] = &[
        ("http", &[]),
        ("metrics", &[]),
        ("config", &["http"]),
        ("net", &["metrics"]),
        ("upstream", &["config", "metrics", "net", "http"]),
        ("route", &["config", "http", "upstream", "metrics"]),
        ("limits", &["config", "metrics"]),
        ("access", &["config", "net"]),
        (
            "state",
            &["config", "metrics", "upstream", "route", "limits"],
        ),
        ("logging", &["config", "metrics"]),
        (
            "proxy",
            &[
                "config", "metrics", "net", "http", "upstream", "state", "route", "limits",
                "access",
            ],
        ),
        ("reload", &["config", "state", "logging", "upstream"]),
        (
            "admin",
            &[
                "config", "metrics", "net", "http", "upstream", "state", "reload", "limits",
            ],
        ),
        (
            "worker",
            &["config", "metrics", "net", "http", "state", "proxy"],
        ),
    ];
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        let layer = top(&from);
        let Some((_, may)) = allowed.iter().find(|(l, _)| *l == layer) else {
            continue; // server and the crate root assemble everything
        };
        for to in targets {
            let target = top(&to);
            if target != layer && !may.contains(&target) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n  {}",
        wrong.join("\n  ")
    );
}
