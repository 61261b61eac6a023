//! Every shader in `shaders/` parses and validates with naga (no GPU needed),
//! and opens with the header comment that states its math and bindings.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.wgsl` file under `dir`, with its path relative to `shaders/` (no extension).
fn wgsl_files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    for entry in fs::read_dir(dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            wgsl_files(&path, &format!("{prefix}{stem}/"), out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("wgsl") {
            out.push((format!("{prefix}{stem}"), path));
        }
    }
}

#[test]
fn every_shader_validates_with_naga() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files = Vec::new();
    wgsl_files(Path::new(dir), "", &mut files);
    assert!(!files.is_empty(), "no shaders found in {dir}");
    for (name, path) in files {
        let source = fs::read_to_string(&path).unwrap();
        assert!(
            source.starts_with(&format!("// {name}.wgsl:")),
            "{} must open with `// {name}.wgsl: <what it computes>` and its math and bindings",
            path.display()
        );
        let source = unet_wgpu::runtime::compose_wgsl(&name, &source);
        if let Err(e) = unet_wgpu::runtime::validate_wgsl(&name, &source) {
            panic!("{e}");
        }
    }
}
