use super::*;
use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

fn channels(seed: u64, c: usize, lo: f64, hi: f64) -> Vec<f32> {
    random_vec(seed, c).iter().map(|&v| (lo + (hi - lo) * (v as f64 + 1.0) / 2.0) as f32).collect()
}

#[test]
fn reference_backward_matches_finite_differences() {
    let dims = [2, 3, 5, 7];
    let x = to_f64(&random_vec(1, dims.iter().product()));
    let gamma = to_f64(&channels(2, 3, 0.5, 2.0));
    let beta = to_f64(&random_vec(3, 3));
    let r = to_f64(&random_vec(4, x.len()));

    // Training: the loss sees x through the batch statistics too.
    let (mean, var) = reference::batch_stats(&x, dims);
    let invstd = reference::invstd(&var);
    let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
    let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(&x, &r, ch, dims, true, Epilogue::Identity);
    let f = reference::batchnorm2d_forward_train;
    let f = |x: &[f64], g: &[f64], b: &[f64]| f(x, g, b, dims, Epilogue::Identity);
    let fd_x = numeric_grad(|x| dot(&r, &f(x, &gamma, &beta)), &x, 1e-6);
    let fd_gamma = numeric_grad(|g| dot(&r, &f(&x, g, &beta)), &gamma, 1e-6);
    let fd_beta = numeric_grad(|b| dot(&r, &f(&x, &gamma, b)), &beta, 1e-6);
    assert_close("train dx", &dx, &fd_x, 1e-5);
    assert_close("train dgamma", &dgamma, &fd_gamma, 1e-6);
    assert_close("train dbeta", &dbeta, &fd_beta, 1e-6);

    // Evaluation: constant running statistics.
    let running_mean = to_f64(&random_vec(5, 3));
    let running_invstd = reference::invstd(&to_f64(&channels(6, 3, 0.2, 3.0)));
    let g = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        let ch = reference::Channels { mean: &running_mean, invstd: &running_invstd, gamma, beta };
        dot(&r, &reference::batchnorm2d_forward(x, ch, dims, Epilogue::Identity))
    };
    let ch = reference::Channels { mean: &running_mean, invstd: &running_invstd, gamma: &gamma, beta: &beta };
    let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(&x, &r, ch, dims, false, Epilogue::Identity);
    assert_close("eval dx", &dx, &numeric_grad(|x| g(x, &gamma, &beta), &x, 1e-6), 1e-6);
    assert_close("eval dgamma", &dgamma, &numeric_grad(|p| g(&x, p, &beta), &gamma, 1e-6), 1e-6);
    assert_close("eval dbeta", &dbeta, &numeric_grad(|p| g(&x, &gamma, p), &beta, 1e-6), 1e-6);
}

/// Everything one GPU run produces, read back.
struct Run {
    y: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

/// Inputs of one check; gradients start at `*0` (the backward accumulates; with
/// `overwrite`, dx is overwritten instead and `dx0` is the stale value it must lose).
struct Case {
    dims: [usize; 4],
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    dy: Vec<f32>,
    dx0: Vec<f32>,
    dgamma0: Vec<f32>,
    dbeta0: Vec<f32>,
    overwrite: bool,
}

impl Case {
    /// Random inputs; x is `offset + spread * U(-1, 1)`.
    fn new(seed: u64, dims: [usize; 4], offset: f32, spread: f32) -> Case {
        let (len, c) = (dims.iter().product(), dims[1]);
        Case {
            dims,
            x: random_vec(seed, len).iter().map(|v| offset + spread * v).collect(),
            gamma: channels(seed + 1, c, 0.5, 2.0),
            beta: random_vec(seed + 2, c),
            running_mean: random_vec(seed + 3, c),
            running_var: channels(seed + 4, c, 0.5, 2.0),
            dy: random_vec(seed + 5, len),
            dx0: random_vec(seed + 6, len),
            dgamma0: random_vec(seed + 7, c),
            dbeta0: random_vec(seed + 8, c),
            overwrite: false,
        }
    }

