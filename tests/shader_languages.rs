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
use std::time::Instant;

use naga::back::{glsl, hlsl, msl, spv, PipelineConstants};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::ModuleInfo;
use naga::{Module, ShaderStage};
use unet_wgpu::ops::conv2d;
use unet_wgpu::ops::conv_transpose2d::Workgroups;
use unet_wgpu::ops::matmul::Tiles;
use unet_wgpu::tuning::{Candidates, Tuning};

/// Pipeline constants by name, as the wrappers pass them to `Gpu::kernel`.
type Constants = Vec<(&'static str, f64)>;

/// One pipeline the program can create: an entry point of a shader, with its constants.
#[derive(Clone, Debug)]
struct Kernel {
    shader: &'static str,
    entry: &'static str,
    constants: Constants,
}

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
         data {}, backward weight {}; conv_transpose2d {}; matmul {}",
        t.conv2d_forward.len(),
        t.conv2d_backward_data.len(),
        t.conv2d_backward_weight.len(),
        t.conv_transpose2d.len(),
        t.matmul.len()
    );
    for s in &shaders {
        let sets = kernels.iter().filter(|k| k.shader == s.name).count();
        println!("  {}: {} entry points, {sets} constant sets", s.name, s.module.entry_points.len());
    }
    assert!(
        failures.is_empty(),
        "{} of {translations} translations failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every `shaders/*.wgsl`: name, source, and the module and info naga validated (as
/// `Gpu::kernel` does, with `unet_wgpu::gpu::validate_wgsl`).
fn shaders() -> Vec<Shader> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut list = Vec::new();
    for entry in fs::read_dir(dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let source = fs::read_to_string(&path).unwrap();
        let (module, info) = unet_wgpu::gpu::validate_wgsl(&name, &source).unwrap_or_else(|e| panic!("{e}"));
        list.push(Shader { name, source, module, info });
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!list.is_empty(), "no shaders in {dir}");
    list
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
/// naga bounds checks but images' (none here).
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
        zero_initialize_workgroup_memory: true,
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

// ---------------------------------------------------------------------------------------------
// The constant sets.

/// Every tiling the program can choose, per kernel family: the builtin for every kind of
/// adapter (every device type on every backend) and the autotune's candidates around each.
struct Tilings {
    conv2d_forward: Vec<conv2d::Tiling>,
    conv2d_backward_data: Vec<conv2d::Tiling>,
    conv2d_backward_weight: Vec<conv2d::Tiling>,
    conv_transpose2d: Vec<Workgroups>,
    matmul: Vec<Tiles>,
}

fn tilings() -> Tilings {
    use wgpu::{Backend, DeviceType};
    let mut builtins: Vec<Tuning> = Vec::new();
    for device in
        [DeviceType::Other, DeviceType::IntegratedGpu, DeviceType::DiscreteGpu, DeviceType::VirtualGpu, DeviceType::Cpu]
    {
        for backend in Backend::ALL {
            let t = Tuning::builtin(&wgpu::AdapterInfo::new(device, backend));
            if !builtins.contains(&t) {
                builtins.push(t);
            }
        }
    }
    // The candidates an adapter admits depend on its workgroup limits: the largest any adapter
    // has (1024 threads, D3D12's and most Vulkan drivers') admits them all.
    let limits = wgpu::Limits {
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        max_compute_workgroup_size_y: 1024,
        ..wgpu::Limits::default()
    };
    let mut all = Tilings {
        conv2d_forward: vec![],
        conv2d_backward_data: vec![],
        conv2d_backward_weight: vec![],
        conv_transpose2d: vec![],
        matmul: vec![],
    };
    fn add<T: PartialEq + Copy>(list: &mut Vec<T>, items: &[T]) {
        for t in items {
            if !list.contains(t) {
                list.push(*t);
            }
        }
    }
    for b in &builtins {
        let c = Candidates::new(b, &limits);
        add(&mut all.conv2d_forward, &c.conv2d_forward);
        add(&mut all.conv2d_backward_data, &c.conv2d_backward_data);
        add(&mut all.conv2d_backward_weight, &c.conv2d_backward_weight);
        add(&mut all.conv_transpose2d, &c.conv_transpose2d);
        add(&mut all.matmul, &c.matmul);
    }
    all
}

/// One constant.
fn c(name: &'static str, value: u32) -> Constants {
    vec![(name, value as f64)]
}

/// A boolean constant, both ways.
fn flag(name: &'static str) -> Vec<Constants> {
    vec![c(name, 0), c(name, 1)]
}

/// Every combination of one set from each list, joined.
fn combine(lists: &[Vec<Constants>]) -> Vec<Constants> {
    lists.iter().fold(vec![vec![]], |sets, list| {
        sets.iter().flat_map(|set| list.iter().map(move |more| [set.clone(), more.clone()].concat())).collect()
    })
}

/// `gpu.kernel(&SHADER, entry, constants)` for each constant set.
fn sets(shader: &'static str, entries: &[&'static str], constants: &[Constants]) -> Vec<Kernel> {
    entries
        .iter()
        .flat_map(|&entry| constants.iter().map(move |c| Kernel { shader, entry, constants: c.clone() }))
        .collect()
}

