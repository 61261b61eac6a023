"""The reference workload of `cargo bench --bench step` in PyTorch: the same
U-Net (base 16, depth 4, 6 classes, dropout as the Keras tutorial), a batch of
4 x 3 x 256 x 256, forward + soft Dice + CE + backward + Adam, timed over warm
steps. Run by hand, never by CI:

    python3 benches/reference/unet_step.py [--batch 4] [--size 256] [--steps 10] [--device cpu|cuda] [--tf32]

On CUDA, float32 convolutions and matrix products run in true fp32 (TF32 off)
unless `--tf32` allows the tensor cores' 10-bit-mantissa mode, as PyTorch does
for convolutions by default.

It prints the same FLOP count as the Rust benchmark (convolutions and transposed
convolutions only: 2 per multiply-add, forward, backward-data except for the
input layer, backward-weight).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from unet_torch import UNet  # noqa: E402


def conv_flops(model, batch, size):
    """Multiply-adds of every (transposed) convolution, forward and backward."""
    total, shapes = 0, {}

    def hook(module, inputs, output):
        nonlocal total
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):
            macs = x.numel() * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
        else:
            macs = output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        first = module is model.enc0.conv1  # its input needs no gradient
        total += 2 * macs * (2 if first else 3)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.zeros(batch, 3, size, size))
    for h in handles:
        h.remove()
    return total


def dice_ce(logits, labels, smooth=1.0):
    p = torch.softmax(logits, 1)
    t = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    i, pr, tt = (p * t).sum((0, 2, 3)), p.sum((0, 2, 3)), t.sum((0, 2, 3))
    return 1 - ((2 * i + smooth) / (pr + tt + smooth)).mean() + F.cross_entropy(logits, labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: fp32)")
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.manual_seed(0)
    model = UNet().to(args.device).train()
    flops = conv_flops(UNet(), args.batch, args.size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 6, (args.batch, args.size, args.size), device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = dice_ce(model(x), y)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - start)
    first, warm = times[0], sorted(times[1:])
    median = statistics.median(warm)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    mode = (" TF32" if args.tf32 else " fp32 (TF32 off)") if args.device == "cuda" else ""
    print(f"torch {torch.__version__} on {args.device} ({where}){mode}; batch {args.batch} x 3 x {args.size}^2")
    print(f"first step {first:.3f} s; warm median {median:.3f} s, min {warm[0]:.3f} s, max {warm[-1]:.3f} s; {args.batch / median:.2f} images/s")
    print(f"convolution FLOPs per step: {flops / 1e9:.2f} GFLOP; {flops / median / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