    /// Moves the values of x whose pre-activation z (in either mode) lies within 1e-3 of
    /// ReLU's kink, where the f32 GPU and the f64 reference may disagree on its side.
    fn off_the_kink(mut self) -> Case {
        let c = self.dims[1];
        let hw = self.dims[2] * self.dims[3];
        let (gamma, beta) = (to_f64(&self.gamma), to_f64(&self.beta));
        for _ in 0..10 {
            let x = to_f64(&self.x);
            let (mean, var) = reference::batch_stats(&x, self.dims);
            let forward = |mean: &[f64], var: &[f64]| {
                let ch = reference::Channels { mean, invstd: &reference::invstd(var), gamma: &gamma, beta: &beta };
                reference::batchnorm2d_forward(&x, ch, self.dims, Epilogue::Identity)
            };
            let train = forward(&mean, &var);
            let (rm, rv) = (to_f64(&self.running_mean), to_f64(&self.running_var));
            let eval = forward(&rm, &rv);
            let near: Vec<usize> = (0..x.len()).filter(|&i| train[i].abs() < 1e-3 || eval[i].abs() < 1e-3).collect();
            if near.is_empty() {
                return self;
            }
            for i in near {
                // z grows with x (gamma > 0): push it 0.01 further along its sign.
                let step = if train[i] + eval[i] >= 0.0 { 0.01 } else { -0.01 };
                self.x[i] += step / self.gamma[(i / hw) % c];
            }
        }
        panic!("batchnorm2d test case {:?}: x stays near ReLU's kink", self.dims);
    }

    fn run_gpu(&self, mode: Mode) -> Run {
        self.run_gpu_fused(mode, Epilogue::Identity)
    }

    fn run_gpu_fused(&self, mode: Mode, e: Epilogue) -> Run {
        let gpu = gpu();
        let (dims, c) = (self.dims, [self.dims[1]]);
        let x = gpu.upload(&self.x, &dims);
        let (gamma, beta) = (gpu.upload(&self.gamma, &c), gpu.upload(&self.beta, &c));
        let (rm, rv) = (gpu.upload(&self.running_mean, &c), gpu.upload(&self.running_var, &c));
        let dy = gpu.upload(&self.dy, &dims);
        let (dx, dgamma, dbeta) =
            (gpu.upload(&self.dx0, &dims), gpu.upload(&self.dgamma0, &c), gpu.upload(&self.dbeta0, &c));
        let (mean, invstd, y) = (gpu.empty(&c), gpu.empty(&c), gpu.empty(&dims));
        let mut enc = gpu.encoder();
        match mode {
            Mode::Train => batchnorm2d_stats(gpu, &mut enc, &x, &rm, &rv, &mean, &invstd),
            Mode::Eval => batchnorm2d_running_stats(gpu, &mut enc, &rm, &rv, &mean, &invstd),
        }
        let ch = Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
        batchnorm2d_forward(gpu, &mut enc, &Forward { x: &x, ch, y: &y, epilogue: e });
        let acc = if self.overwrite { Accumulate::Overwrite } else { Accumulate::Add };
        let grads = Grads { dx: Some((&dx, acc)), dgamma: Some(&dgamma), dbeta: Some(&dbeta) };
        batchnorm2d_backward(gpu, &mut enc, &Backward { mode, x: &x, dy: &dy, ch, grads, epilogue: e });
        gpu.submit(enc);
        Run {
            y: gpu.read(&y),
            mean: gpu.read(&mean),
            invstd: gpu.read(&invstd),
            running_mean: gpu.read(&rm),
            running_var: gpu.read(&rv),
            dx: gpu.read(&dx),
            dgamma: gpu.read(&dgamma),
            dbeta: gpu.read(&dbeta),
        }
    }

    fn check(&self, mode: Mode) {
        self.check_fused(mode, Epilogue::Identity)
    }

    fn check_fused(&self, mode: Mode, e: Epilogue) {
        let got = self.run_gpu_fused(mode, e);
        let dims = self.dims;
        let what = |name: &str| format!("{mode:?} {e:?} {name} {dims:?}");
        let x = to_f64(&self.x);
        let (gamma, beta) = (to_f64(&self.gamma), to_f64(&self.beta));
        let (rm, rv) = (to_f64(&self.running_mean), to_f64(&self.running_var));
        let (mean, invstd, want_rm, want_rv) = match mode {
            Mode::Train => {
                let (mean, var) = reference::batch_stats(&x, dims);
                let (new_rm, new_rv) = reference::update_running(&rm, &rv, &mean, &var, dims[0] * dims[2] * dims[3]);
                (mean, reference::invstd(&var), new_rm, new_rv)
            }
            Mode::Eval => (rm.clone(), reference::invstd(&rv), rm, rv),
        };
        let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
        let y = reference::batchnorm2d_forward(&x, ch, dims, e);
        let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(
            &x,
            &to_f64(&self.dy),
            reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta },
            dims,
            mode == Mode::Train,
            e,
        );
        let plus =
            |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };

