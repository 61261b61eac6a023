//! Every shader in `shaders/` parses and validates with naga (no GPU needed),
//! and opens with the header comment that states its math and bindings.

use std::fs;

#[test]
fn every_shader_validates_with_naga() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut count = 0;
    for entry in fs::read_dir(dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let source = fs::read_to_string(&path).unwrap();
        assert!(
            source.starts_with(&format!("// {name}.wgsl:")),
            "{} must open with `// {name}.wgsl: <what it computes>` and its math and bindings",
            path.display()
        );
        if let Err(e) = unet_wgpu::gpu::validate_wgsl(&name, &source) {
            panic!("{e}");
        }
        count += 1;
    }
    assert!(count > 0, "no shaders found in {dir}");
}
