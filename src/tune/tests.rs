//! Tests of the tuning: the builtin, the cache, the autotune.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::autotune::*;
use super::cache::*;
use super::families::Family;
use super::tiling::conv_transpose2d::Workgroups;
use super::tiling::gemm::{ConvGemm, Gemm, TilingFamily};
use super::tiling::matmul::{SharedTiling, Tiles};
use super::tiling::*;
use crate::autograd::tape::Accumulate;
use crate::ops::conv2d::{
    conv2d_backward_data, conv2d_backward_weight, conv2d_forward, BackwardData, BackwardWeight, Conv2d, Epilogue,
    Forward,
};
use crate::ops::conv_transpose2d::conv_transpose2d_forward;
use crate::ops::matmul::matmul_forward;
use crate::runtime::{Encoder, Gpu, GpuOptions};
use crate::testing::{assert_close_f32, gpu, random_vec, to_f64};

/// A fresh folder under the system's temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unet-wgpu-tuning-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cpu_info() -> wgpu::AdapterInfo {
    let mut info = wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
    info.name = "llvmpipe (LLVM 15.0.6, 256 bits)".into();
    info.driver = "llvmpipe".into();
    info.driver_info = "Mesa 22.3.6 (LLVM 15.0.6)".into();
    info
}

/// A tuning that differs from the builtin in every field.
fn unusual() -> Tuning {
    Tuning {
        conv2d_forward: conv2d::Tiling { wg: 32, rows: 2, tm: 4, bw_threads: 512 },
        conv2d_backward_data: conv2d::Tiling { wg: 128, rows: 4, tm: 2, bw_threads: 512 },
        conv2d_backward_weight: conv2d::Tiling { wg: 16, rows: 4, tm: 4, bw_threads: 96 },
        conv_transpose2d: Workgroups { general: 48, quads: 8 },
        matmul: Tiles::Shared(SharedTiling { tx: 8, ty: 4, sm: 3, sn: 2, bk: 16 }),
        conv_gemm: Some(ConvGemm::uniform(Gemm { bm: 12, bn: 20, bk: 3, tm: 3, tn: 5 })),
    }
}

#[test]
fn builtin_keeps_the_measured_defaults_on_cpu_drivers() {
    let cpu = cpu_info();
    assert_eq!(Tuning::builtin(&cpu), Tuning::cpu());
    let gl = wgpu::AdapterInfo { device_type: wgpu::DeviceType::Other, backend: wgpu::Backend::Gl, ..cpu.clone() };
    assert_eq!(Tuning::builtin(&gl), Tuning::cpu(), "llvmpipe by name");
    let gpu = wgpu::AdapterInfo { name: "NVIDIA H100".into(), device_type: wgpu::DeviceType::DiscreteGpu, ..cpu };
    let t = Tuning::builtin(&gpu);
    assert!(t.conv2d_forward.wg > Tuning::cpu().conv2d_forward.wg && matches!(t.matmul, Tiles::Shared(_)));
    // 2-row convolution tiles where registers are scarce; 4 rows on the CPU driver.
    assert_eq!((t.conv2d_forward.rows, t.conv2d_backward_data.rows, Tuning::cpu().conv2d_forward.rows), (2, 2, 4));
    // Convolutions as workgroup-memory GEMMs on GPUs, register tiles on the CPU driver.
    assert_eq!((t.conv_gemm, Tuning::cpu().conv_gemm), (Some(ConvGemm::default()), None));
    for info in [gpu, cpu_info()] {
        Tuning::builtin(&info).check(&wgpu::Limits::default()).unwrap();
    }
}

