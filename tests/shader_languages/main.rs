//! Every shader translates into the shader language of every wgpu backend (no GPU needed):
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL), for every entry point and every set
//! of pipeline constants (WGSL `override`s) the program can compile it with.
//!
//! wgpu hands each backend the WGSL as naga parsed it; a pipeline is made by substituting its
//! constants (`naga::back::pipeline_constants::process_overrides`, which also compacts the
//! module to the one entry point and validates it again) and writing the backend's language.
//! A shader that validates as WGSL can still fail there, on one backend or with one tiling
//! only: a constant that sizes a workgroup array, code that a constant turns off and
//! compaction removes, a construct one writer lacks. A machine runs one backend (lavapipe:
//! Vulkan), so its tests never see the others. This test does what wgpu-hal does when it
//! creates a compute pipeline, with the options and binding layout it passes naga (bounds
//! checks, zero-initialised workgroup memory, bounded loops), at the oldest and the newest
//! language version wgpu-hal 30 writes for each backend ([`TARGETS`]). It proves that each
//! translation succeeds, not that a driver then compiles it.
//!
//! The constant sets (see [`kernels`]): every tiling the program can choose (the builtin of
//! each kind of adapter, [`Tuning::builtin`], and the autotune's candidates around each,
//! [`Candidates::new`]), each mapped to its constants as the op wrappers map it, and the
//! constants that depend on the shapes and options of a call (workgroups shrunk for small
//! images, vec4 paths, epilogues, accumulation, kernel sizes and strides) over every value the
//! wrappers can give them. Where a wrapper's mapping or its fixed sizes are private, the
//! mapping is repeated here and says where it comes from. Not covered: tilings that only the
//! unit tests and the benchmarks' sweeps (`MATMUL_SWEEP`, `CONV_TILING`) pass.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Instant;

use naga::back::{glsl, hlsl, msl, spv, PipelineConstants};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::ModuleInfo;
use naga::{Module, ShaderStage};

mod kernels;

use kernels::{kernels, tilings, Kernel};

/// A shader of `shaders/`, as naga parsed and validated it.
struct Shader {
    name: String,
    source: String,
    module: Module,
    info: ModuleInfo,
}

/// A backend's language at one version.
struct Target {
    name: &'static str,
    /// Writes one entry point of a module whose constants are substituted, given the buffers
    /// it binds; `Err(naga's message)`.
    write: fn(&Module, &ModuleInfo, &str, &[Binding]) -> Result<(), String>,
}

/// The four languages, each at the oldest and the newest version wgpu-hal 30 asks naga for.
const TARGETS: [Target; 8] = [
    // Vulkan 1.0 (zero-initialised workgroup memory by the shader), Vulkan 1.3 (by the driver).
    Target { name: "SPIR-V 1.0", write: |m, i, e, b| spirv(m, i, e, b, (1, 0)) },
    Target { name: "SPIR-V 1.6", write: |m, i, e, b| spirv(m, i, e, b, (1, 6)) },
    // Metal: the version follows the OS, from MSL 1.0 (before macOS 10.11) to 4.0 (macOS 26).
    Target { name: "MSL 1.0", write: |m, i, e, b| metal(m, i, e, b, (1, 0)) },
    Target { name: "MSL 4.0", write: |m, i, e, b| metal(m, i, e, b, (4, 0)) },
    // DX12: shader model 5.1 with FXC (no DXC at hand), up to 6.9 with DXC.
    Target { name: "HLSL 5.1", write: |m, i, e, b| hlsl(m, i, e, b, hlsl::ShaderModel::V5_1) },
    Target { name: "HLSL 6.9", write: |m, i, e, b| hlsl(m, i, e, b, hlsl::ShaderModel::V6_9) },
    // GL: GLSL ES 3.10, the first with compute shaders; desktop GLSL 4.60.
    Target { name: "GLSL ES 3.10", write: |m, i, e, b| glsl(m, i, e, b, glsl::Version::new_gles(310)) },
    Target { name: "GLSL 4.60", write: |m, i, e, b| glsl(m, i, e, b, glsl::Version::Desktop(460)) },
];