/// `WG.min(n.next_multiple_of(8))` for every count `n` of threads (output tiles, pixels):
/// multiples of 8 up to `wg`, and `wg`. The shrunk workgroups of conv2d's `Tiling::for_tiles`
/// and batchnorm2d's `plane_threads`.
fn shrunk(wg: u32) -> Vec<u32> {
    (8..wg).step_by(8).chain([wg]).collect()
}

/// Powers of two from `low` to `high`.
fn powers_of_two(low: u32, high: u32) -> Vec<u32> {
    (0..32).map(|i| 1 << i).filter(|v| (low..=high).contains(v)).collect()
}

/// RELU, DROPOUT of each `conv2d::Epilogue` (its `constants()`, crate-private): identity, ReLU,
/// ReLU then dropout.
fn epilogues() -> Vec<Constants> {
    [(0, 0), (1, 0), (1, 1)].map(|(relu, dropout)| [c("RELU", relu), c("DROPOUT", dropout)].concat()).to_vec()
}

/// Kernel sizes and strides of conv2d (`Dims::kernel_constants`, crate-private: KH, KW, SH,
/// SW): the U-Net's 3x3 "same" convolutions and its 1x1 head and up-convolution (stride 1),
/// a strided 3x3 (the gather backward data; the op takes any), and 5x5, the most taps the
/// weight gradient's registers hold.
const CONV_GEOMETRIES: [[u32; 4]; 4] = [[3, 3, 1, 1], [1, 1, 1, 1], [3, 3, 2, 2], [5, 5, 1, 1]];

fn geometries(stride1_only: bool) -> Vec<Constants> {
    CONV_GEOMETRIES
        .iter()
        .filter(|g| !stride1_only || (g[2] == 1 && g[3] == 1))
        .map(|&[kh, kw, sh, sw]| [c("KH", kh), c("KW", kw), c("SH", sh), c("SW", sw)].concat())
        .collect()
}