        assert_close_f32(&what("mean"), &got.mean, &mean, 1e-5);
        assert_close_f32(&what("invstd"), &got.invstd, &invstd, 1e-4);
        assert_close_f32(&what("running_mean"), &got.running_mean, &want_rm, 1e-5);
        assert_close_f32(&what("running_var"), &got.running_var, &want_rv, 1e-4);
        assert_close_f32(&what("y"), &got.y, &y, 1e-4);
        let want_dx = if self.overwrite { dx } else { plus(dx, &self.dx0) };
        assert_close_f32(&what("dx"), &got.dx, &want_dx, 1e-3);
        assert_close_f32(&what("dgamma"), &got.dgamma, &plus(dgamma, &self.dgamma0), 1e-3);
        assert_close_f32(&what("dbeta"), &got.dbeta, &plus(dbeta, &self.dbeta0), 1e-3);
    }
}

#[test]
fn gpu_matches_reference_on_odd_shapes() {
    // H*W odd (the scalar entry points) and H*W a multiple of 4 (their vec4 twins).
    let scalar = [(10, [1, 3, 5, 7]), (20, [2, 5, 5, 7]), (30, [2, 3, 1, 1]), (40, [3, 2, 17, 19])];
    let quads = [(11, [1, 3, 2, 2]), (21, [2, 5, 4, 5]), (41, [3, 2, 8, 12])];
    for (seed, dims) in scalar.into_iter().chain(quads) {
        let case = Case::new(seed, dims, 0.0, 1.0);
        case.check(Mode::Train);
        case.check(Mode::Eval);
    }
    // One value per channel: only evaluation is defined (as in PyTorch).
    Case::new(50, [1, 5, 1, 1], 0.0, 1.0).check(Mode::Eval);
}

#[test]
fn workgroups_fit_the_work() {
    // Pass 2: one thread per partial, a power of two (the top level at batch 4: 16 chunks).
    assert_eq!((Params::new([4, 16, 256, 256]).splits, Params::new([4, 16, 256, 256]).final_threads()), (16, 16));
    assert_eq!(Params::new([2, 3, 67, 129]).final_threads(), 2);
    assert_eq!(Params::new([4, 256, 16, 16]).final_threads(), 1);
    // Elementwise: at most a plane's units (quads where H*W % 4 == 0), rounded up to 8.
    assert_eq!(Params::new([2, 16, 256, 256]).plane_threads(), WG);
    assert_eq!(Params::new([2, 256, 16, 16]).plane_threads(), 64);
    assert_eq!(Params::new([2, 3, 3, 5]).plane_threads(), 16);
}

#[test]
fn channels_split_over_many_workgroups() {
    // M = 2 * 67 * 129 = 17286 values a channel (scalar entry points) and M = 2 * 64 * 132
    // = 16896 (quads): 2 chunks each, the last one short.
    for (seed, dims) in [(60, [2, 3, 67, 129]), (61, [2, 3, 64, 132])] {
        assert_eq!(Params::new(dims).splits, 2);
        let case = Case::new(seed, dims, 0.5, 2.0);
        case.check(Mode::Train);
        // Fixed-order reductions: a second run gives the same bits.
        let (a, b) = (case.run_gpu(Mode::Train), case.run_gpu(Mode::Train));
        assert_eq!((a.mean, a.invstd, a.y, a.dx, a.dgamma), (b.mean, b.invstd, b.y, b.dx, b.dgamma));
    }
}

#[test]
fn large_mean_keeps_variance_precise() {
    // Values around 100 with spread 1: E[x^2] - E[x]^2 in f32 would lose about
    // four of the seven digits of the variance.
    for (seed, dims) in [(70, [2, 5, 5, 7]), (80, [2, 2, 67, 129]), (81, [2, 2, 64, 132])] {
        let case = Case::new(seed, dims, 100.0, 1.0);
        case.check(Mode::Train);
    }
}

