//! The constant sets: every pipeline (shader, entry point, override constants) the program can
//! create, as `main.rs` describes.

use std::collections::BTreeSet;

use unet_wgpu::ops::conv2d;
use unet_wgpu::ops::conv2d::gemm::ConvGemm;
use unet_wgpu::ops::conv_transpose2d::Workgroups;
use unet_wgpu::ops::matmul::Tiles;
use unet_wgpu::tune::{Candidates, Tuning};

/// Pipeline constants by name, as the wrappers pass them to `Gpu::kernel`.
pub type Constants = Vec<(&'static str, f64)>;

/// One pipeline the program can create: an entry point of a shader, with its constants.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
    pub constants: Constants,
}

/// Every tiling the program can choose, per kernel family: the builtin for every kind of
/// adapter (every device type on every backend) and the autotune's candidates around each.
pub struct Tilings {
    pub conv2d_forward: Vec<conv2d::Tiling>,
    pub conv2d_backward_data: Vec<conv2d::Tiling>,
    pub conv2d_backward_weight: Vec<conv2d::Tiling>,
    pub conv_transpose2d: Vec<Workgroups>,
    pub matmul: Vec<Tiles>,
    pub conv_gemm: Vec<Option<ConvGemm>>,
}

pub fn tilings() -> Tilings {
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
        conv_gemm: vec![],
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
        add(&mut all.conv_gemm, &c.conv_gemm);
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
pub fn kernels() -> Vec<Kernel> {
    let t = tilings();
    let mut all = Vec::new();

    // conv2d (src/ops/conv2d/mod.rs). The register tile (`dispatch_tile`) runs the forward's
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
    all.extend(sets("conv2d/tiled", &["conv2d_pack_weights"], &combine(&[pack, taps])));
    all.extend(sets(
        "conv2d/tiled",
        &["conv2d_forward"],
        &combine(&[register(&tile_tilings), geometries(false), epilogues(), flag("VEC_X"), flag("VEC_Y")]),
    ));
    // Backward data adding into dx at stride 1: the forward tile, identity epilogue.
    all.extend(sets(
        "conv2d/tiled",
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
        "conv2d/tiled_backward",
        &["conv2d_backward_data"],
        &combine(&[register(&t.conv2d_backward_data), geometries(false)]),
    ));
    // Backward weight: the tiling's WG, unshrunk, for the first pass and both reductions.
    let weight_wgs: BTreeSet<u32> = t.conv2d_backward_weight.iter().map(|t| t.wg).collect();
    let weight: Vec<Constants> = weight_wgs.iter().map(|&wg| c("WG", wg)).collect();
    all.extend(sets(
        "conv2d/tiled_backward",
        &["conv2d_backward_weight"],
        &combine(&[weight.clone(), flag("VEC_DY"), geometries(false)]),
    ));
    all.extend(sets("conv2d/tiled_backward", &["conv2d_reduce_dw", "conv2d_reduce_db"], &weight));
    // The epilogues' backward (none for the identity), EPILOGUE_WG = 256.
    all.extend(sets(
        "conv2d/tiled_backward",
        &["conv2d_epilogue_backward"],
        &combine(&[vec![c("WG", 256)], epilogues()[1..].to_vec()]),
    ));
    // The workgroup-memory forward (`conv2d_forward_shared`): its tests and benches run the
    // default tiling; TX, TY, SM, SN, BK and the geometry.
    let s = conv2d::SharedTiling::default();
    let shared = [c("TX", s.tx), c("TY", s.ty), c("SM", s.sm), c("SN", s.sn), c("BK", s.bk)].concat();
    all.extend(sets("conv2d/shared", &["conv2d_forward_shared"], &combine(&[vec![shared], geometries(false)])));

    // The workgroup-memory GEMMs (src/ops/conv2d/gemm.rs, src/ops/conv_transpose2d/gemm.rs): each
    // direction's tiling (BM, BN, BK, TM, TN) of every GEMM candidate; conv2d's with the geometry,
    // the forward with the epilogues, backward data with ACCUMULATE; the reductions take KH, KW
    // (conv2d) or nothing.
    for g in t.conv_gemm.iter().flatten() {
        let tile = |g: conv2d::gemm::Gemm| {
            vec![[c("BM", g.bm), c("BN", g.bn), c("BK", g.bk), c("TM", g.tm), c("TN", g.tn)].concat()]
        };
        let conv = geometries(false);
        all.extend(sets(
            "conv2d/gemm",
            &["conv2d_gemm_forward"],
            &combine(&[tile(g.conv2d_forward), conv.clone(), epilogues()]),
        ));
        all.extend(sets(
            "conv2d/gemm",
            &["conv2d_gemm_backward_data"],
            &combine(&[tile(g.conv2d_backward_data), conv.clone(), flag("ACCUMULATE")]),
        ));
        all.extend(sets(
            "conv2d/gemm",
            &["conv2d_gemm_backward_weight"],
            &combine(&[tile(g.conv2d_backward_weight), conv]),
        ));
        all.extend(sets(
            "conv_transpose2d/gemm",
            &["conv_transpose2d_gemm_forward"],
            &tile(g.conv_transpose2d_forward),
        ));
        all.extend(sets(
            "conv_transpose2d/gemm",
            &["conv_transpose2d_gemm_backward_data"],
            &combine(&[tile(g.conv_transpose2d_backward_data), flag("ACCUMULATE")]),
        ));
        all.extend(sets(
            "conv_transpose2d/gemm",
            &["conv_transpose2d_gemm_backward_weight"],
            &tile(g.conv_transpose2d_backward_weight),
        ));
    }
    let taps: Vec<Constants> = CONV_GEOMETRIES.iter().map(|g| [c("KH", g[0]), c("KW", g[1])].concat()).collect();
    all.extend(sets("conv2d/gemm", &["conv2d_gemm_reduce"], &taps));
    all.extend(sets("conv_transpose2d/gemm", &["conv_transpose2d_gemm_reduce"], &[vec![]]));

    // conv_transpose2d (src/ops/conv_transpose2d/mod.rs): WG is `Workgroups::quads` for the quad
    // kernels and `general` for the rest; backward data also takes ACCUMULATE (add or overwrite).
    let quads: BTreeSet<u32> = t.conv_transpose2d.iter().map(|w| w.quads).collect();
    let general: BTreeSet<u32> = t.conv_transpose2d.iter().map(|w| w.general).collect();
    let quads: Vec<Constants> = quads.iter().map(|&wg| c("WG", wg)).collect();
    let general: Vec<Constants> = general.iter().map(|&wg| c("WG", wg)).collect();
    all.extend(sets(
        "conv_transpose2d/tiled_quads",
        &["conv_transpose2d_forward_quads", "conv_transpose2d_backward_weight_quads"],
        &quads,
    ));
    all.extend(sets(
        "conv_transpose2d/tiled_quads",
        &["conv_transpose2d_backward_data_quads"],
        &combine(&[quads, flag("ACCUMULATE")]),
    ));
    all.extend(sets(
        "conv_transpose2d/tiled",
        &[
            "conv_transpose2d_forward",
            "conv_transpose2d_backward_weight_partial",
            "conv_transpose2d_backward_bias_partial",
            "conv_transpose2d_sum_partials",
        ],
        &general,
    ));
    all.extend(sets(
        "conv_transpose2d/tiled",
        &["conv_transpose2d_backward_data"],
        &combine(&[general, flag("ACCUMULATE")]),
    ));

    // matmul (src/ops/matmul/mod.rs, `gemm`): register tiles (vec4 and scalar entry points) or
    // shared tiles, with TRANS_A, TRANS_B, ACCUMULATE (the forward and the two backward
    // products use three of the eight combinations; all eight are translated).
    let flags = combine(&[flag("TRANS_A"), flag("TRANS_B"), flag("ACCUMULATE")]);
    for tiles in &t.matmul {
        match *tiles {
            Tiles::Register(r) => {
                let tile = [c("WG", r.wg), c("TM", r.tm), c("TN", r.tn)].concat();
                all.extend(sets(
                    "matmul/tiled",
                    &["matmul_forward", "matmul_forward_scalar"],
                    &combine(&[vec![tile], flags.clone()]),
                ));
            }
            Tiles::Shared(s) => {
                let tile = [c("TX", s.tx), c("TY", s.ty), c("SM", s.sm), c("SN", s.sn), c("BK", s.bk)].concat();
                all.extend(sets("matmul/tiled", &["matmul_forward_shared"], &combine(&[vec![tile], flags.clone()])));
            }
        }
    }

    // batchnorm2d (src/ops/batchnorm2d/mod.rs, WG = 256): workgroups sized to the shape.
    // `partial_threads`: powers of two from 32 to WG; `final_threads`: the number of chunks
    // (at most WG) rounded up to a power of two; `plane_threads`: shrunk to a plane, as above.
    let wgs = |list: Vec<u32>| -> Vec<Constants> { list.into_iter().map(|wg| c("WG", wg)).collect() };
    let (partial, last, plane) = (wgs(powers_of_two(32, 256)), wgs(powers_of_two(1, 256)), wgs(shrunk(256)));
    all.extend(sets("batchnorm2d/tiled", &["batchnorm_stats_running", "batchnorm_backward_param"], &[c("WG", 256)]));
    all.extend(sets("batchnorm2d/tiled", &["batchnorm_stats_partial", "batchnorm_stats_partial_vec4"], &partial));
    all.extend(sets("batchnorm2d/tiled", &["batchnorm_stats_final", "batchnorm_backward_final"], &last));
    all.extend(sets(
        "batchnorm2d/tiled",
        &["batchnorm_forward", "batchnorm_forward_vec4"],
        &combine(&[plane.clone(), epilogues()]),
    ));
    all.extend(sets(
        "batchnorm2d/tiled",
        &["batchnorm_backward_partial", "batchnorm_backward_partial_vec4"],
        &combine(&[partial, epilogues()]),
    ));
    all.extend(sets(
        "batchnorm2d/tiled",
        &[
            "batchnorm_backward_data",
            "batchnorm_backward_data_vec4",
            "batchnorm_backward_data_eval",
            "batchnorm_backward_data_eval_vec4",
        ],
        &combine(&[plane, epilogues(), flag("ACCUMULATE")]),
    ));

    // loss (src/loss/mod.rs, WG = 256): FROM_PROBS (logits, or probabilities stored by a fused
    // softmax) on all three.
    all.extend(sets("loss", &["loss_stats", "loss_finalize"], &flag("FROM_PROBS")));
    all.extend(sets("loss", &["loss_backward"], &combine(&[vec![c("WG", 256)], flag("FROM_PROBS")])));

    // Fixed constants, private to each wrapper module: `WG` (256) in src/ops/{bias_add, concat,
    // dropout, elementwise, relu, softmax, upsample}.rs and src/optim.rs; `WG` and `ITEMS` in
    // src/ops/reduce.rs; `TILE` in src/ops/maxpool2d.rs; `WG` and `VPT` in benches/common/ceiling.rs (the
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

    // The textbook kernels (`--kernels reference`, and the oracle of the tests): no constants.
    let textbook: [(&'static str, &[&'static str]); 4] = [
        (
            "conv2d/textbook",
            &[
                "conv2d_forward",
                "conv2d_backward_data",
                "conv2d_backward_weight",
                "conv2d_backward_bias",
                "conv2d_add_runs",
            ],
        ),
        (
            "conv_transpose2d/textbook",
            &[
                "conv_transpose2d_forward",
                "conv_transpose2d_backward_data",
                "conv_transpose2d_backward_weight",
                "conv_transpose2d_backward_bias",
                "conv_transpose2d_add_runs",
            ],
        ),
        ("matmul/textbook", &["matmul_forward", "matmul_backward_a", "matmul_backward_b"]),
        (
            "batchnorm2d/textbook",
            &[
                "batchnorm_sum_x",
                "batchnorm_mean",
                "batchnorm_sum_squares",
                "batchnorm_stats",
                "batchnorm_stats_running",
                "batchnorm_forward",
                "batchnorm_sum_backward",
                "batchnorm_backward_sums",
                "batchnorm_backward_data",
                "batchnorm_backward_gamma",
                "batchnorm_backward_beta",
            ],
        ),
    ];
    for (shader, entries) in textbook {
        all.extend(sets(shader, entries, &[vec![]]));
    }

    // The same pipeline reached two ways (a tiling in two families) is translated once.
    let mut seen = BTreeSet::new();
    all.retain(|k| seen.insert(format!("{}::{} {:?}", k.shader, k.entry, k.constants)));
    all
}
