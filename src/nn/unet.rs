//! The U-Net (Ronneberger et al. 2015), in the shape of the Keras tutorial
//! model for the Dubai aerial dataset: per level two 3x3 convolutions with
//! ReLU and dropout between them, 2x2 max pooling on the way down, 2x2
//! transposed convolutions (or bilinear upsampling and a 1x1 convolution) on
//! the way up, skip connections by channel concatenation, and a 1x1 head to
//! class logits. Optional batch norm after each 3x3 convolution.
//!
//! ```text
//! x [N,3,H,W] -> enc0 (16) -> pool -> enc1 (32) -> pool -> ... -> bottleneck (256)
//!                  |                     |                            |
//!                  +----- concat <- up <-+- ... <- dec1 <- concat <- up
//! dec0 (16) -> head 1x1 -> logits [N,classes,H,W]
//! ```
//!
//! Parameter names follow a PyTorch `state_dict` (`enc0.conv1.weight`,
//! `up3.weight`, `dec0.bn2.running_mean`, `head.bias`, ...), with PyTorch's
//! layouts (OIHW; transposed conv [in, out, 2, 2]). The weights are drawn on the CPU
//! as [`Init`] says ([`super::init`]: this project's recipe, or the Keras tutorial's).

pub use super::config::{UNetConfig, Upsampling};
use super::init::{self, Init, Layer};
use crate::autograd::params::{ParamArena, ParamSpec};
use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
#[cfg(not(target_arch = "wasm32"))]
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::ops::batchnorm2d::batchnorm2d;
use crate::ops::concat::concat;
use crate::ops::conv2d::{conv2d, Conv2d, Epilogue};
use crate::ops::conv_transpose2d::conv_transpose2d_concat;
use crate::ops::maxpool2d::maxpool2d;
use crate::ops::upsample::{upsample, Upsample};
use crate::rng::Rng;
use crate::runtime::Gpu;

/// Indices into the arena of one convolution's weight and bias.
#[derive(Clone, Copy, Debug)]
struct Conv {
    weight: usize,
    bias: usize,
}

/// Batch-norm parameters (arena indices) and running statistics (buffers).
#[derive(Clone, Debug)]
struct Norm {
    gamma: usize,
    beta: usize,
    running_mean: Tensor,
    running_var: Tensor,
}

/// conv3x3 -> [BN] -> ReLU -> dropout -> conv3x3 -> [BN] -> ReLU.
#[derive(Clone, Debug)]
struct Block {
    conv1: Conv,
    norm1: Option<Norm>,
    conv2: Conv,
    norm2: Option<Norm>,
    dropout: f32,
}

/// A U-Net whose parameters live in one [`ParamArena`].
pub struct UNet {
    /// The configuration it was built from.
    pub config: UNetConfig,
    /// Every trainable parameter.
    pub arena: ParamArena,
    encoder: Vec<Block>,
    bottleneck: Block,
    /// Per level, top first: the upsampling conv (transposed 2x2 or 1x1 after bilinear).
    up: Vec<Conv>,
    decoder: Vec<Block>,
    head: Conv,
    buffers: Vec<(String, Tensor)>,
}

/// Collects parameter specs and buffers while the layers are laid out.
struct Builder<'a> {
    gpu: &'a Gpu,
    init: Init,
    rng: Rng,
    specs: Vec<ParamSpec>,
    buffers: Vec<(String, Tensor)>,
}

