//! The library's modules import each other in layers, never in a circle.
//!
//! Reads every `src/**/*.rs` of the library (not `src/main.rs`, which is a client), finds the
//! paths that name another module of the crate (`use crate::a::b`, grouped `use` trees,
//! `super::` and child-module paths, and `crate::a::b` written inline in code; comments and
//! strings are skipped, so a doc link is not an import) and builds the graph between modules:
//! one node per top-level module, and one per child for the layers that live in folders of
//! peers ([`SPLIT`]: `ops::conv2d`, `tune::tiling`, ...), whose parent (`mod.rs`) only declares
//! and re-exports them. A circle fails the test, naming each edge with a file and line that
//! makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Folders whose children are nodes of their own: peers (the ops) or a layer's parts at
/// different heights (`tune::tiling` lies below the runtime, `tune::autotune` above the ops).
/// Other folders are one node: `runtime/`'s files are the parts of one `Gpu`.
const SPLIT: &[&str] = &["autograd", "ops", "tune"];

/// Where one module refers to another: file and line.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/ops/conv2d/mod.rs` -> `["ops", "conv2d"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_str().unwrap().to_string()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Whether `path` (from the crate root) names a module that has a file or folder.
fn is_module(src: &Path, path: &[String]) -> bool {
    let dir = path.iter().fold(src.to_path_buf(), |d, p| d.join(p));
    dir.is_dir() || dir.with_extension("rs").is_file()
}

/// The graph node of an absolute path into the crate: its top-level module, or the child of a
/// split folder. `None` for the crate root itself (its items are re-exports and macros).
fn node_of(src: &Path, path: &[String]) -> Option<String> {
    let top = path.first()?;
    if !is_module(src, &path[..1]) {
        return None;
    }
    if SPLIT.contains(&top.as_str()) && path.len() >= 2 && is_module(src, &path[..2]) {
        return Some(format!("{top}::{}", path[1]));
    }
    Some(top.clone())
}

