//! Batch norm's backward dispatch: the gradients of the input, of the scale and of the shift,
//! plain or through the fused ReLU and dropout.

use super::*;

/// The operands of a backward: x, dy `[N,C,H,W]`; the channels `[C]` as the forward read them
/// (mean and invstd as saved by it); the gradients to fill, each when given.
#[derive(Clone, Copy)]
pub struct Backward<'a> {
    /// Batch statistics ([`Mode::Train`]: dx includes their dependence on x) or running ones
    /// ([`Mode::Eval`]: constants).
    pub mode: Mode,
    /// The forward's input, `[N,C,H,W]`.
    pub x: &'a Tensor,
    /// The gradient of the forward's output, `[N,C,H,W]`.
    pub dy: &'a Tensor,
    /// mean, invstd, gamma, beta, `[C]` each.
    pub ch: Channels<'a>,
    /// dx `[N,C,H,W]` added into or overwritten as its [`Accumulate`] says; dgamma, dbeta `[C]`
    /// added into.
    pub grads: Grads<'a>,
    /// The forward's epilogue, gone back through on the fly.
    pub epilogue: Epilogue,
}

/// Backward of [`batchnorm2d_forward`] into whichever gradients `b.grads` names. In
/// [`Mode::Train`] mean and invstd are the batch statistics and dx includes their dependence
/// on x; in [`Mode::Eval`] they are constants (the running statistics). Through an epilogue,
/// `dz = dy * (y > 0) * scale` (scale `1 / (1 - p)` for [`Epilogue::ReluDropout`], else 1)
/// takes dy's place, computed where dy is read: `y > 0` is recomputed from x, beta and the
/// dropout hash (`z > 0` and kept), so y itself is not needed. The identity reads no beta: any
/// `[C]` tensor (gamma, say) may stand in for it.
pub fn batchnorm2d_backward(gpu: &Gpu, enc: &mut Encoder, b: &Backward) {
    let Backward { mode, x, dy, ch, grads, epilogue } = *b;
    let (Channels { mean, invstd, gamma, beta }, Grads { dx, dgamma, dbeta }) = (ch, grads);
    let dims = x.dims4("batchnorm2d x");
    let c = dims[1];
    assert_eq!(x.shape(), dy.shape(), "batchnorm2d backward: x {:?} vs dy {:?}", x.shape(), dy.shape());
    if let Some((dx, _)) = dx {
        assert_eq!(x.shape(), dx.shape(), "batchnorm2d backward: x {:?} vs dx {:?}", x.shape(), dx.shape());
    }
    for (what, t) in [("mean", Some(mean)), ("invstd", Some(invstd)), ("gamma", Some(gamma)), ("beta", Some(beta))]
        .into_iter()
        .chain([("dgamma", dgamma), ("dbeta", dbeta)])
    {
        if let Some(t) = t {
            assert_channels(what, c, t);
        }
    }
    if gpu.kernels() == Kernels::Reference {
        // dz (the gradient before the epilogue) by the plain kernels, then the textbook backward.
        let dz = textbook::epilogue_backward(gpu, enc, x, dy, ch, epilogue);
        return textbook::batchnorm2d_backward(gpu, enc, mode, x, &dz, ch, grads);
    }
    let mut p = Params::new(dims);
    let [relu, dropout] = p.epilogue(epilogue);
    let partial_constants = [("WG", p.partial_threads() as f64), relu, dropout];
    // The dx passes: elementwise workgroups, and dx added into or overwritten.
    let data_constants = |acc: Accumulate| [("WG", p.plane_threads() as f64), relu, dropout, acc.constant()];
    let groups = plane_groups(&p);
    let v = Views::of(&p);

    if mode == Mode::Eval {
        if let Some((dx, acc)) = dx {
            gpu.dispatch(
                enc,
                &gpu.kernel(
                    &SHADER,
                    v.entry("batchnorm_backward_data_eval", "batchnorm_backward_data_eval_vec4"),
                    &data_constants(acc),
                ),
                &p,
                &[(v.x(), x), (v.dy(), dy), (3, gamma), (4, beta), (5, mean), (6, invstd), (v.out(), dx)],
                groups,
            );
        }
        if dgamma.is_none() && dbeta.is_none() {
            return; // the channel sums are only needed for the parameters
        }
    }

    // sums = [sum dz (C values) | sum dz * xhat (C values)], in two passes.
    let partial = gpu.empty(&[c, p.splits as usize, 2]);
    let sums = gpu.empty(&[2, c]);
    gpu.dispatch(
        enc,
        &gpu.kernel(
            &SHADER,
            v.entry("batchnorm_backward_partial", "batchnorm_backward_partial_vec4"),
            &partial_constants,
        ),
        &p,
        &[(v.x(), x), (v.dy(), dy), (3, gamma), (4, beta), (5, mean), (6, invstd), (9, &partial)],
        [p.splits, c as u32, 1],
    );
    let final_kernel = gpu.kernel(&SHADER, "batchnorm_backward_final", &[("WG", p.final_threads() as f64)]);
    gpu.dispatch(enc, &final_kernel, &p, &[(9, &partial), (10, &sums)], [c as u32, 1, 1]);

    if let (Mode::Train, Some((dx, acc))) = (mode, dx) {
        let entry = v.entry("batchnorm_backward_data", "batchnorm_backward_data_vec4");
        gpu.dispatch(
            enc,
            &gpu.kernel(&SHADER, entry, &data_constants(acc)),
            &p,
            &[(v.x(), x), (v.dy(), dy), (3, gamma), (4, beta), (5, mean), (6, invstd), (10, &sums), (v.out(), dx)],
            groups,
        );
    }
    for (which, dparam) in [(0, dbeta), (1, dgamma)] {
        if let Some(dparam) = dparam {
            gpu.dispatch(
                enc,
                &kernel(gpu, "batchnorm_backward_param"),
                &Params { which, ..p },
                &[(10, &sums), (11, dparam)],
                [(c as u32).div_ceil(WG), 1, 1],
            );
        }
    }
}
