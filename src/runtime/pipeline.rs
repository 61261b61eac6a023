//! The pipeline cache: each shader is composed and validated once, each entry point compiled
//! once per set of override constants.

use std::fmt;
use std::rc::Rc;

use super::gpu::Gpu;
use super::wgsl::{compose_wgsl, validate_wgsl};

/// A WGSL source file from `shaders/`, compiled at most once per [`Gpu`].
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// File stem, e.g. `"relu"`: the cache key and the label in traces.
    pub name: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

/// `shader!("relu")` embeds `shaders/relu.wgsl` into the binary as a [`Shader`].
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::runtime::Shader {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
        }
    };
}

/// One compiled entry point: its pipeline, and the bindings it uses (read from
/// the shader by naga, so that a dispatch with a missing or extra buffer fails
/// with the names of both sides instead of a driver error).
pub struct Kernel {
    /// `"<shader>::<entry point>"`.
    pub name: String,
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
    /// Group-0 binding numbers the entry point uses, sorted.
    pub(super) bindings: Vec<u32>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kernel({}, bindings {:?})", self.name, self.bindings)
    }
}

/// A shader compiled by the driver, and naga's view of it (for binding checks).
pub(super) type CompiledShader = (wgpu::ShaderModule, Rc<naga::Module>, Rc<naga::valid::ModuleInfo>);

pub(super) type KernelKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

impl Gpu {
    /// The override constants of every pipeline compiled so far for `entry` of the shader
    /// named `shader` (tests use it to see which tiling a wrapper dispatched).
    pub fn compiled_constants(&self, shader: &str, entry: &str) -> Vec<Vec<(&'static str, f64)>> {
        self.kernels
            .borrow()
            .keys()
            .filter(|(s, e, _)| *s == shader && *e == entry)
            .map(|(_, _, c)| c.iter().map(|&(k, bits)| (k, f64::from_bits(bits))).collect())
            .collect()
    }

    /// The pipeline for `entry` in `shader`, with override constants set
    /// (e.g. `[("WG", 64.0)]`). Compiled on first use, cached afterwards.
    pub fn kernel(&self, shader: &Shader, entry: &'static str, constants: &[(&'static str, f64)]) -> Rc<Kernel> {
        let key = (shader.name, entry, constants.iter().map(|&(k, v)| (k, v.to_bits())).collect::<Vec<_>>());
        if let Some(k) = self.kernels.borrow().get(&key) {
            return k.clone();
        }
        let (module, naga_module, naga_info) = self.module(shader);
        let entry_index = naga_module
            .entry_points
            .iter()
            .position(|e| e.name == entry)
            .unwrap_or_else(|| panic!("shaders/{}.wgsl has no entry point {entry}", shader.name));
        let uses = naga_info.get_entry_point(entry_index);
        let mut bindings: Vec<u32> = naga_module
            .global_variables
            .iter()
            .filter(|(handle, _)| !uses[*handle].is_empty())
            .filter_map(|(_, var)| var.binding.as_ref())
            .map(|b| {
                assert_eq!(b.group, 0, "shaders/{}.wgsl: only bind group 0 is used", shader.name);
                b.binding
            })
            .collect();
        bindings.sort_unstable();

        let started = web_time::Instant::now();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None, // derived from the entry point's own bindings
            module: &module,
            entry_point: Some(entry),
            compilation_options: super::compilation::options(self.info.backend, constants),
            cache: None,
        });
        let nanos = started.elapsed().as_nanos() as u64;
        self.count(|c| (c.pipelines, c.pipeline_nanos) = (c.pipelines + 1, c.pipeline_nanos + nanos));
        super::compilation::record(self.info.backend, shader.name, entry, constants, nanos as f64 * 1e-9);
        let layout = pipeline.get_bind_group_layout(0);
        let kernel = Rc::new(Kernel { name: format!("{}::{entry}", shader.name), pipeline, layout, bindings });
        self.kernels.borrow_mut().insert(key, kernel.clone());
        kernel
    }

    fn module(&self, shader: &Shader) -> CompiledShader {
        if let Some(m) = self.modules.borrow().get(shader.name) {
            return m.clone();
        }
        let source = compose_wgsl(shader.name, shader.source);
        let (naga_module, naga_info) = validate_wgsl(shader.name, &source).unwrap_or_else(|e| panic!("{e}"));
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entry = (module, Rc::new(naga_module), Rc::new(naga_info));
        self.modules.borrow_mut().insert(shader.name, entry.clone());
        entry
    }
}
