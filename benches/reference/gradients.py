"""Gradient accuracy of one training step, ours against PyTorch, both measured
against PyTorch in f64. Run by hand, from the repository root, never by CI:

    python3 benches/reference/gradients.py --data DUBAI_DIR --loss all --tiles "Tile 2"

For each loss, unet-wgpu takes one plain SGD step (learning rate 1, no
momentum, dropout 0, no batch norm) with `train --trace DIR`, so that its
gradient is the change of the weights: g = w0 - w1. PyTorch computes the
gradient of the same loss (benches/reference/trajectory.py's formulas) from the
same initial weights on the same batch, in f32 and in f64. Both f32 gradients
pass through the same update in f32 (w0 - g, rounded) before they are
compared, so that the subtraction's rounding counts on both sides. It prints,
per loss, the largest error of each parameter tensor's gradient relative to
that tensor's largest f64 component, worst over the tensors, for ours and for
PyTorch f32. A loss whose gradient is wrong stands out by orders of magnitude;
rounding keeps both near 1e-4.
"""
import argparse
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from trajectory import LOSSES, ROOT, load_model, loss_fn  # noqa: E402


def step_gradient(args, loss):
    """Ours: the weights before and after one SGD step at lr 1, and that step's batch."""
    out = os.path.join(args.out, loss.replace("+", "_"))
    binary = args.bin or os.path.join(ROOT, "target", "release", "unet-wgpu")
    command = [
        binary, "train", "--data", args.data, "--loss", loss, "--epochs", "1", "--max-steps", "1",
        "--batch", str(args.batch), "--patch", str(args.patch), "--lr", "1", "--optimizer", "sgd", "--momentum", "0",
        "--schedule", "constant", "--warmup", "0", "--dropout", "0", "--no-batch-norm", "--seed", str(args.seed),
        "--out", os.path.join(out, "run"), "--trace", os.path.join(out, "trace"),
    ] + (["--tiles", args.tiles] if args.tiles else [])  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = os.path.join(out, "trace", "initial.safetensors")
    after = load_file(os.path.join(out, "run", "last.safetensors"))
    batch = load_file(os.path.join(out, "trace", "step-00001.safetensors"))
    return before, after, batch


def torch_gradients(initial, batch, loss, dtype):
    model, _ = load_model(initial)
    model = model.to(dtype).train()
    fn = loss_fn(loss)
    fn(model(batch["x"].to(dtype)), batch["labels"].long()).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loss", default="all", help=f"one of {', '.join(LOSSES)}, a comma-separated list, or all")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.environ.get("DUBAI") or None, required=not os.environ.get("DUBAI"),
                    help="the Dubai dataset folder (Tile 1 ... Tile 8); default: $DUBAI")
    ap.add_argument("--tiles", help="comma-separated tile folders (default: all)")
    ap.add_argument("--bin", help="unet-wgpu binary (default: target/release/unet-wgpu)")
    ap.add_argument("--out", default="/tmp/unet-wgpu-gradients")
    args = ap.parse_args()
    losses = LOSSES if args.loss == "all" else args.loss.split(",")
    print(f"{'loss':<14} {'ours':>9} {'torch f32':>9}   (largest |g - g_f64| / max |g_f64| of a tensor)")
    for loss in losses:
        initial, after, batch = step_gradient(args, loss)
        w0 = {k: v for k, v in load_file(initial).items() if not k.startswith("optimizer.")}
        g32 = torch_gradients(initial, batch, loss, torch.float32)
        g64 = torch_gradients(initial, batch, loss, torch.float64)
        worst = {"ours": 0.0, "torch f32": 0.0}
        for name, want in g64.items():
            scale = want.abs().max().item() or 1.0
            ours = w0[name].double() - after[name].double()
            theirs = w0[name].double() - (w0[name] - g32[name]).double()
            worst["ours"] = max(worst["ours"], (ours - want).abs().max().item() / scale)
            worst["torch f32"] = max(worst["torch f32"], (theirs - want).abs().max().item() / scale)
        print(f"{loss:<14} {worst['ours']:>9.2e} {worst['torch f32']:>9.2e}", flush=True)


if __name__ == "__main__":
    main()
