//! WGSL text before it reaches the driver: shared pieces spliced into the shaders that include
//! them, and naga's validation.
//!
//! A piece of WGSL that several shaders need (the dropout hash, the convolution GEMMs' workgroup
//! tile) is written once, in `shaders/common/`. A shader includes it with a line of its own:
//!
//! ```wgsl
//! // #include common/dropout_hash.wgsl
//! ```
//!
//! [`compose_wgsl`] replaces that line with the piece's text (composed in turn: a piece may
//! include another). The program compiles the composed
//! text, and the tests that validate and translate every shader compose it the same way.

/// The shared pieces, by path relative to `shaders/` (without `.wgsl`).
const PIECES: &[(&str, &str)] = &[
    ("common/dropout_hash", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common/dropout_hash.wgsl"))),
    ("common/gemm_tile", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common/gemm_tile.wgsl"))),
    (
        "batchnorm2d/tiled_common",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/batchnorm2d/tiled_common.wgsl")),
    ),
    (
        "conv_transpose2d/tiled_common",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/conv_transpose2d/tiled_common.wgsl")),
    ),
    ("conv2d/tiled_common", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/conv2d/tiled_common.wgsl"))),
];

/// `source` with each `// #include <piece>.wgsl` line replaced by the piece. `name` (the shader's
/// path under `shaders/`) only labels the panic for an unknown piece, which is a mistake in the
/// shader source, not in anything a user passes.
pub fn compose_wgsl(name: &str, source: &str) -> String {
    if !source.contains("// #include ") {
        return source.to_string();
    }
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        match line.strip_prefix("// #include ") {
            Some(piece) => {
                let key = piece.trim().trim_end_matches(".wgsl");
                let text = PIECES.iter().find(|(k, _)| *k == key).map(|(_, t)| *t).unwrap_or_else(|| {
                    panic!(
                        "shaders/{name}.wgsl includes {piece}, which is not one of the pieces in src/runtime/wgsl.rs"
                    )
                });
                out.push_str(&compose_wgsl(key, text));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Parse and validate WGSL with naga, as wgpu will; used by the pipeline cache
/// and by the test that checks every shader without a GPU. The error names the
/// file and carries naga's annotated message.
pub fn validate_wgsl(name: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let path = format!("shaders/{name}.wgsl");
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, &path))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(source, &path))?;
    Ok((module, info))
}