/// Every pipeline the program can create. Fixed values are private constants of the op
/// modules, named where they are used.
fn kernels() -> Vec<Kernel> {
    let t = tilings();
    let mut all = Vec::new();

    // conv2d (src/ops/conv2d.rs). The register tile (`dispatch_tile`) runs the forward's
    // tilings and, at stride 1, backward data's; `register_constants(&t.for_tiles(tiles))` gives
    // WG (shrunk to the tiles), ROWS, TM; the packing pass takes the tiling's WG unshrunk.
    let tile_tilings: Vec<conv2d::Tiling> = t.conv2d_forward.iter().chain(&t.conv2d_backward_data).copied().collect();
    let register = |tilings: &[conv2d::Tiling]| -> Vec<Constants> {
        let mut list: Vec<Constants> = Vec::new();
        for t in tilings {
            for wg in shrunk(t.wg) {
                let set = [c("WG", wg), c("ROWS", t.rows), c("TM", t.tm)].concat();
                if !list.contains(&set) {
                    list.push(set);
                }
            }
        }
        list
    };
    let pack_wgs: BTreeSet<u32> = tile_tilings.iter().map(|t| t.wg).collect();
    let pack: Vec<Constants> = pack_wgs.iter().map(|&wg| c("WG", wg)).collect();
    let taps: Vec<Constants> = CONV_GEOMETRIES.iter().map(|g| [c("KH", g[0]), c("KW", g[1])].concat()).collect();
    all.extend(sets("conv2d", &["conv2d_pack_weights"], &combine(&[pack, taps])));
    all.extend(sets(
        "conv2d",
        &["conv2d_forward"],
        &combine(&[register(&tile_tilings), geometries(false), epilogues(), flag("VEC_X"), flag("VEC_Y")]),
    ));
    // Backward data adding into dx at stride 1: the forward tile, identity epilogue.
    all.extend(sets(
        "conv2d",
        &["conv2d_backward_data_stride1"],
        &combine(&[
            register(&t.conv2d_backward_data),
            geometries(true),
            vec![epilogues()[0].clone()],
            flag("VEC_X"),
            flag("VEC_Y"),
        ]),
    ));
    // The gather kernel (stride > 1): register constants and the geometry only.
    all.extend(sets(
        "conv2d",
        &["conv2d_backward_data"],
        &combine(&[register(&t.conv2d_backward_data), geometries(false)]),
    ));
    // Backward weight: the tiling's WG, unshrunk, for the first pass and both reductions.
    let weight_wgs: BTreeSet<u32> = t.conv2d_backward_weight.iter().map(|t| t.wg).collect();
    let weight: Vec<Constants> = weight_wgs.iter().map(|&wg| c("WG", wg)).collect();
    all.extend(sets(
        "conv2d",
        &["conv2d_backward_weight"],
        &combine(&[weight.clone(), flag("VEC_DY"), geometries(false)]),
    ));
    all.extend(sets("conv2d", &["conv2d_reduce_dw", "conv2d_reduce_db"], &weight));
    // The epilogues' backward (none for the identity), EPILOGUE_WG = 256.
    all.extend(sets(
        "conv2d",
        &["conv2d_epilogue_backward"],
        &combine(&[vec![c("WG", 256)], epilogues()[1..].to_vec()]),
    ));
    // The workgroup-memory forward (`conv2d_forward_shared`): its tests and benches run the
    // default tiling; TX, TY, SM, SN, BK and the geometry.
    let s = conv2d::SharedTiling::default();
    let shared = [c("TX", s.tx), c("TY", s.ty), c("SM", s.sm), c("SN", s.sn), c("BK", s.bk)].concat();
    all.extend(sets("conv2d", &["conv2d_forward_shared"], &combine(&[vec![shared], geometries(false)])));

    // conv_transpose2d (src/ops/conv_transpose2d.rs): WG is `Workgroups::quads` for the quad
    // kernels and `general` for the rest; backward data also takes ACCUMULATE (add or overwrite).
    let quads: BTreeSet<u32> = t.conv_transpose2d.iter().map(|w| w.quads).collect();
    let general: BTreeSet<u32> = t.conv_transpose2d.iter().map(|w| w.general).collect();
    let quads: Vec<Constants> = quads.iter().map(|&wg| c("WG", wg)).collect();
    let general: Vec<Constants> = general.iter().map(|&wg| c("WG", wg)).collect();
    all.extend(sets(
        "conv_transpose2d",
        &["conv_transpose2d_forward_quads", "conv_transpose2d_backward_weight_quads"],
        &quads,
    ));
    all.extend(sets(
        "conv_transpose2d",
        &["conv_transpose2d_backward_data_quads"],
        &combine(&[quads, flag("ACCUMULATE")]),
    ));
    all.extend(sets(
        "conv_transpose2d",
        &[
            "conv_transpose2d_forward",
            "conv_transpose2d_backward_weight_partial",
            "conv_transpose2d_backward_bias_partial",
            "conv_transpose2d_sum_partials",
        ],
        &general,
    ));
    all.extend(sets("conv_transpose2d", &["conv_transpose2d_backward_data"], &combine(&[general, flag("ACCUMULATE")])));

    // matmul (src/ops/matmul.rs, `gemm`): register tiles (vec4 and scalar entry points) or
    // shared tiles, with TRANS_A, TRANS_B, ACCUMULATE (the forward and the two backward
    // products use three of the eight combinations; all eight are translated).
    let flags = combine(&[flag("TRANS_A"), flag("TRANS_B"), flag("ACCUMULATE")]);
    for tiles in &t.matmul {
        match *tiles {
            Tiles::Register(r) => {
                let tile = [c("WG", r.wg), c("TM", r.tm), c("TN", r.tn)].concat();
                all.extend(sets(
                    "matmul",
                    &["matmul_forward", "matmul_forward_scalar"],
                    &combine(&[vec![tile], flags.clone()]),
                ));
            }
            Tiles::Shared(s) => {
                let tile = [c("TX", s.tx), c("TY", s.ty), c("SM", s.sm), c("SN", s.sn), c("BK", s.bk)].concat();
                all.extend(sets("matmul", &["matmul_forward_shared"], &combine(&[vec![tile], flags.clone()])));
            }
        }
    }

    // batchnorm2d (src/ops/batchnorm2d.rs, WG = 256): workgroups sized to the shape.
    // `partial_threads`: powers of two from 32 to WG; `final_threads`: the number of chunks
    // (at most WG) rounded up to a power of two; `plane_threads`: shrunk to a plane, as above.
    let wgs = |list: Vec<u32>| -> Vec<Constants> { list.into_iter().map(|wg| c("WG", wg)).collect() };
    let (partial, last, plane) = (wgs(powers_of_two(32, 256)), wgs(powers_of_two(1, 256)), wgs(shrunk(256)));
    all.extend(sets("batchnorm2d", &["batchnorm_stats_running", "batchnorm_backward_param"], &[c("WG", 256)]));
    all.extend(sets("batchnorm2d", &["batchnorm_stats_partial", "batchnorm_stats_partial_vec4"], &partial));
    all.extend(sets("batchnorm2d", &["batchnorm_stats_final", "batchnorm_backward_final"], &last));
    all.extend(sets(
        "batchnorm2d",
        &["batchnorm_forward", "batchnorm_forward_vec4"],
        &combine(&[plane.clone(), epilogues()]),
    ));
    all.extend(sets(
        "batchnorm2d",
        &["batchnorm_backward_partial", "batchnorm_backward_partial_vec4"],
        &combine(&[partial, epilogues()]),
    ));
    all.extend(sets(
        "batchnorm2d",
        &[
            "batchnorm_backward_data",
            "batchnorm_backward_data_vec4",
            "batchnorm_backward_data_eval",
            "batchnorm_backward_data_eval_vec4",
        ],
        &combine(&[plane, epilogues(), flag("ACCUMULATE")]),
    ));

    // loss (src/loss.rs, WG = 256): FROM_PROBS (logits, or probabilities stored by a fused
    // softmax) on all three.
    all.extend(sets("loss", &["loss_stats", "loss_finalize"], &flag("FROM_PROBS")));
    all.extend(sets("loss", &["loss_backward"], &combine(&[vec![c("WG", 256)], flag("FROM_PROBS")])));

    // Fixed constants, private to each wrapper module: `WG` (256) in src/ops/{bias_add, concat,
    // dropout, elementwise, relu, softmax, upsample}.rs and src/optim.rs; `WG` and `ITEMS` in
    // src/ops/reduce.rs; `TILE` in src/ops/maxpool2d.rs; `WG` and `VPT` in src/ceiling.rs (the
    // copy ceiling); none for the optimiser's gradient norm and src/metrics.rs.
    let wg = c("WG", 256);
    let fixed: [(&'static str, &[&'static str], Constants); 13] = [
        ("bias_add", &["bias_add_forward"], wg.clone()),
        ("concat", &["concat_backward", "concat_backward_vec4"], wg.clone()),
        ("dropout", &["dropout_forward", "dropout_backward"], wg.clone()),
        ("elementwise", &["add_forward", "scale_forward", "elementwise_backward"], wg.clone()),
        ("relu", &["relu_forward", "relu_backward"], wg.clone()),
        ("softmax", &["softmax_forward", "softmax_backward"], wg.clone()),
        (
            "upsample",
            &[
                "upsample_nearest_forward",
                "upsample_nearest_backward",
                "upsample_bilinear_forward",
                "upsample_bilinear_backward",
            ],
            wg.clone(),
        ),
        ("optim", &["sgd_update", "adam_update"], wg.clone()),
        ("optim", &["grad_norm_partial", "grad_norm_finalize"], vec![]),
        ("reduce", &["reduce_forward", "reduce_backward"], [wg.clone(), c("ITEMS", 32)].concat()),
        ("maxpool2d", &["maxpool2d_forward", "maxpool2d_backward"], [c("TX", 16), c("TY", 16)].concat()),
        ("copy", &["copy_forward", "copy_tail"], [wg, c("VPT", 4)].concat()),
        ("metrics", &["confusion_update"], vec![]),
    ];
    for (shader, entries, constants) in fixed {
        all.extend(sets(shader, entries, &[constants]));
    }

    // The same pipeline reached two ways (a tiling in two families) is translated once.
    let mut seen = BTreeSet::new();
    all.retain(|k| seen.insert(format!("{}::{} {:?}", k.shader, k.entry, k.constants)));
    all
}