impl Builder<'_> {
    fn param(&mut self, name: String, shape: Vec<usize>, init: Vec<f32>) -> usize {
        self.specs.push(ParamSpec { name, shape, init });
        self.specs.len() - 1
    }

    /// Weights of shape `shape` drawn for a `layer` with `input` -> `out` channels and
    /// `k` x `k` taps, as [`init::weights`] says for `self.init`, and `out` zero biases.
    fn weights(&mut self, name: &str, shape: [usize; 4], layer: Layer, [input, out, k]: [usize; 3]) -> Conv {
        let init = init::weights(self.init, layer, &mut self.rng, [input, out, k, k]);
        let weight = self.param(format!("{name}.weight"), shape.to_vec(), init);
        let bias = self.param(format!("{name}.bias"), vec![out], vec![0.0; out]);
        Conv { weight, bias }
    }

    /// A 1x1 convolution, OIHW [out, in, 1, 1].
    fn conv1x1(&mut self, name: &str, out: usize, input: usize) -> Conv {
        self.weights(name, [out, input, 1, 1], Layer::Pointwise, [input, out, 1])
    }

    /// A 2x2 stride-2 transposed convolution, [in, out, 2, 2].
    fn conv_transpose(&mut self, name: &str, input: usize, out: usize) -> Conv {
        self.weights(name, [input, out, 2, 2], Layer::Transposed, [input, out, 2])
    }

    /// A 3x3 convolution, OIHW [out, in, 3, 3].
    fn conv3x3(&mut self, name: &str, out: usize, input: usize) -> Conv {
        self.weights(name, [out, input, 3, 3], Layer::Conv3x3, [input, out, 3])
    }

    fn norm(&mut self, name: &str, channels: usize) -> Norm {
        let gamma = self.param(format!("{name}.weight"), vec![channels], vec![1.0; channels]);
        let beta = self.param(format!("{name}.bias"), vec![channels], vec![0.0; channels]);
        let running_mean = self.gpu.upload(&vec![0.0; channels], &[channels]);
        let running_var = self.gpu.upload(&vec![1.0; channels], &[channels]);
        self.buffers.push((format!("{name}.running_mean"), running_mean.clone()));
        self.buffers.push((format!("{name}.running_var"), running_var.clone()));
        Norm { gamma, beta, running_mean, running_var }
    }

    fn block(&mut self, name: &str, out: usize, input: usize, batch_norm: bool, dropout: f32) -> Block {
        let conv1 = self.conv3x3(&format!("{name}.conv1"), out, input);
        let norm1 = batch_norm.then(|| self.norm(&format!("{name}.bn1"), out));
        let conv2 = self.conv3x3(&format!("{name}.conv2"), out, out);
        let norm2 = batch_norm.then(|| self.norm(&format!("{name}.bn2"), out));
        Block { conv1, norm1, conv2, norm2, dropout }
    }
}

impl UNet {
    /// Lay out and initialise a U-Net on `gpu`.
    pub fn new(gpu: &Gpu, config: UNetConfig) -> UNet {
        assert_eq!(
            config.dropout.len(),
            config.depth + 1,
            "dropout needs one probability per level ({} for depth {}), got {:?}",
            config.depth + 1,
            config.depth,
            config.dropout
        );
        let mut b =
            Builder { gpu, init: config.init, rng: Rng::new(config.seed), specs: Vec::new(), buffers: Vec::new() };
        let filters = |level: usize| config.base << level;
        let mut encoder = Vec::new();
        let mut channels = config.in_channels;
        for level in 0..config.depth {
            let block =
                b.block(&format!("enc{level}"), filters(level), channels, config.batch_norm, config.dropout[level]);
            encoder.push(block);
            channels = filters(level);
        }
        let depth = config.depth;
        let bottleneck = b.block("bottleneck", filters(depth), channels, config.batch_norm, config.dropout[depth]);
        let (mut up, mut decoder) = (Vec::new(), Vec::new());
        for level in 0..depth {
            let (from, to) = (filters(level + 1), filters(level));
            up.push(match config.upsampling {
                Upsampling::Transposed => b.conv_transpose(&format!("up{level}"), from, to),
                Upsampling::Bilinear => b.conv1x1(&format!("up{level}"), to, from),
            });
            decoder.push(b.block(&format!("dec{level}"), to, 2 * to, config.batch_norm, config.dropout[level]));
        }
        let head = b.conv1x1("head", config.classes, filters(0));
        let arena = ParamArena::new(gpu, &b.specs);
        UNet { config, arena, encoder, bottleneck, up, decoder, head, buffers: b.buffers }
    }

