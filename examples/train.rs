//! The training loop with nothing hidden: a small U-Net learns the built-in
//! synthetic aerial tiles, one explicit step at a time. Each line names the
//! module (and shader) that does the work, so the path from here down to a
//! WGSL line can be followed. `unet-wgpu train` (src/train/mod.rs) runs the same
//! step, plus validation, metrics, checkpoints and pictures.
//!
//! `cargo run --release --example train`

use unet_wgpu::data::{BatchOptions, Dataset, SplitOptions};
use unet_wgpu::loss::{loss, LossValues};
use unet_wgpu::nn::{UNet, UNetConfig};
use unet_wgpu::optim::{Method, OptimConfig, Optimizer};
use unet_wgpu::train::LossName;
use unet_wgpu::{Gpu, GpuOptions, Step};

fn main() -> anyhow::Result<()> {
    // src/runtime/: the best adapter (a software one when there is no GPU). With
    // UNET_WGPU_KERNELS=reference every op below runs its textbook kernel
    // (shaders/<op>/textbook.wgsl: one invocation per output element) instead of the tuned one.
    let gpu = Gpu::new(&GpuOptions { verbose: true, ..GpuOptions::default() })?;

    // src/data: four synthetic 256x256 tiles cut into 64x64 patches, 80/20 by tile.
    let patch = 64;
    let patches = Dataset::synthetic(0, 4, 256).patches(patch)?;
    let (train, _validation) = patches.split(&SplitOptions::default())?;

    // src/nn/unet.rs: a U-Net with 8 filters at the top level; src/optim.rs: Adam.
    let model = UNet::new(&gpu, UNetConfig { base: 8, depth: 3, dropout: vec![0.1; 4], ..UNetConfig::default() });
    let mut adam = Optimizer::new(&gpu, &model.arena, OptimConfig::new(Method::Adam));
    let dice_ce = LossName::DiceCe.config(None);
    println!("{} parameters, {} training patches", model.parameter_count(), train.len());

    let mut seed = 0;
    for epoch in 1..=5 {
        let options = BatchOptions { batch_size: 4, seed: epoch, augment: true, ..BatchOptions::default() };
        let mut losses = Vec::new();
        for batch in train.batches(&options)? {
            let x = gpu.upload(&batch.images, &[batch.n, 3, patch, patch]);
            let y = gpu.upload_u32(&batch.labels, &[batch.n, patch, patch]);

            let mut step = Step::train(&gpu); // one command encoder and one tape (src/autograd/tape.rs)
            model.arena.zero_grads(&mut step.enc); // backward kernels add into gradients: start at zero
            let logits = model.forward(&mut step, &x, seed); // conv2d, relu, maxpool2d, ... (src/ops, shaders/)
            let out = loss(&gpu, &mut step.enc, &dice_ce, &logits, &y); // fused softmax + Dice + CE (shaders/loss.wgsl)
            step.backward_into(vec![(logits, out.dlogits)], model.arena.grads()); // the tape, in reverse
            adam.step(&gpu, &mut step.enc, &model.arena, 3e-3); // every parameter in one dispatch (shaders/optim.wgsl)
            step.submit(); // one queue.submit for the whole step
            seed += 1;

            // A blocking read, for the example's sake: src/train/mod.rs sums the
            // values on the GPU and reads them once per epoch instead.
            losses.push(LossValues::from_slice(&gpu.read(&out.values)).total);
        }
        let mean = losses.iter().sum::<f32>() / losses.len() as f32;
        println!("epoch {epoch}: mean Dice + CE {mean:.4} over {} steps", losses.len());
    }
    Ok(())
}