#[test]
fn every_shader_translates_to_every_backend_language() {
    let started = Instant::now();
    let shaders = shaders();
    let kernels = kernels();

    // The table and the shaders agree: every entry point has its constant sets, every set names
    // an entry point that exists (a constant it does not declare fails in `process_overrides`).
    let mut missing = Vec::new();
    for s in &shaders {
        for ep in &s.module.entry_points {
            if !kernels.iter().any(|k| k.shader == s.name && k.entry == ep.name) {
                missing.push(format!("{}::{}", s.name, ep.name));
            }
        }
    }
    assert!(missing.is_empty(), "entry points without constant sets in `kernels()`: {missing:?}");
    for k in &kernels {
        let Some(s) = shaders.iter().find(|s| s.name == k.shader) else {
            panic!("`kernels()` names shaders/{}.wgsl, which does not exist", k.shader)
        };
        assert!(
            s.module.entry_points.iter().any(|ep| ep.name == k.entry),
            "`kernels()` names {}::{}, which shaders/{}.wgsl does not have",
            k.shader,
            k.entry,
            k.shader
        );
    }

    // Translate, on every core: the work is the same for any split.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = kernels.len().div_ceil(threads);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().flat_map(|k| translate(&shaders, k)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a translation thread panicked")).collect()
    });

    let entries: BTreeSet<_> = kernels.iter().map(|k| (k.shader, k.entry)).collect();
    let translations = kernels.len() * TARGETS.len();
    println!(
        "{} shaders ({} entry points) x {} constant sets x 4 languages at 2 versions ({}): {} translations in {:.1} s",
        shaders.len(),
        entries.len(),
        kernels.len(),
        TARGETS.map(|t| t.name).join(", "),
        translations,
        started.elapsed().as_secs_f64()
    );
    let t = tilings();
    println!(
        "tilings (builtin for every kind of adapter, and the autotune's candidates): conv2d forward {}, backward \
         data {}, backward weight {}; conv_transpose2d {}; matmul {}; convolution GEMMs {}",
        t.conv2d_forward.len(),
        t.conv2d_backward_data.len(),
        t.conv2d_backward_weight.len(),
        t.conv_transpose2d.len(),
        t.matmul.len(),
        t.conv_gemm.iter().flatten().count()
    );
    for s in &shaders {
        let sets = kernels.iter().filter(|k| k.shader == s.name).count();
        println!("  {}: {} entry points, {sets} constant sets", s.name, s.module.entry_points.len());
    }
    if let Some(path) = std::env::var_os("UNET_WGPU_PIPELINES") {
        write_pipelines(Path::new(&path), &shaders, &kernels);
    }
    assert!(
        failures.is_empty(),
        "{} of {translations} translations failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// With `UNET_WGPU_PIPELINES=FILE`: every pipeline as JSON, for a WebGPU implementation to
/// build (`web/pipelines.mjs` builds them in Chromium): `{"shaders": {name: WGSL},
/// "pipelines": [{"shader", "entry", "constants": {name: value}}]}`.
fn write_pipelines(path: &Path, shaders: &[Shader], kernels: &[Kernel]) {
    use serde_json::{json, Map, Value};
    let sources: Map<String, Value> = shaders.iter().map(|s| (s.name.clone(), json!(s.source))).collect();
    let pipelines: Vec<Value> = kernels
        .iter()
        .map(|k| {
            let constants: Map<String, Value> = k.constants.iter().map(|&(n, v)| (n.to_string(), json!(v))).collect();
            json!({ "shader": k.shader, "entry": k.entry, "constants": constants })
        })
        .collect();
    let text = json!({ "shaders": sources, "pipelines": pipelines }).to_string();
    fs::write(path, text).unwrap_or_else(|e| panic!("UNET_WGPU_PIPELINES: cannot write {}: {e}", path.display()));
    println!("wrote {} pipelines to {}", kernels.len(), path.display());
}

/// Every `shaders/*.wgsl`: name, source, and the module and info naga validated (as
/// `Gpu::kernel` does, with `unet_wgpu::runtime::validate_wgsl`).
fn shaders() -> Vec<Shader> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut list = Vec::new();
    collect(Path::new(dir), "", &mut list);
    list.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!list.is_empty(), "no shaders in {dir}");
    list
}

/// The shaders under `dir`, named by their path relative to `shaders/` without `.wgsl`, each
/// with the shared pieces it includes spliced in, as the program compiles it.
fn collect(dir: &Path, prefix: &str, list: &mut Vec<Shader>) {
    for entry in fs::read_dir(dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            collect(&path, &format!("{prefix}{stem}/"), list);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let name = format!("{prefix}{stem}");
        let source = unet_wgpu::runtime::compose_wgsl(&name, &fs::read_to_string(&path).unwrap());
        let (module, info) = unet_wgpu::runtime::validate_wgsl(&name, &source).unwrap_or_else(|e| panic!("{e}"));
        list.push(Shader { name, source, module, info });
    }
}