#[test]
fn swiftshader_never_gets_the_register_tile_convolutions() {
    let native = wgpu::AdapterInfo { name: "SwiftShader Device (Subzero)".into(), ..cpu_info() };
    // In a browser, wgpu knows the fallback adapter only as `Cpu`, with no name.
    for info in [native, browser_info()] {
        assert!(!builds_register_convolutions(&info), "{info:?}");
        let t = Tuning::builtin(&info);
        assert_eq!(t, Tuning { conv_gemm: Some(ConvGemm::default()), ..Tuning::cpu() });
        t.check(&wgpu::Limits::default()).unwrap();
        let c = Candidates::for_adapter(&info, &wgpu::Limits::default());
        assert!(
            c.conv2d_forward.is_empty() && c.conv2d_backward_data.is_empty() && c.conv2d_backward_weight.is_empty()
        );
        assert!(c.conv_gemm.len() > 1 && c.conv_gemm.iter().all(Option::is_some), "{:?}", c.conv_gemm);
    }
    // lavapipe keeps its register tiles and every candidate; a hardware adapter in a browser
    // gets the GPU family.
    assert!(builds_register_convolutions(&cpu_info()));
    let limits = wgpu::Limits::default();
    assert_eq!(Candidates::for_adapter(&cpu_info(), &limits), Candidates::new(&Tuning::cpu(), &limits));
    let web_gpu = wgpu::AdapterInfo { device_type: wgpu::DeviceType::Other, ..browser_info() };
    assert!(builds_register_convolutions(&web_gpu));
    assert_eq!(Tuning::builtin(&web_gpu), Tuning::gpu());
}

/// A browser's adapter as wgpu sees it: no name, a fallback adapter (`Cpu`).
fn browser_info() -> wgpu::AdapterInfo {
    wgpu::AdapterInfo { name: String::new(), backend: wgpu::Backend::BrowserWebGpu, ..cpu_info() }
}

#[test]
fn a_builtin_that_does_not_fit_the_limits_falls_back_with_a_warning() {
    let gpu =
        wgpu::AdapterInfo { name: "Small GPU".into(), device_type: wgpu::DeviceType::IntegratedGpu, ..cpu_info() };
    let small = wgpu::Limits { max_compute_invocations_per_workgroup: 64, ..wgpu::Limits::default() };
    let r = resolve(&gpu, &small, &TuningFrom::Builtin);
    assert_eq!(r.tuning, Tuning::cpu());
    r.tuning.check(&small).unwrap();
    let warning = r.warning.expect("a warning");
    assert!(warning.contains("Small GPU") && warning.contains("the adapter allows 64"), "{warning}");
    let fits = resolve(&gpu, &wgpu::Limits::default(), &TuningFrom::Builtin);
    assert_eq!((fits.tuning, fits.warning), (Tuning::builtin(&gpu), None));
}

#[test]
fn a_named_family_replaces_the_builtin_and_the_cache() {
    let limits = wgpu::Limits::default();
    assert_eq!(Tuning::of_family(TilingFamily::Gpu).conv_gemm, Some(ConvGemm::default()));
    assert_eq!(Tuning::of_family(TilingFamily::Cpu), Tuning::cpu());
    for family in [TilingFamily::Gpu, TilingFamily::Cpu] {
        let (t, source) = initial(&cpu_info(), &limits, &TuningFrom::Builtin, Some(family));
        assert_eq!((t, source), (Tuning::of_family(family), TuningSource::Family(family)));
        assert_eq!(family.to_string().parse::<TilingFamily>().unwrap(), family);
    }
    let err = "gpus".parse::<TilingFamily>().unwrap_err().to_string();
    assert!(err.contains("\"gpus\"") && err.contains("gpu") && err.contains("cpu"), "{err}");
}

#[test]
fn cache_paths_follow_the_variables() {
    let s = |v: &str| Some(OsString::from(v));
    assert_eq!(cache_path_from(s("/c/t.json"), s("/x"), s("/h")), Some(PathBuf::from("/c/t.json")));
    assert_eq!(cache_path_from(s(""), s("/x"), s("/h")), Some(PathBuf::from("/x/unet-wgpu/tuning.json")));
    assert_eq!(cache_path_from(None, None, s("/h")), Some(PathBuf::from("/h/.cache/unet-wgpu/tuning.json")));
    assert_eq!(cache_path_from(None, s(""), None), None);
}

