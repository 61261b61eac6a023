//! No source file grows past 500 lines: Rust or WGSL, in `src/`, `shaders/`, `tests/`,
//! `benches/` and `examples/`. A file that long holds more than one idea; split it along its
//! meaning (forward and backward, the op and its tests, a tiling and its dispatch), not at a line
//! count. Fixtures and other data files are not read.

use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;
const FOLDERS: [&str; 5] = ["src", "shaders", "tests", "benches", "examples"];

/// The `.rs` and `.wgsl` files under `dir`, fixtures left out.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "fixtures") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs" || e == "wgsl") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_500_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for folder in FOLDERS {
        sources(&root.join(folder), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files: is the walk reading the repository?", files.len());
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("  {} ({lines} lines)", f.strip_prefix(root).unwrap().display()))
        })
        .collect();
    long.sort();
    assert!(long.is_empty(), "files over {MAX_LINES} lines; split each along its meaning:\n{}", long.join("\n"));
}