/// Substitute `k`'s constants as wgpu does, then write every target: one message per failure.
fn translate(shaders: &[Shader], k: &Kernel) -> Vec<String> {
    let Shader { source, module, info, .. } = shaders.iter().find(|s| s.name == k.shader).expect("checked above");
    let what = |language: &str| {
        format!("shaders/{}.wgsl, entry point {}, constants {:?}, {language}", k.shader, k.entry, k.constants)
    };
    let constants: PipelineConstants = k.constants.iter().map(|&(name, v)| (name.to_string(), v)).collect();
    let (module, info) = match naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((ShaderStage::Compute, k.entry)),
        &constants,
    ) {
        Ok(done) => done,
        Err(naga::back::pipeline_constants::PipelineConstantError::ValidationError(e)) => {
            let path = format!("shaders/{}.wgsl", k.shader);
            return vec![format!(
                "{}: the constants make the module invalid:\n{}",
                what("all languages"),
                e.emit_to_string_with_path(source, &path)
            )];
        }
        Err(e) => return vec![format!("{}: substituting the constants failed: {e}", what("all languages"))],
    };
    let bindings = bindings(&module, &info, k.entry);
    TARGETS
        .iter()
        .filter_map(|t| (t.write)(&module, &info, k.entry, &bindings).err().map(|e| format!("{}: {e}", what(t.name))))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The four writers, with the options each wgpu-hal backend passes (wgpu-hal 30:
// vulkan/adapter.rs and vulkan/device.rs, metal/device.rs, dx12/device.rs, gles/device.rs).

/// A buffer the entry point uses. `Gpu::kernel` lets wgpu derive the bind group layout from the
/// entry point (`layout: None`), so the layout holds exactly these, in binding order.
struct Binding {
    at: naga::ResourceBinding,
    /// A uniform buffer (else a storage buffer).
    uniform: bool,
    /// A storage buffer the entry point only reads.
    read_only: bool,
}

/// The buffers `entry` of `module` (constants substituted) uses, in binding order.
fn bindings(module: &Module, info: &ModuleInfo, entry: &str) -> Vec<Binding> {
    let index = module.entry_points.iter().position(|ep| ep.name == entry).expect("the entry point is kept");
    let uses = info.get_entry_point(index);
    let mut list: Vec<Binding> = module
        .global_variables
        .iter()
        .filter(|(handle, _)| !uses[*handle].is_empty())
        .filter_map(|(_, var)| {
            let at = var.binding?;
            match var.space {
                naga::AddressSpace::Uniform => Some(Binding { at, uniform: true, read_only: true }),
                naga::AddressSpace::Storage { access } => {
                    Some(Binding { at, uniform: false, read_only: !access.contains(naga::StorageAccess::STORE) })
                }
                _ => None,
            }
        })
        .collect();
    list.sort_by_key(|b| (b.at.group, b.at.binding));
    list
}

/// Bounds checks that clamp every index (`Restrict`): what Vulkan without robust buffer access
/// and Metal with runtime checks on (wgpu's default) get; the most code of any policy.
const RESTRICT: BoundsCheckPolicies = BoundsCheckPolicies {
    index: BoundsCheckPolicy::Restrict,
    buffer: BoundsCheckPolicy::Restrict,
    image_load: BoundsCheckPolicy::Restrict,
    binding_array: BoundsCheckPolicy::Unchecked,
};

/// SPIR-V with only the capabilities every Vulkan device has, as wgpu lists them; descriptors
/// numbered in layout order, as wgpu numbers them. Workgroup memory is zeroed by the driver
/// where SPIR-V 1.6 (Vulkan 1.3) promises it, else by code the writer adds.
fn spirv(
    module: &Module,
    info: &ModuleInfo,
    entry: &str,
    bindings: &[Binding],
    version: (u8, u8),
) -> Result<(), String> {
    use spv::Capability as C;
    let always = [
        C::Shader,
        C::Matrix,
        C::Sampled1D,
        C::Image1D,
        C::ImageQuery,
        C::DerivativeControl,
        C::StorageImageExtendedFormats,
    ];
    let binding_map = bindings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let info = spv::BindingInfo { descriptor_set: b.at.group, binding: i as u32, binding_array_size: None };
            (b.at, info)
        })
        .collect();
    let zero_init = if version >= (1, 6) {
        spv::ZeroInitializeWorkgroupMemoryMode::Native
    } else {
        spv::ZeroInitializeWorkgroupMemoryMode::Polyfill
    };
    let options = spv::Options {
        lang_version: version,
        capabilities: Some(always.into_iter().collect()),
        bounds_check_policies: RESTRICT,
        zero_initialize_workgroup_memory: zero_init,
        force_loop_bounding: true,
        fake_missing_bindings: false,
        binding_map,
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.to_string() };
    let words = spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| e.to_string())?;
    check_output(!words.is_empty())
}