#[test]
fn cache_round_trips_per_adapter() {
    let dir = temp_dir("round-trip");
    let path = dir.join("nested/tuning.json");
    let limits = wgpu::Limits::default();
    let key = AdapterKey::of(&cpu_info());
    let other = AdapterKey { driver_info: "Mesa 23.0.0".into(), ..key.clone() };
    assert_eq!(load_cache(&path, &key, &limits).unwrap(), None, "no file: no entry");
    save_cache(&path, &key, &unusual(), "test").unwrap();
    assert_eq!(load_cache(&path, &key, &limits).unwrap(), Some(unusual()));
    assert_eq!(load_cache(&path, &other, &limits).unwrap(), None, "another driver version must not match");
    // A second adapter's entry joins the first; rewriting the first replaces it.
    let register = Tuning { matmul: Tiles::Register(matmul::Tiling { wg: 8, tm: 4, tn: 12 }), ..unusual() };
    save_cache(&path, &other, &register, "test").unwrap();
    save_cache(&path, &key, &Tuning::cpu(), "test").unwrap();
    assert_eq!(load_cache(&path, &key, &limits).unwrap(), Some(Tuning::cpu()));
    assert_eq!(load_cache(&path, &other, &limits).unwrap(), Some(register));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("\"driver_info\"").count(), 2, "one entry per adapter:\n{text}");
    assert!(std::fs::read_dir(path.parent().unwrap()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
    // resolve() reads it for the matching adapter, reports where from.
    let r = resolve(&cpu_info(), &limits, &TuningFrom::Cache(path.clone()));
    assert_eq!((r.tuning, r.source, r.warning), (Tuning::cpu(), TuningSource::Cache(path.clone()), None));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unusable_caches_give_the_builtin_with_a_warning() {
    let dir = temp_dir("corrupt");
    let limits = wgpu::Limits::default();
    let key = AdapterKey::of(&cpu_info());
    let good = dir.join("good.json");
    save_cache(&good, &key, &unusual(), "test").unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    let too_big = text.replacen("\"wg\": 32", "\"wg\": 100000", 1);
    assert_ne!(too_big, text);
    let cases = [
        ("garbage", "{ not json".to_string()),
        ("truncated", text[..text.len() / 2].to_string()),
        ("foreign version", text.replace(&format!("\"version\": {CACHE_VERSION}"), "\"version\": 1")),
        ("not a cache", "{\"adapters\": []}".to_string()),
        ("missing field", text.replace("\"bw_threads\"", "\"threads\"")),
        ("rows out of range", text.replacen("\"rows\": 2", "\"rows\": 3", 1)),
        ("workgroup over the limit", too_big),
    ];
    for (what, contents) in cases {
        let path = dir.join(format!("{}.json", what.replace(' ', "-")));
        std::fs::write(&path, contents).unwrap();
        assert!(load_cache(&path, &key, &limits).is_err(), "{what}: load_cache should fail");
        let r = resolve(&cpu_info(), &limits, &TuningFrom::Cache(path.clone()));
        assert_eq!(r.tuning, Tuning::cpu(), "{what}");
        assert_eq!(r.source, TuningSource::Builtin { cache: Some(path.clone()) }, "{what}");
        let warning = r.warning.unwrap_or_else(|| panic!("{what}: no warning"));
        assert!(
            warning.contains(&path.display().to_string()) && warning.contains("unet-wgpu tune"),
            "{what}: {warning}"
        );
    }
    // A whole Gpu opens on a corrupt cache, with the builtin tuning; `tune` can overwrite it.
    let corrupt = dir.join("garbage.json");
    let gpu = Gpu::new(&GpuOptions { tuning: TuningFrom::Cache(corrupt.clone()), ..Default::default() }).unwrap();
    assert_eq!(gpu.tuning(), Tuning::builtin(&gpu.info));
    assert_eq!(gpu.tuning_source(), TuningSource::Builtin { cache: Some(corrupt.clone()) });
    save_cache(&corrupt, &AdapterKey::of(&gpu.info), &unusual(), "test").unwrap();
    assert_eq!(load_cache(&corrupt, &AdapterKey::of(&gpu.info), &gpu.limits).unwrap(), Some(unusual()));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn default_wrappers_use_the_gpus_tuning() {
    // A Gpu of its own: its pipeline cache holds only what this test compiles.
    let gpu =
        Gpu::new(&GpuOptions { tuning: TuningFrom::Builtin, tiling: Some(TilingFamily::Cpu), ..Default::default() })
            .unwrap();
    // The register tiles first; the GEMM tilings below.
    let t = Tuning { conv_gemm: None, ..unusual() };
    assert_ne!(t, gpu.tuning());
    gpu.set_tuning(t);
    assert_eq!((gpu.tuning(), gpu.tuning_source()), (t, TuningSource::Set));

    // Images of 128 output tiles (2 x 8 x 8 of 4 rows x 8 columns): the convolutions'
    // workgroups shrink to the tiles an image has, and these have enough for 128 threads.
    let p = Conv2d::new(1, 1);
    let (xd, wd, yd) = ([2, 3, 32, 64], [4, 3, 3, 3], [2, 4, 32, 64]);
    let (x, w, dy) = (random_vec(60, 2 * 3 * 2048), random_vec(61, 4 * 3 * 9), random_vec(62, 2 * 4 * 2048));
    let (xt, wt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&dy, &yd));
    let (y, dx, dw) = (gpu.empty(&yd), gpu.empty(&xd), gpu.empty(&wd));
    let (ct_x, ct_w, ct_y) =
        (gpu.upload(&x[..240], &[2, 3, 5, 8]), gpu.upload(&w[..3 * 2 * 4], &[3, 2, 2, 2]), gpu.empty(&[2, 2, 10, 16]));
    let (a, b, c) = (gpu.upload(&x[..12 * 8], &[12, 8]), gpu.upload(&w[..8 * 4], &[8, 4]), gpu.empty(&[12, 4]));
    // The three conv2d directions and the transposed forward, through the default wrappers.
    let record_convolutions = |enc: &mut Encoder| {
        let f = Forward { x: &xt, w: &wt, b: None, y: &y, p, epilogue: Epilogue::Identity, tiling: None };
        conv2d_forward(&gpu, enc, &f);
        let a = BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Add, tiling: None };
        conv2d_backward_data(&gpu, enc, &a);
        conv2d_backward_weight(&gpu, enc, &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: None, p, tiling: None });
        let t = crate::ops::conv_transpose2d::Forward { x: &ct_x, w: &ct_w, b: None, y: &ct_y, workgroups: None };
        conv_transpose2d_forward(&gpu, enc, &t);
    };
    let mut enc = gpu.encoder();
    enc.clear(&dx);
    enc.clear(&dw);
    record_convolutions(&mut enc);
    matmul_forward(&gpu, &mut enc, &crate::ops::matmul::Forward { a: &a, b: &b, c: &c, tiles: None });
    gpu.submit(enc);

    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    assert_close_f32(
        "y",
        &gpu.read(&y),
        &crate::ops::conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, None, &p),
        1e-4,
    );
    assert_close_f32(
        "dx",
        &gpu.read(&dx),
        &crate::ops::conv2d::reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p),
        1e-3,
    );
    assert_close_f32(
        "dw",
        &gpu.read(&dw),
        &crate::ops::conv2d::reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p).0,
        1e-3,
    );
    let want =
        crate::ops::conv_transpose2d::reference::conv_transpose2d_forward(&xf[..240], &wf[..24], None, [2, 3, 5, 8], 2);
    assert_close_f32("conv_transpose2d y", &gpu.read(&ct_y), &want, 1e-4);
    let want = crate::ops::matmul::reference::matmul_forward(&xf[..96], &wf[..32], [12, 8, 4]);
    assert_close_f32("matmul c", &gpu.read(&c), &want, 1e-4);

    // Each kernel was compiled with the tuning's constants, and only with those.
    let wg_of = |shader: &str, entry: &str, name: &str| -> Vec<f64> {
        let all = gpu.compiled_constants(shader, entry);
        assert!(!all.is_empty(), "{shader}::{entry} was not compiled");
        all.iter().map(|c| c.iter().find(|(k, _)| *k == name).expect("constant").1).collect()
    };
    assert_eq!(wg_of("conv2d/tiled", "conv2d_forward", "WG"), [32.0]);
    assert_eq!(wg_of("conv2d/tiled", "conv2d_forward", "ROWS"), [2.0]);
    assert_eq!(wg_of("conv2d/tiled", "conv2d_backward_data_stride1", "WG"), [128.0]);
    assert_eq!(wg_of("conv2d/tiled", "conv2d_backward_data_stride1", "ROWS"), [4.0]);
    assert_eq!(wg_of("conv2d/tiled", "conv2d_backward_data_stride1", "TM"), [2.0]);
    assert_eq!(wg_of("conv2d/tiled_backward", "conv2d_backward_weight", "WG"), [16.0]);
    assert_eq!(wg_of("conv_transpose2d/tiled_quads", "conv_transpose2d_forward_quads", "WG"), [8.0]);
    assert_eq!(wg_of("matmul/tiled", "matmul_forward_shared", "BK"), [16.0]);
    assert!(gpu.compiled_constants("matmul/tiled", "matmul_forward").is_empty(), "the register GEMM ran");

    // With GEMM tilings, every convolution direction runs them.
    gpu.set_tuning(unusual());
    let (ct_dy, ct_dx) = (gpu.upload(&random_vec(63, 2 * 2 * 10 * 16), &[2, 2, 10, 16]), gpu.empty(&[2, 3, 5, 8]));
    let mut enc = gpu.encoder();
    record_convolutions(&mut enc);
    crate::ops::conv_transpose2d::conv_transpose2d_backward_data(
        &gpu,
        &mut enc,
        &crate::ops::conv_transpose2d::BackwardData {
            w: &ct_w,
            dy: &ct_dy,
            dx: &ct_dx,
            acc: Accumulate::Add,
            workgroups: None,
        },
    );
    gpu.submit(enc);
    assert_close_f32(
        "y (gemm)",
        &gpu.read(&y),
        &crate::ops::conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, None, &p),
        1e-4,
    );
    for (shader, entry) in [
        ("conv2d/gemm", "conv2d_gemm_forward"),
        ("conv2d/gemm", "conv2d_gemm_backward_data"),
        ("conv2d/gemm", "conv2d_gemm_backward_weight"),
        ("conv_transpose2d/gemm", "conv_transpose2d_gemm_forward"),
        ("conv_transpose2d/gemm", "conv_transpose2d_gemm_backward_data"),
    ] {
        assert_eq!(wg_of(shader, entry, "BN"), [20.0], "{shader}::{entry}");
    }
}