/// `text` with comments, string and character literals blanked (newlines kept, for line numbers).
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b[..i].last().is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // raw string r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let rest: String = b[j + 1..].iter().collect();
            let end = j + 1 + rest.find(&close).map(|k| rest[..k].chars().count()).unwrap_or(rest.chars().count());
            let stop = (end + close.chars().count()).min(b.len());
            out.extend(b[i..stop].iter().map(|&c| blank(c)));
            i = stop;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (b.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // a character literal ('a', '\n', '\u{..}'), not a lifetime
            let mut j = i + 1;
            if b[j] == '\\' {
                j += 1;
            }
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The absolute paths of a `use` tree (the text after `use`, up to the `;`).
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    let mut path = prefix.to_vec();
    let mut rest = tree;
    loop {
        rest = rest.trim_start();
        if let Some(inner) = rest.strip_prefix('{') {
            let inner = &inner[..inner.rfind('}').unwrap_or(inner.len())];
            let mut depth = 0;
            let mut start = 0;
            for (k, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_use(&inner[start..k], &path, out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            expand_use(&inner[start..], &path, out);
            return;
        }
        let end = rest.find("::").unwrap_or(rest.len());
        let seg = rest[..end].split_whitespace().next().unwrap_or("");
        if !seg.is_empty() && seg != "*" {
            path.push(seg.to_string());
        }
        if end == rest.len() {
            break;
        }
        rest = &rest[end + 2..];
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// Resolve a relative path written in module `here` to one from the crate root, or `None` when
/// it leaves the crate (`std::...`, `wgpu::...`) or names a local item.
fn resolve(src: &Path, here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base = here.to_vec();
    let mut k = 0;
    match path.first()?.as_str() {
        "crate" => {
            base.clear();
            k = 1;
        }
        "self" => k = 1,
        "super" => {
            while path.get(k).is_some_and(|s| s == "super") {
                base.pop()?;
                k += 1;
            }
        }
        first => {
            let mut child = here.to_vec();
            child.push(first.to_string());
            if !is_module(src, &child) {
                return None;
            }
        }
    }
    base.extend(path[k..].iter().cloned());
    Some(base)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The inline modules of a (stripped) file: `mod name { ... }` as (name, start, end) offsets.
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("mod ") {
        let start = from + k;
        from = start + 4;
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = code[from..].trim_start().chars().take_while(|&c| is_ident(c)).collect();
        let after = code[from..].trim_start()[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        for (k, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push((name, open, open + k));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The paths of one (stripped) file, each with its byte offset.
fn paths_in(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest_code = code.to_string();
    // `use` items (then blanked, so their paths are not read twice)
    let mut at = 0;
    while let Some(k) = rest_code[at..].find("use ") {
        let start = at + k;
        let before_ok = !rest_code[..start].chars().next_back().is_some_and(is_ident);
        let end = rest_code[start..].find(';').map(|e| start + e);
        match (before_ok, end) {
            (true, Some(end)) => {
                let mut trees = Vec::new();
                expand_use(&rest_code[start + 4..end], &[], &mut trees);
                found.extend(trees.into_iter().map(|t| (start, t)));
                let blanked: String =
                    rest_code[start..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
                rest_code.replace_range(start..end, &blanked);
                at = end;
            }
            _ => at = start + 4,
        }
    }
    // inline paths: `crate::a::b`, `super::a`
    for key in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(k) = rest_code[from..].find(key) {
            let start = from + k;
            from = start + key.len();
            if rest_code[..start].chars().next_back().is_some_and(|c| is_ident(c) || c == '$') {
                continue;
            }
            let tail: String = rest_code[start..].chars().take_while(|&c| is_ident(c) || c == ':').collect();
            let path: Vec<String> = tail.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            found.push((start, path));
        }
    }
    found
}

fn graph() -> Edges {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges = Edges::new();
    for file in files.iter().filter(|f| !f.ends_with("main.rs")) {
        let here = module_of(&src, file);
        let Some(from) = node_of(&src, &here) else { continue };
        let code = strip(&fs::read_to_string(file).unwrap());
        let inline = inline_modules(&code);
        for (offset, path) in paths_in(&code) {
            let line = code[..offset].matches('\n').count() + 1;
            // `super` inside `mod tests { ... }` is the file's own module
            let mut scope = here.clone();
            scope.extend(inline.iter().filter(|(_, a, b)| (*a..*b).contains(&offset)).map(|(n, _, _)| n.clone()));
            let Some(abs) = resolve(&src, &scope, &path) else { continue };
            let Some(to) = node_of(&src, &abs) else {
                // `crate::Gpu`: the root's re-exports would hide which layer is used.
                if abs.len() == 1 && !is_module(&src, &abs) && abs[0].chars().next().is_some_and(char::is_uppercase) {
                    panic!(
                        "{}:{line}: `crate::{}` goes through the crate root; name its module",
                        file.display(),
                        abs[0]
                    );
                }
                continue;
            };
            if to != from {
                let at = format!("{}:{line}", file.strip_prefix(src.parent().unwrap()).unwrap().display());
                edges.entry(from.clone()).or_default().entry(to).or_insert(at);
            }
        }
    }
    edges
}

/// A circle in `edges`, as the list of its nodes (first repeated last), if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    let nodes: BTreeSet<&String> = edges.keys().collect();
    for node in nodes {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_circle() {
    let edges = graph();
    assert!(edges.len() > 10, "found imports in only {} modules: is the parser reading src/?", edges.len());
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> =
            cycle.windows(2).map(|w| format!("  {} -> {}   ({})", w[0], w[1], edges[&w[0]][&w[1]])).collect();
        panic!(
            "the modules import each other in a circle:\n{}\nmove what both sides need into a lower layer",
            steps.join("\n")
        );
    }
}

#[test]
fn the_parser_reads_grouped_relative_and_inline_paths() {
    let code = strip(
        "use crate::{a::B, c::{d, e::F}};\n// use crate::not_me;\nfn f() { let s = \"crate::nor_me\"; super::g::h(); crate::i::j(); }",
    );
    let line = |at: usize| code[..at].matches('\n').count() + 1;
    let paths: Vec<String> =
        paths_in(&code).into_iter().map(|(at, p)| format!("{}:{}", line(at), p.join("::"))).collect();
    assert_eq!(paths, ["1:crate::a::B", "1:crate::c::d", "1:crate::c::e::F", "3:crate::i::j", "3:super::g::h"]);
    let tests = strip("fn a() {}\nmod tests {\n    use super::*;\n}\n");
    assert_eq!(inline_modules(&tests).iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["tests"]);
    let cycle = find_cycle(&Edges::from([
        ("a".to_string(), BTreeMap::from([("b".to_string(), "x".to_string())])),
        ("b".to_string(), BTreeMap::from([("a".to_string(), "y".to_string())])),
    ]));
    assert_eq!(cycle, Some(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
}