    /// Rebuild the model a checkpoint was saved from: its configuration from
    /// the metadata, then every parameter and running statistic.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_checkpoint(gpu: &Gpu, checkpoint: &Checkpoint) -> Result<UNet, CheckpointError> {
        let config = UNetConfig::from_metadata(&checkpoint.metadata)
            .map_err(|reason| CheckpointError::Metadata { path: checkpoint.path.clone(), reason })?;
        let model = UNet::new(gpu, config);
        checkpoint.restore(gpu, &model.state())?;
        Ok(model)
    }

    /// Floating-point operations of the (transposed) convolutions in one
    /// training step on a batch of `n` images of `h` x `w`: 2 per multiply-add,
    /// forward, backward-data (except the first layer's, whose input needs no
    /// gradient) and backward-weight. Elementwise ops are not counted. The
    /// PyTorch reference (`benches/reference/unet_step.py`) counts the same way.
    pub fn training_flops(&self, n: usize, h: usize, w: usize) -> f64 {
        let c = &self.config;
        let f = |level: usize| (c.base << level) as f64;
        let pixels = |level: usize| (n * (h >> level) * (w >> level)) as f64;
        let conv = |level: usize, i: f64, o: f64, k: f64| pixels(level) * i * o * k * k;
        let mut macs = 0.0;
        let mut input = c.in_channels as f64;
        for level in 0..=c.depth {
            macs += conv(level, input, f(level), 3.0) + conv(level, f(level), f(level), 3.0);
            input = f(level);
        }
        for level in 0..c.depth {
            // transposed 2x2: each input pixel feeds 4 outputs; bilinear: a 1x1 conv at the finer level
            macs += match c.upsampling {
                Upsampling::Transposed => pixels(level + 1) * f(level + 1) * f(level) * 4.0,
                Upsampling::Bilinear => conv(level, f(level + 1), f(level), 1.0),
            };
            macs += conv(level, 2.0 * f(level), f(level), 3.0) + conv(level, f(level), f(level), 3.0);
        }
        macs += conv(0, f(0), c.classes as f64, 1.0);
        let first = conv(0, c.in_channels as f64, f(0), 3.0);
        2.0 * (3.0 * macs - first)
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.arena.count()
    }

    /// Every tensor of the model's state by `state_dict` name: parameters,
    /// then batch-norm running statistics.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let params = self.arena.params.iter().map(|p| (p.name.clone(), p.value.clone()));
        params.chain(self.buffers.iter().cloned()).collect()
    }

    fn param(&self, index: usize) -> &Tensor {
        &self.arena.params[index].value
    }

    fn conv(&self, step: &mut Step, x: &Tensor, conv: Conv, p: Conv2d) -> Tensor {
        conv2d(step, x, self.param(conv.weight), Some(self.param(conv.bias)), p, Epilogue::Identity)
    }

    /// conv (3x3, "same") -> [batch norm] -> ReLU -> [dropout]. The ReLU and the dropout run in
    /// the store of the last op before them, the convolution's or (with batch norm) the
    /// normalisation's: one pass, no intermediate tensors, and a backward that reads only y.
    fn conv_norm_relu(
        &self,
        step: &mut Step,
        x: &Tensor,
        conv: Conv,
        norm: &Option<Norm>,
        drop: f32,
        seed: u64,
    ) -> Tensor {
        let same = Conv2d::new(1, 1);
        let (w, b) = (self.param(conv.weight), Some(self.param(conv.bias)));
        let epilogue = if drop > 0.0 { Epilogue::ReluDropout { p: drop, seed } } else { Epilogue::Relu };
        match norm {
            None => conv2d(step, x, w, b, same, epilogue),
            Some(n) => {
                let h = conv2d(step, x, w, b, same, Epilogue::Identity);
                let (gamma, beta) = (self.param(n.gamma), self.param(n.beta));
                batchnorm2d(step, &h, gamma, beta, &n.running_mean, &n.running_var, epilogue)
            }
        }
    }

    fn block(&self, step: &mut Step, x: &Tensor, block: &Block, seed: u64) -> Tensor {
        let h = self.conv_norm_relu(step, x, block.conv1, &block.norm1, block.dropout, seed);
        self.conv_norm_relu(step, &h, block.conv2, &block.norm2, 0.0, 0)
    }

    /// Logits [N, classes, H, W] for images `x` [N, in_channels, H, W]; H and
    /// W must be multiples of `2^depth`. `seed` makes this step's dropout
    /// masks (use a new one each step; ignored in eval mode).
    pub fn forward(&self, step: &mut Step, x: &Tensor, seed: u64) -> Tensor {
        let [_, c, h, w] = x.dims4("U-Net input");
        let multiple = 1 << self.config.depth;
        assert_eq!(
            c, self.config.in_channels,
            "U-Net input has {c} channels, the model takes {}",
            self.config.in_channels
        );
        assert!(
            h % multiple == 0 && w % multiple == 0 && h > 0 && w > 0,
            "U-Net input is {h}x{w}; with depth {} both sides must be multiples of {multiple}",
            self.config.depth
        );
        // One dropout seed per block: mix the step's seed with the block number.
        let mut block_seed = Rng::new(seed);
        let mut skips = Vec::with_capacity(self.config.depth);
        let mut h = x.clone();
        for block in &self.encoder {
            h = self.block(step, &h, block, block_seed.next_u64());
            skips.push(h.clone());
            h = maxpool2d(step, &h);
        }
        h = self.block(step, &h, &self.bottleneck, block_seed.next_u64());
        for level in (0..self.config.depth).rev() {
            // Keras' concatenate([up, skip]): upsampled channels first.
            let merged = match self.config.upsampling {
                Upsampling::Transposed => {
                    // Fused: the up-convolution writes straight into the concatenation buffer.
                    let conv = self.up[level];
                    let (w, b) = (self.param(conv.weight), self.param(conv.bias));
                    conv_transpose2d_concat(step, &h, w, Some(b), &skips[level])
                }
                Upsampling::Bilinear => {
                    let big = upsample(step, &h, Upsample::Bilinear);
                    let up = self.conv(step, &big, self.up[level], Conv2d::new(1, 0));
                    concat(step, &up, &skips[level])
                }
            };
            h = self.block(step, &merged, &self.decoder[level], block_seed.next_u64());
        }
        self.conv(step, &h, self.head, Conv2d::new(1, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{loss, LossConfig, Term};
    use crate::optim::{Method, OptimConfig, Optimizer};
    use crate::testing::{gpu, random_vec};

    fn tiny(batch_norm: bool, upsampling: Upsampling) -> UNetConfig {
        UNetConfig { base: 4, depth: 2, batch_norm, dropout: vec![0.1, 0.1, 0.2], upsampling, ..UNetConfig::default() }
    }

    #[test]
    fn the_default_model_has_the_keras_tutorial_parameter_count() {
        // Layer by layer (3x3 convs with bias, 2x2 transposed convs, 1x1 head):
        // encoder 448 + 2320, 4640 + 9248, 18496 + 36928, 73856 + 147584;
        // bottleneck 295168 + 590080; decoder (up, conv1, conv2) 131200 + 295040 + 147584,
        // 32832 + 73792 + 36928, 8224 + 18464 + 9248, 2064 + 4624 + 2320; head 102.
        // The PyTorch twin (benches/reference/unet_torch.py) counts the same.
        let model = UNet::new(gpu(), UNetConfig::default());
        assert_eq!(model.parameter_count(), 1_941_190);
        let names: Vec<String> = model.state().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.first().map(String::as_str), Some("enc0.conv1.weight"));
        assert!(names.contains(&"up3.weight".to_string()) && names.contains(&"head.bias".to_string()));
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "state names repeat");
    }

    #[test]
    fn each_layer_kind_is_drawn_by_its_recipe() {
        let gpu = gpu();
        let weights = |init: Init| {
            let model = UNet::new(gpu, UNetConfig { init, ..tiny(false, Upsampling::Transposed) });
            let read = |name: &str| gpu.read(&model.state().into_iter().find(|(n, _)| n == name).unwrap().1);
            let max_abs = |name: &str| read(name).iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
            assert!(read("up0.bias").iter().chain(&read("head.bias")).all(|&b| b == 0.0));
            // enc1.conv1: 4 -> 8 channels, 3x3; up0: 8 -> 4, 2x2; head: 4 -> 6, 1x1.
            [max_abs("enc1.conv1.weight"), max_abs("up0.weight"), max_abs("head.weight")]
        };
        let he = (2.0f64 / 36.0).sqrt();
        let [conv, up, head] = weights(Init::Keras);
        assert!(conv <= 2.0 * he / init::KERAS_TRUNCATION + 1e-6 && conv > 2.0 * he, "{conv}");
        assert!(up <= (6.0f64 / (32.0 + 16.0)).sqrt() && head <= (6.0f64 / (4.0 + 6.0)).sqrt(), "{up} {head}");
        let [conv, up, head] = weights(Init::Default);
        assert!(conv <= 2.0 * he + 1e-6, "{conv}");
        assert!(up <= 2.0 * (2.0f64 / 8.0).sqrt() + 1e-6 && head <= 2.0 * (2.0f64 / 4.0).sqrt() + 1e-6);
    }

    #[test]
    fn a_model_round_trips_through_a_checkpoint() {
        let gpu = gpu();
        let model = UNet::new(gpu, UNetConfig { seed: 3, ..tiny(true, Upsampling::Bilinear) });
        let path = std::env::temp_dir().join(format!("unet-wgpu-model-{}.safetensors", std::process::id()));
        crate::checkpoint::save(gpu, &path, &model.state(), &model.config.to_metadata()).unwrap();
        let loaded = UNet::from_checkpoint(gpu, &crate::checkpoint::load(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.config, model.config);
        let x = gpu.upload(&random_vec(2, 3 * 8 * 8), &[1, 3, 8, 8]);
        let logits = |m: &UNet| {
            let mut step = Step::eval(gpu);
            let y = m.forward(&mut step, &x, 0);
            step.submit();
            gpu.read(&y)
        };
        assert_eq!(logits(&loaded), logits(&model));
    }

    #[test]
    fn training_flops_count_every_convolution_three_times_but_the_first() {
        // 72.68 GFLOP: what benches/reference/unet_step.py counts with PyTorch
        // forward hooks for the default model at batch 4, 256x256.
        let model = UNet::new(gpu(), UNetConfig::default());
        assert_eq!(model.training_flops(4, 256, 256), 72_678_899_712.0);
    }

    #[test]
    fn shapes_modes_and_dropout_seeds() {
        let gpu = gpu();
        let x = gpu.upload(&random_vec(1, 2 * 3 * 16 * 12), &[2, 3, 16, 12]);
        for (bn, up) in [(false, Upsampling::Transposed), (true, Upsampling::Bilinear)] {
            let model = UNet::new(gpu, tiny(bn, up));
            assert!(model.state().iter().any(|(n, _)| n.ends_with("running_var")) == bn);
            let run = |train: bool, seed: u64| {
                let mut step = if train { Step::train(gpu) } else { Step::eval(gpu) };
                let y = model.forward(&mut step, &x, seed);
                assert_eq!(y.shape(), [2, 6, 16, 12]);
                step.submit();
                gpu.read(&y)
            };
            assert_eq!(run(false, 1), run(false, 2), "eval mode must not drop anything");
            assert_eq!(run(true, 1), run(true, 1), "same seed, same masks");
            assert_ne!(run(true, 1), run(true, 2), "another seed, other masks");
        }
    }

    #[test]
    #[should_panic(expected = "multiples of 4")]
    fn inputs_must_divide_by_two_to_the_depth() {
        let gpu = gpu();
        let model = UNet::new(gpu, tiny(false, Upsampling::Transposed));
        let x = gpu.upload(&random_vec(1, 3 * 10 * 10), &[1, 3, 10, 10]);
        model.forward(&mut Step::eval(gpu), &x, 0);
    }

    #[test]
    fn a_few_adam_steps_fit_one_batch() {
        // Labels are a function of the image (class = brightest of three
        // channel groups), so the network can fit them.
        let gpu = gpu();
        let (n, h, w) = (2, 16, 16);
        let image = random_vec(5, n * 3 * h * w);
        let labels: Vec<u32> = (0..n * h * w)
            .map(|i| {
                let (b, pos) = (i / (h * w), i % (h * w));
                let ch = |c: usize| image[(b * 3 + c) * h * w + pos];
                (0..3).fold(0, |best, c| if ch(c) > ch(best) { c } else { best }) as u32 * 2
            })
            .collect();
        let (x, y) = (gpu.upload(&image, &[n, 3, h, w]), gpu.upload_u32(&labels, &[n, h, w]));
        for bn in [false, true] {
            let model = UNet::new(gpu, UNetConfig { dropout: vec![0.0; 3], ..tiny(bn, Upsampling::Transposed) });
            let mut opt = Optimizer::new(gpu, &model.arena, OptimConfig::new(Method::Adam));
            // Only classes 0, 2, 4 occur: absent ones would hold the Dice term near 0.5.
            let cfg = LossConfig {
                skip_absent: true,
                ..LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)])
            };
            let mut losses = Vec::new();
            for s in 0..30 {
                let mut step = Step::train(gpu);
                model.arena.zero_grads(&mut step.enc);
                let logits = model.forward(&mut step, &x, s);
                let out = loss(gpu, &mut step.enc, &cfg, &logits, &y);
                step.backward_into(vec![(logits, out.dlogits)], model.arena.grads());
                opt.step(gpu, &mut step.enc, &model.arena, 1e-2);
                step.submit();
                losses.push(gpu.read(&out.values)[0]);
            }
            assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
            assert!(losses[29] < 0.75 * losses[0], "batch norm {bn}: loss went {losses:?}");
        }
    }
}