#[test]
fn autotune_chooses_from_the_candidates_within_the_budget() {
    let gpu = gpu();
    let builtin = Tuning::builtin(&gpu.info);
    let candidates = Candidates::new(&builtin, &gpu.limits);
    let shapes =
        TuneShapes { conv2d: vec![[1, 8, 8, 8]], conv_transpose2d: vec![[1, 8, 4, 4]], matmul: vec![[16, 16, 16]] };

    // No budget: nothing is timed, the builtin stays.
    let (t, report) = Tuning::autotune_on(gpu, Duration::ZERO, &shapes);
    assert_eq!(t, builtin);
    assert!(!report.complete && report.rows.iter().all(|r| r.ms.is_none()), "{}", report.table());
    assert_eq!(report.rows.iter().filter(|r| r.chosen).count(), 6, "{}", report.table());

    // A small budget: every builtin is timed (however slow the machine: compiling a
    // candidate's pipelines counts against the budget, and a loaded machine once compiled
    // nothing else in 6 s), and every choice is one of the candidates.
    let budget = Duration::from_secs(6);
    let (t, report) = Tuning::autotune_on(gpu, budget, &shapes);
    let table = report.table();
    // A guard against a runaway, not a timing: the builtins' rounds may run past the budget.
    assert!(report.elapsed < budget + Duration::from_secs(120), "overran the budget:\n{table}");
    let families =
        ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv_transpose2d", "matmul", "conv_gemm"];
    for family in families {
        let builtin = report.rows.iter().find(|r| r.kernel == family).expect("a row per family");
        assert!(builtin.ms.is_some(), "the builtin of {family} was not timed:\n{table}");
    }
    assert_eq!(report.rows.iter().filter(|r| r.chosen).count(), 6, "one choice per family:\n{table}");
    assert!(candidates.conv2d_forward.contains(&t.conv2d_forward), "{t:?}");
    assert!(candidates.conv2d_backward_data.contains(&t.conv2d_backward_data), "{t:?}");
    assert!(candidates.conv2d_backward_weight.contains(&t.conv2d_backward_weight), "{t:?}");
    assert!(candidates.conv_transpose2d.contains(&t.conv_transpose2d), "{t:?}");
    assert!(candidates.matmul.contains(&t.matmul), "{t:?}");
    assert!(candidates.conv_gemm.contains(&t.conv_gemm), "{t:?}");
    t.check(&gpu.limits).unwrap();
    for r in report.rows.iter().filter(|r| r.chosen) {
        let family = &t.to_string();
        assert!(family.contains(r.candidate.trim_end_matches(" (builtin)")), "{r:?} not in {family}");
    }

    // The chosen forward tiling computes the convolution.
    let (xd, wd, p) = ([2, 5, 7, 12], [6, 5, 3, 3], Conv2d::new(1, 1));
    let (x, w) = (random_vec(70, 2 * 5 * 84), random_vec(71, 6 * 5 * 9));
    let (xt, wt, y) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.empty(&[2, 6, 7, 12]));
    let mut enc = gpu.encoder();
    conv2d_forward(
        gpu,
        &mut enc,
        &Forward { x: &xt, w: &wt, b: None, y: &y, p, epilogue: Epilogue::Identity, tiling: Some(t.conv2d_forward) },
    );
    gpu.submit(enc);
    let want = crate::ops::conv2d::reference::conv2d_forward(&to_f64(&x), xd, &to_f64(&w), wd, None, &p);
    assert_close_f32("y with the chosen tiling", &gpu.read(&y), &want, 1e-4);
}