/// MSL: buffers in slots 0, 1, ... and then the buffer of buffer sizes, as wgpu places them.
fn metal(
    module: &Module,
    info: &ModuleInfo,
    entry: &str,
    bindings: &[Binding],
    version: (u8, u8),
) -> Result<(), String> {
    let resources: msl::BindingMap = bindings
        .iter()
        .enumerate()
        .map(|(slot, b)| {
            (b.at, msl::BindTarget { buffer: Some(slot as u8), mutable: !b.read_only, ..Default::default() })
        })
        .collect();
    let sizes_buffer = bindings.iter().any(|b| !b.uniform).then_some(bindings.len() as u8);
    let resources = msl::EntryPointResources { resources, immediates_buffer: None, sizes_buffer };
    let options = msl::Options {
        lang_version: version,
        per_entry_point_map: [(entry.to_string(), resources)].into_iter().collect(),
        fake_missing_bindings: false,
        bounds_check_policies: RESTRICT,
        zero_initialize_workgroup_memory: true,
        force_loop_bounding: true,
        ..Default::default()
    };
    let pipeline =
        msl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())), ..Default::default() };
    let (source, translated) = msl::write_string(module, info, &options, &pipeline).map_err(|e| e.to_string())?;
    // An entry point can fail on its own while the module is written.
    for name in translated.entry_point_names {
        name.map_err(|e| e.to_string())?;
    }
    check_output(!source.is_empty())
}

/// HLSL: uniforms in b registers, read-only storage in t, read-write storage in u, each
/// counted from 0, then the root constants wgpu binds for `num_workgroups` (HLSL has no such
/// builtin) in the next b register.
fn hlsl(
    module: &Module,
    info: &ModuleInfo,
    entry: &str,
    bindings: &[Binding],
    shader_model: hlsl::ShaderModel,
) -> Result<(), String> {
    let (mut cbv, mut srv, mut uav) = (0, 0, 0);
    let mut binding_map = hlsl::BindingMap::new();
    for b in bindings {
        let counter = if b.uniform {
            &mut cbv
        } else if b.read_only {
            &mut srv
        } else {
            &mut uav
        };
        let target = hlsl::BindTarget {
            space: b.at.group as u8,
            register: *counter,
            restrict_indexing: true,
            ..Default::default()
        };
        binding_map.insert(b.at, target);
        *counter += 1;
    }
    let options = hlsl::Options {
        shader_model,
        binding_map,
        fake_missing_bindings: false,
        special_constants_binding: Some(hlsl::BindTarget { space: 0, register: cbv, ..Default::default() }),
        zero_initialize_workgroup_memory: true,
        restrict_indexing: true,
        force_loop_bounding: true,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())) };
    let mut source = String::new();
    let reflection =
        hlsl::Writer::new(&mut source, &options, &pipeline).write(module, info, None).map_err(|e| e.to_string())?;
    for name in reflection.entry_point_names {
        name.map_err(|e| e.to_string())?;
    }
    check_output(!source.is_empty())
}

/// GLSL: uniform and storage buffers each numbered from 0, as wgpu numbers them; GL gets no
/// naga bounds checks but images' (none here), and no zeroing of workgroup memory
/// (`unet_wgpu::runtime::compilation::options` turns it off on GL).
fn glsl(
    module: &Module,
    info: &ModuleInfo,
    entry: &str,
    bindings: &[Binding],
    version: glsl::Version,
) -> Result<(), String> {
    let (mut uniform, mut storage) = (0u8, 0u8);
    let mut binding_map = glsl::BindingMap::new();
    for b in bindings {
        let counter = if b.uniform { &mut uniform } else { &mut storage };
        binding_map.insert(b.at, *counter);
        *counter += 1;
    }
    let options = glsl::Options {
        version,
        writer_flags: glsl::WriterFlags::ADJUST_COORDINATE_SPACE,
        binding_map,
        zero_initialize_workgroup_memory: false,
    };
    let pipeline =
        glsl::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.to_string(), multiview: None };
    let mut source = String::new();
    glsl::Writer::new(&mut source, module, info, &options, &pipeline, BoundsCheckPolicies::default())
        .and_then(|mut w| w.write())
        .map_err(|e| e.to_string())?;
    check_output(!source.is_empty())
}

fn check_output(written: bool) -> Result<(), String> {
    written.then_some(()).ok_or_else(|| "the writer succeeded but wrote nothing".to_string())
}
