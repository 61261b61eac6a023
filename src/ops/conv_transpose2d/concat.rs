//! The up-convolution fused with the concatenation that follows it in the U-Net's decoder: the
//! transposed convolution writes its channels straight into the concatenated tensor beside the
//! skip connection.

use super::*;

/// Gradient buffers of the fused op (`None`: not wanted). dw and db are added into; dx and dskip
/// are added into or overwritten, as their [`Accumulate`] says.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConcatGrads<'a> {
    /// `[N,I,H,W]`, of x.
    pub dx: Option<(&'a Tensor, Accumulate)>,
    /// `[I,O,2,2]`, of w.
    pub dw: Option<&'a Tensor>,
    /// `[O]`, of b.
    pub db: Option<&'a Tensor>,
    /// `[N,S,2H,2W]`, of the skip tensor.
    pub dskip: Option<(&'a Tensor, Accumulate)>,
}

/// Owned gradient buffers, as the tape hands them out.
pub(super) struct OwnedGrads {
    pub(super) dx: Option<(Tensor, Accumulate)>,
    pub(super) dw: Option<Tensor>,
    pub(super) db: Option<Tensor>,
    pub(super) dskip: Option<(Tensor, Accumulate)>,
}

/// The backward kernels of both tape ops; dy has the channels `params.yc` (O, or O + S).
pub(super) fn backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    params: Params,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &OwnedGrads,
) {
    if let Some((dx, acc)) = &g.dx {
        backward_data_default(gpu, enc, params, w, dy, dx, *acc);
    }
    backward_weight_default(gpu, enc, params, x, dy, g.dw.as_ref(), g.db.as_ref());
    if let Some((dskip, acc)) = &g.dskip {
        // forward: y[:, O..] = skip  =>  dskip += dy[:, O..]
        concat_backward_b(gpu, enc, dy, dskip, *acc);
    }
}

/// The fused up-convolution and concatenation, forward:
/// `y = [conv_transpose2d(x, w) + b, skip]` along channels, the convolution written straight into
/// channels 0..O of y and the skip tensor copied after it. x: `[N,I,H,W]`, w: `[I,O,2,2]`, b: `[O]`,
/// skip: `[N,S,2H,2W]`, y: `[N,O+S,2H,2W]`.
pub fn conv_transpose2d_concat_forward(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    skip: &Tensor,
    y: &Tensor,
) {
    let params = concat_params("conv_transpose2d_concat", x, w, skip, y);
    forward_default(gpu, enc, params, x, w, b, y);
    concat_forward_part(gpu, enc, skip, y, params.co as usize);
}

/// The fused op's backward: from dy `[N,O+S,2H,2W]` (x, w, skip as in the forward), into each
/// buffer `grads` names; channels 0..O of dy are read in place by the convolution's kernels.
pub fn conv_transpose2d_concat_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    skip: &Tensor,
    dy: &Tensor,
    grads: ConcatGrads,
) {
    let params = concat_params("conv_transpose2d_concat backward", x, w, skip, dy);
    let owned = OwnedGrads {
        dx: grads.dx.map(|(t, acc)| (t.clone(), acc)),
        dw: grads.dw.cloned(),
        db: grads.db.cloned(),
        dskip: grads.dskip.map(|(t, acc)| (t.clone(), acc)),
    };
    backward(gpu, enc, params, x, w, dy, &owned);
}

/// Params of the fused op: checks skip `[N,S,2H,2W]` and y / dy `[N,O+S,2H,2W]` against x and w.
pub(super) fn concat_params(what: &str, x: &Tensor, w: &Tensor, skip: &Tensor, big: &Tensor) -> Params {
    let params = params(what, x, w, big, true);
    let [n, s, sh, sw] = skip.dims4(what);
    assert!(
        [n, params.co as usize + s, sh, sw] == big.dims4(what),
        "{what}: skip {:?} does not fill channels {}.. of {:?}",
        skip.shape(),
        params.co,
        big.shape()
    );
    params
}

/// The U-Net's up-convolution and skip connection in one op on the tape (Keras'
/// `concatenate([Conv2DTranspose(x), skip])`): equal to `concat(conv_transpose2d(x, w, b), skip)`
/// without the copy of the convolution's output. x: `[N,I,H,W]`, w: `[I,O,2,2]`, b: `[O]` or `None`,
/// skip: `[N,S,2H,2W]`; returns `[N,O+S,2H,2W]`.
pub fn conv_transpose2d_concat(step: &mut Step, x: &Tensor, w: &Tensor, b: Option<&Tensor>, skip: &Tensor) -> Tensor {
    let [n, _, h, wd] = x.dims4("conv_transpose2d_concat x");
    let co = w.dims4("conv_transpose2d_concat w")[1];
    let s = skip.dims4("conv_transpose2d_concat skip")[1];
    let inputs: Vec<&Tensor> = [Some(x), Some(w), b, Some(skip)].into_iter().flatten().collect();
    let y = step.output(&[n, co + s, 2 * h, 2 * wd], &inputs);
    conv_transpose2d_concat_forward(step.gpu, &mut step.enc, x, w, b, skip, &y);
    let (x, w, b, skip) = (x.clone(), w.clone(), b.cloned(), skip.clone());
    step.record("conv_transpose2d_concat", &y, move |ctx, dy| {
        let grads = OwnedGrads {
            dx: ctx.grad_to_fill(&x),
            dw: ctx.grad(&w),
            db: b.as_ref().and_then(|b| ctx.grad(b)),
            dskip: ctx.grad_to_fill(&skip),
        };
        let params = concat_params("conv_transpose2d_concat backward", &x, &w, &skip, dy);
        backward(ctx.gpu, ctx.enc, params, &x, &w, dy, &grads);
    });
    y
}