#[test]
fn a_candidate_with_wrong_output_is_never_chosen() {
    // Candidates are GEMM sizes: the smaller, the faster. Size 8 is the fastest but fails
    // its check; 64 beats the builtin (256) by far more than the margin.
    let gpu = gpu();
    let [a, b, c] = [256, 8, 64].map(|n| {
        (gpu.upload(&random_vec(80, n * n), &[n, n]), gpu.upload(&random_vec(81, n * n), &[n, n]), gpu.empty(&[n, n]))
    });
    let family = Family {
        kernel: "test",
        candidates: vec![0usize, 1, 2],
        label: |i: &usize| format!("candidate {i}"),
        check: Box::new(|_: &Gpu, i: &usize| if *i == 1 { Err("differs".into()) } else { Ok(()) }),
        shapes: vec![(
            "gemm".into(),
            Box::new(move |gpu: &Gpu, enc: &mut Encoder, i: &usize| {
                let (x, y, z) = [&a, &b, &c][*i];
                matmul_forward(
                    gpu,
                    enc,
                    &crate::ops::matmul::Forward { a: x, b: y, c: z, tiles: Some(Tiles::default()) },
                );
            }),
        )],
    };
    let (mut rows, mut complete) = (Vec::new(), true);
    let chosen = tune_family(gpu, family, (Instant::now() + Duration::from_secs(60), false), &mut rows, &mut complete);
    let table: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(chosen, 2, "{table:#?}");
    assert!(complete, "{table:#?}");
    let wrong: Vec<_> = rows.iter().filter(|r| r.note.starts_with("wrong output")).collect();
    assert!(wrong.len() == 1 && wrong[0].candidate == "candidate 1" && wrong[0].ms.is_none(), "{table:#?}");
    let chosen_rows: Vec<_> = rows.iter().filter(|r| r.chosen).collect();
    assert!(chosen_rows.len() == 1 && chosen_rows[0].candidate == "candidate 2", "{table:#?}");
}