#[test]
fn tape_matches_wrappers() {
    let gpu = gpu();
    let mut case = Case::new(90, [2, 3, 2, 3], 0.3, 1.5);
    // The tape's gradient buffers start at zero.
    case.dx0.fill(0.0);
    case.dgamma0.fill(0.0);
    case.dbeta0.fill(0.0);
    let want = case.run_gpu(Mode::Train);
    let (dims, c) = (case.dims, [3]);
    let x = gpu.upload(&case.x, &dims).with_grad();
    let gamma = gpu.upload(&case.gamma, &c).with_grad();
    let beta = gpu.upload(&case.beta, &c).with_grad();
    let (rm, rv) = (gpu.upload(&case.running_mean, &c), gpu.upload(&case.running_var, &c));
    let mut step = Step::train(gpu);
    let y = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv, Epilogue::Identity);
    let mut grads = step.backward(vec![(y.clone(), gpu.upload(&case.dy, &dims))]);
    let (dx, dgamma, dbeta) = (grads.take(&x).unwrap(), grads.take(&gamma).unwrap(), grads.take(&beta).unwrap());
    step.submit();
    assert_eq!(gpu.read(&y), want.y);
    assert_eq!(gpu.read(&rm), want.running_mean);
    assert_eq!(gpu.read(&rv), want.running_var);
    assert_eq!(gpu.read(&dx), want.dx);
    assert_eq!(gpu.read(&dgamma), want.dgamma);
    assert_eq!(gpu.read(&dbeta), want.dbeta);

    // Only x needs a gradient: the same dx, no parameter kernels.
    let (gamma_const, beta_const) = (gpu.upload(&case.gamma, &c), gpu.upload(&case.beta, &c));
    let mut step = Step::train(gpu);
    let y_only_x = batchnorm2d(&mut step, &x, &gamma_const, &beta_const, &rm, &rv, Epilogue::Identity);
    let mut grads = step.backward(vec![(y_only_x, gpu.upload(&case.dy, &dims))]);
    let dx_only = grads.take(&x).unwrap();
    assert_eq!(grads.len(), 0, "gamma and beta need no gradient");
    step.submit();
    assert_eq!(gpu.read(&dx_only), want.dx);
    let (rm, rv) = (gpu.upload(&want.running_mean, &c), gpu.upload(&want.running_var, &c));

    // Evaluation uses the (now updated) running statistics and records nothing.
    let mut step = Step::eval(gpu);
    let y = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv, Epilogue::Identity);
    assert_eq!(step.tape_len(), 0);
    step.submit();
    let (rm, rv) = (to_f64(&want.running_mean), to_f64(&want.running_var));
    let want_y = reference::batchnorm2d_forward(
        &to_f64(&case.x),
        reference::Channels {
            mean: &rm,
            invstd: &reference::invstd(&rv),
            gamma: &to_f64(&case.gamma),
            beta: &to_f64(&case.beta),
        },
        dims,
        Epilogue::Identity,
    );
    assert_close_f32("eval y", &gpu.read(&y), &want_y, 1e-4);
}

const EPILOGUES: [Epilogue; 3] =
    [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: 0x9e37_79b9_7f4a_7c15 }];

#[test]
fn reference_fused_backward_matches_finite_differences() {
    // Off the kink: a step of 1e-6 never moves a pre-activation across zero.
    let case = Case::new(100, [2, 3, 5, 7], 0.0, 1.0).off_the_kink();
    let dims = case.dims;
    let (x, gamma, beta) = (to_f64(&case.x), to_f64(&case.gamma), to_f64(&case.beta));
    let r = to_f64(&case.dy);
    let (mean, var) = reference::batch_stats(&x, dims);
    let invstd = reference::invstd(&var);
    let (rm, rinvstd) = (to_f64(&case.running_mean), reference::invstd(&to_f64(&case.running_var)));
    for e in EPILOGUES {
        // Training: the loss sees x through the batch statistics too.
        let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
        let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(&x, &r, ch, dims, true, e);
        let f = |x: &[f64], g: &[f64], b: &[f64]| dot(&r, &reference::batchnorm2d_forward_train(x, g, b, dims, e));
        assert_close(&format!("train dx {e:?}"), &dx, &numeric_grad(|p| f(p, &gamma, &beta), &x, 1e-6), 1e-5);
        assert_close(&format!("train dgamma {e:?}"), &dgamma, &numeric_grad(|p| f(&x, p, &beta), &gamma, 1e-6), 1e-6);
        assert_close(&format!("train dbeta {e:?}"), &dbeta, &numeric_grad(|p| f(&x, &gamma, p), &beta, 1e-6), 1e-6);

        // Evaluation: constant running statistics.
        let ch = reference::Channels { mean: &rm, invstd: &rinvstd, gamma: &gamma, beta: &beta };
        let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(&x, &r, ch, dims, false, e);
        let g = |x: &[f64], g: &[f64], b: &[f64]| {
            dot(&r, &reference::batchnorm2d_forward(x, reference::Channels { gamma: g, beta: b, ..ch }, dims, e))
        };
        assert_close(&format!("eval dx {e:?}"), &dx, &numeric_grad(|p| g(p, &gamma, &beta), &x, 1e-6), 1e-6);
        assert_close(&format!("eval dgamma {e:?}"), &dgamma, &numeric_grad(|p| g(&x, p, &beta), &gamma, 1e-6), 1e-6);
        assert_close(&format!("eval dbeta {e:?}"), &dbeta, &numeric_grad(|p| g(&x, &gamma, p), &beta, 1e-6), 1e-6);
    }
    // The epilogues are not vacuous here: ReLU zeroes some values, the dropout others.
    let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
    let z = reference::batchnorm2d_forward(&x, ch, dims, Epilogue::Identity);
    let y = reference::batchnorm2d_forward(&x, ch, dims, EPILOGUES[2]);
    assert!(z.iter().any(|&v| v < 0.0) && z.iter().zip(&y).any(|(&z, &y)| z > 0.0 && y == 0.0));
}

#[test]
fn fused_gpu_matches_reference_on_odd_shapes() {
    // C of 3, 5 and 7; H*W from 1 to 8643 (up to 2 chunks a channel); batch 1 and > 1; H*W odd
    // (the scalar entry points) and a multiple of 4 (their vec4 twins).
    let shapes = [(110, [1, 3, 5, 7]), (120, [2, 5, 5, 7]), (130, [2, 3, 1, 1]), (140, [3, 7, 17, 19])];
    let large = [(150, [1, 3, 67, 129]), (160, [2, 3, 67, 129])];
    let quads = [(111, [1, 3, 2, 2]), (121, [2, 5, 4, 6]), (161, [2, 3, 64, 132])];
    for (seed, dims) in shapes.into_iter().chain(large).chain(quads) {
        let case = Case::new(seed, dims, 0.2, 1.0).off_the_kink();
        for e in EPILOGUES {
            case.check_fused(Mode::Train, e);
            case.check_fused(Mode::Eval, e);
        }
    }
    // One value per channel: only evaluation is defined.
    let case = Case::new(170, [1, 5, 1, 1], 0.0, 1.0).off_the_kink();
    for e in EPILOGUES {
        case.check_fused(Mode::Eval, e);
    }
}

#[test]
fn overwriting_dx_drops_its_stale_values() {
    // The first contribution to a gradient overwrites an unzeroed buffer: scalar and vec4
    // entry points, training and evaluation, every epilogue.
    for (seed, dims) in [(180, [2, 3, 5, 7]), (181, [2, 5, 4, 6])] {
        let case = Case { overwrite: true, ..Case::new(seed, dims, 0.2, 1.0).off_the_kink() };
        for e in EPILOGUES {
            case.check_fused(Mode::Train, e);
            case.check_fused(Mode::Eval, e);
        }
    }
}

#[test]
fn fused_mask_equals_dropout_bit_for_bit() {
    // gamma = 0, beta = 1: z = 1 everywhere, so y = mask * 1 / (1 - p) exposes the mask,
    // to be compared with dropout.wgsl's on a tensor of ones. A seed with both halves set.
    let gpu = gpu();
    // The scalar entry point and its vec4 twin (H*W a multiple of 4).
    for dims in [[2, 3, 67, 129], [2, 3, 64, 132]] {
        fused_mask_equals_dropout(gpu, dims);
    }
}