#[test]
fn candidates_start_with_the_builtin_and_fit_the_adapter() {
    let limits = wgpu::Limits::default();
    for t in [
        Tuning::cpu(),
        Tuning::builtin(&wgpu::AdapterInfo {
            device_type: wgpu::DeviceType::DiscreteGpu,
            name: "gpu".into(),
            ..cpu_info()
        }),
    ] {
        let c = Candidates::new(&t, &limits);
        assert_eq!(
            (
                c.conv2d_forward[0],
                c.conv2d_backward_data[0],
                c.conv2d_backward_weight[0],
                c.conv_transpose2d[0],
                c.matmul[0],
                c.conv_gemm[0]
            ),
            (
                t.conv2d_forward,
                t.conv2d_backward_data,
                t.conv2d_backward_weight,
                t.conv_transpose2d,
                t.matmul,
                t.conv_gemm
            )
        );
        // Both families are candidates whatever the builtin.
        assert!(c.conv_gemm.contains(&None) && c.conv_gemm.contains(&Some(ConvGemm::default())), "{c:?}");
        assert!(c.conv2d_forward.len() > 1 && c.matmul.len() > 1);
        let small = wgpu::Limits {
            max_compute_invocations_per_workgroup: 64,
            max_compute_workgroup_size_x: 64,
            ..limits.clone()
        };
        let c = Candidates::new(&Tuning::cpu(), &small);
        assert!(c.conv2d_forward.iter().all(|t| t.wg <= 64), "{c:?}");
        assert!(!c.matmul.contains(&Tiles::Shared(SharedTiling::default())), "256 threads over the limit: {c:?}");
    }
}