fn fused_mask_equals_dropout(gpu: &Gpu, dims: [usize; 4]) {
    let c = [3];
    let (p, seed) = (0.3, 0xfedc_ba98_7654_3210);
    let n: usize = dims.iter().product();
    let x = gpu.upload(&random_vec(180, n), &dims);
    let ones = gpu.upload(&vec![1.0; n], &dims);
    let (gamma, beta) = (gpu.upload(&[0.0; 3], &c), gpu.upload(&[1.0; 3], &c));
    let (rm, rv, mean, invstd) = (gpu.upload(&[0.0; 3], &c), gpu.upload(&[1.0; 3], &c), gpu.empty(&c), gpu.empty(&c));
    let (fused, plain) = (gpu.empty(&dims), gpu.empty(&dims));
    let mut enc = gpu.encoder();
    batchnorm2d_stats(gpu, &mut enc, &x, &rm, &rv, &mean, &invstd);
    let e = Epilogue::ReluDropout { p, seed };
    let ch = Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
    batchnorm2d_forward(gpu, &mut enc, &Forward { x: &x, ch, y: &fused, epilogue: e });
    crate::ops::dropout::dropout_forward(gpu, &mut enc, &ones, &plain, p, seed);
    gpu.submit(enc);
    let (fused, plain) = (gpu.read(&fused), gpu.read(&plain));
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(bits(&fused) == bits(&plain), "the fused mask differs from dropout.wgsl's at {dims:?}");
    let kept = fused.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.7).abs() < 0.01, "kept {kept}, want 0.7");
}

#[test]
fn fused_tape_equals_the_chain() {
    use crate::ops::{dropout::dropout, relu::relu};
    let gpu = gpu();
    let case = Case::new(190, [2, 5, 6, 7], 0.3, 1.5).off_the_kink();
    let (dims, c) = (case.dims, [5]);
    let x = gpu.upload(&case.x, &dims).with_grad();
    let gamma = gpu.upload(&case.gamma, &c).with_grad();
    let beta = gpu.upload(&case.beta, &c).with_grad();
    for e in &EPILOGUES[1..] {
        let (p, seed) = match *e {
            Epilogue::ReluDropout { p, seed } => (p, seed),
            _ => (0.0, 0),
        };
        // Each path updates its own copy of the running statistics.
        let run = |fused: bool, mode: Mode| {
            let (rm, rv) = (gpu.upload(&case.running_mean, &c), gpu.upload(&case.running_var, &c));
            let mut step = match mode {
                Mode::Train => Step::train(gpu),
                Mode::Eval => Step::eval(gpu),
            };
            let y = if fused {
                batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv, *e)
            } else {
                let h = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv, Epilogue::Identity);
                let h = relu(&mut step, &h);
                dropout(&mut step, &h, p, seed)
            };
            let nodes = step.tape_len();
            if mode == Mode::Eval {
                step.submit();
                return (vec![gpu.read(&y)], nodes);
            }
            let mut grads = step.backward(vec![(y.clone(), gpu.upload(&case.dy, &dims))]);
            let (dx, dgamma, dbeta) =
                (grads.take(&x).unwrap(), grads.take(&gamma).unwrap(), grads.take(&beta).unwrap());
            step.submit();
            ([&y, &dx, &dgamma, &dbeta, &rm, &rv].map(|t| gpu.read(t)).to_vec(), nodes)
        };
        let ((fused, fused_nodes), (chain, _)) = (run(true, Mode::Train), run(false, Mode::Train));
        assert_eq!(fused_nodes, 1, "one node for batch norm, ReLU and dropout");
        for (name, (f, c)) in
            ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"].iter().zip(fused.iter().zip(&chain))
        {
            assert_close_f32(&format!("fused vs chain {e:?} {name}"), f, &to_f64(c), 1e-6);
        }
        // And against the reference (the tape's gradients start at zero).
        let xf = to_f64(&case.x);
        let (mean, var) = reference::batch_stats(&xf, dims);
        let (g, b) = (to_f64(&case.gamma), to_f64(&case.beta));
        let invstd = reference::invstd(&var);
        let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &g, beta: &b };
        let want_y = reference::batchnorm2d_forward(&xf, ch, dims, *e);
        let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(&xf, &to_f64(&case.dy), ch, dims, true, *e);
        assert_close_f32(&format!("fused tape y {e:?}"), &fused[0], &want_y, 1e-4);
        assert_close_f32(&format!("fused tape dx {e:?}"), &fused[1], &dx, 1e-3);
        assert_close_f32(&format!("fused tape dgamma {e:?}"), &fused[2], &dgamma, 1e-3);
        assert_close_f32(&format!("fused tape dbeta {e:?}"), &fused[3], &dbeta, 1e-3);

        // In eval mode the dropout is off (plain ReLU), as in the chain, and nothing is recorded.
        let ((fused, nodes), (chain, _)) = (run(true, Mode::Eval), run(false, Mode::Eval));
        assert_eq!(nodes, 0);
        assert_close_f32(&format!("fused vs chain eval {e:?} y"), &fused[0], &to_f64(&chain[0]), 1e-6);
    }
}
