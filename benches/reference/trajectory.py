"""Trajectory parity: trains the same U-Net in unet-wgpu and in PyTorch (f32,
CPU) side by side and compares the loss step by step, then both models'
validation figures. Run by hand, from the repository root, never by CI:

    python3 benches/reference/trajectory.py --data DUBAI_DIR --loss dice --steps 20
    python3 benches/reference/trajectory.py --data DUBAI_DIR --loss dice+ce          # 200 steps
    python3 benches/reference/trajectory.py --data DUBAI_DIR --loss all --steps 20   # every loss

How the two runs are made identical: unet-wgpu trains first, with
`train --trace DIR` (dropout 0, no batch norm, no augmentation, constant
learning rate, Adam), which writes its initial weights, every step's batch as
it fed it (after input scaling), every step's loss as it computed it, and the
validation patches. PyTorch then loads those initial weights and trains on
those batches in that order with `torch.optim.Adam` (same betas, epsilon and
learning rate). Afterwards both final models (ours from `last.safetensors`)
are evaluated by the one PyTorch implementation below on the same validation
tensors: pixel accuracy, mean IoU over the classes present in the truth, and
Keras' `jacard_coef` `(I + 1) / (T + P - I + 1)` over flattened one-hot
targets and softmax outputs (the mean over validation batches, as Keras and
our trainer report it).

The losses are written from their formulas as src/loss/mod.rs documents them (and
tests/fixtures/make_parity.py checks): smoothing 1, class weights 1, label 255
(or any label >= C) ignored, and, as `unet-wgpu train` sets them, classes
absent from a batch's target and argmax prediction left out of the class means
of Dice and Tversky (k_c = 0).

It prints the losses side by side (every --every-th step and the last), the
largest relative deviation |ours - torch| / |torch|, the first step where it
exceeds --part (the curves part), then the validation figures of both.
"""
import argparse
import csv
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from unet_torch import from_metadata  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LOSSES = ["ce", "dice", "focal", "dice+ce", "dice+focal", "tversky", "focal-tversky", "unified-focal"]
S = 1.0  # smoothing of Dice and Tversky


def region_sums(logits, labels):
    """Per-class sums over valid pixels: I_c, P_c, T_c, and k_c (0 for classes
    absent from both the target and the argmax prediction)."""
    c = logits.shape[1]
    valid = labels < c  # 255 (ignore) and any label >= C count nowhere
    p = torch.softmax(logits, 1) * valid[:, None]
    t = F.one_hot(labels.clamp(max=c - 1), c).permute(0, 3, 1, 2).to(p.dtype) * valid[:, None]
    i, pr, tt = (p * t).sum((0, 2, 3)), p.sum((0, 2, 3)), t.sum((0, 2, 3))
    predicted = torch.bincount(logits.detach().argmax(1)[valid], minlength=c)
    k = ((tt > 0) | (predicted > 0)).to(p.dtype)
    return i, pr, tt, k, p, t, valid


def class_mean(k, v):
    return (k * v).sum() / k.sum() if k.sum() > 0 else v.sum() * 0


def pixel_terms(logits, labels, t, p, valid):
    """-log p_y and u = sum of the other classes' probabilities (= 1 - p_y), per valid pixel."""
    c = logits.shape[1]
    nll = -torch.log_softmax(logits, 1).gather(1, labels.clamp(max=c - 1)[:, None])[:, 0][valid]
    u = (p * (1 - t)).sum(1)[valid]
    return nll, u


def loss_fn(name):
    """The loss `name` as unet-wgpu trains with it (src/train/losses.rs, src/loss/mod.rs)."""

    def tversky(i, pr, tt, k, a, b, e):
        ti = (i + S) / (i + a * (pr - i) + b * (tt - i) + S)
        return class_mean(k, (1 - ti).clamp(min=0) ** e)

    def loss(logits, labels):
        i, pr, tt, k, p, t, valid = region_sums(logits, labels)
        nll, u = pixel_terms(logits, labels, t, p, valid)
        mean = lambda v: v.mean() if v.numel() else v.sum()  # noqa: E731
        dice = lambda: 1 - class_mean(k, (2 * i + S) / (pr + tt + S))  # noqa: E731
        focal = lambda: mean(0.25 * u**2 * nll)  # noqa: E731
        if name == "ce":
            return mean(nll)
        if name == "dice":
            return dice()
        if name == "focal":
            return focal()
        if name == "dice+ce":
            return dice() + mean(nll)
        if name == "dice+focal":
            return dice() + focal()
        if name == "tversky":
            return tversky(i, pr, tt, k, 0.3, 0.7, 1.0)
        if name == "focal-tversky":
            return tversky(i, pr, tt, k, 0.3, 0.7, 0.75)
        if name == "unified-focal":  # symmetric, no background class: lambda 0.5, delta 0.6, gamma 0.5
            delta, gamma, lam = 0.6, 0.5, 0.5
            return lam * tversky(i, pr, tt, k, 1 - delta, delta, 1 - gamma) + (1 - lam) * mean(delta * u**gamma * nll)
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")

    return loss


def load_model(path):
    """A unet-wgpu checkpoint as a float32 PyTorch model (optimizer state left out)."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    model = from_metadata(meta).float()
    state = {k: v for k, v in load_file(path).items() if not k.startswith("optimizer.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, f"{path}: tensors PyTorch does not know: {unexpected}"
    assert all(k.endswith("num_batches_tracked") for k in missing), f"{path}: tensors missing: {missing}"
    return model, meta


@torch.no_grad()
def evaluate(model, x, labels, batch, classes, device):
    """Accuracy, mean IoU (classes present in the truth) and the batch-mean soft Jaccard."""
    model.eval()
    dtype = next(model.parameters()).dtype
    confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)
    jaccards = []
    for s in range(0, x.shape[0], batch):
        logits = model(x[s : s + batch].to(device, dtype))
        y = labels[s : s + batch].to(device)
        i, pr, tt, _, _, _, valid = region_sums(logits, y)
        jaccards.append(((i.sum() + 1) / (tt.sum() + pr.sum() - i.sum() + 1)).item())
        pred = logits.argmax(1)[valid]
        confusion += torch.bincount(y[valid] * classes + pred, minlength=classes * classes).reshape(classes, classes)
    tp = confusion.diag().double()
    truth, predicted = confusion.sum(1).double(), confusion.sum(0).double()
    present = truth > 0
    iou = tp[present] / (truth + predicted - tp)[present]
    return {
        "accuracy": (tp.sum() / confusion.sum().double()).item(),
        "mean_iou": iou.mean().item(),
        "jacard_coef": sum(jaccards) / len(jaccards),
    }


def run_ours(args, loss, out):
    binary = args.bin or os.path.join(ROOT, "target", "release", "unet-wgpu")
    if not os.path.exists(binary):
        print(f"{binary} missing: cargo build --release", flush=True)
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    command = [
        binary, "train", "--data", args.data, "--loss", loss, "--epochs", "1", "--max-steps", str(args.steps),
        "--batch", str(args.batch), "--patch", str(args.patch), "--lr", str(args.lr), "--optimizer", "adam",
        "--schedule", "constant", "--warmup", "0", "--dropout", "0", "--no-batch-norm", "--seed", str(args.seed),
        "--base", str(args.base), "--depth", str(args.depth), "--out", os.path.join(out, "run"),
        "--trace", os.path.join(out, "trace"),
    ] + (["--tiles", args.tiles] if args.tiles else [])  # fmt: skip
    print(" ".join(command), flush=True)
    log = open(os.path.join(out, "train.log"), "w")
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def train_torch(args, trace, ours, loss, dtype):
    """PyTorch's run from our initial weights on our batches, in `dtype` on
    args.device: its loss at every step, and the trained model."""
    torch.manual_seed(0)  # dropout is off; nothing random remains
    model, meta = load_model(os.path.join(trace, "initial.safetensors"))
    assert all(float(p) == 0 for p in meta["model.dropout"].split(",")), "dropout must be off"
    assert meta["model.batch_norm"] == "false", "batch norm must be off"
    model = model.to(device=args.device, dtype=dtype).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    fn = loss_fn(loss)
    losses = []
    for step, lr, _ in ours:
        batch = load_file(os.path.join(trace, f"step-{step:05d}.safetensors"))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        x, labels = batch["x"].to(args.device, dtype), batch["labels"].to(args.device).long()
        value = fn(model(x), labels)
        value.backward()
        opt.step()
        losses.append(value.item())
    return losses, model


def deviations(a, b, part):
    """Relative deviation of `a` from `b` at each step, the largest (value, step), and the
    first step past `part` (None if none)."""
    rel = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)]
    worst = max((r, i + 1) for i, r in enumerate(rel))
    parted = next((i + 1 for i, r in enumerate(rel) if r > part), None)
    return rel, worst, parted


def compare(args, loss):
    out = os.path.join(args.out, loss.replace("+", "_"))
    os.makedirs(out, exist_ok=True)
    if not args.reuse:
        run_ours(args, loss, out)
    trace = os.path.join(out, "trace")
    with open(os.path.join(trace, "steps.csv")) as f:
        ours = [(int(r["step"]), float(r["lr"]), float(r["loss"])) for r in csv.DictReader(f)]
    if len(ours) < args.steps:
        print(f"note: our run took {len(ours)} steps (one epoch of the training patches), not {args.steps}")
    ours_losses = [value for _, _, value in ours]
    f32, model = train_torch(args, trace, ours, loss, torch.float32)
    rel, worst, parted = deviations(ours_losses, f32, args.part)
    # The control: PyTorch in f64 on the same batches. Where PyTorch's own f32 run parts from
    # it, rounding alone sends this loss's runs apart, whoever computes them.
    f64, model64 = train_torch(args, trace, ours, loss, torch.float64) if args.control else (None, None)
    rel64, worst64, parted64 = deviations(f32, f64, args.part) if f64 else (None, None, None)

    with open(os.path.join(out, "trajectory.csv"), "w") as f:
        f.write("step,unet_wgpu,torch_f32,torch_f64\n")
        for i, (step, _, _) in enumerate(ours):
            f.write(f"{step},{ours_losses[i]!r},{f32[i]!r},{f64[i] if f64 else ''!r}\n")

    print(f"\nloss {loss}: {len(ours)} steps, batch {args.batch}, patch {args.patch}, Adam lr {args.lr}, "
          f"torch {torch.__version__} on {args.device}")
    print(f"{'step':>6} {'unet-wgpu':>12} {'torch f32':>12} {'rel. dev.':>10}" + (f" {'torch f64':>12} {'f32 vs f64':>10}" if f64 else ""))
    for i, (step, _, _) in enumerate(ours):
        if step == 1 or step % args.every == 0 or step == len(ours):
            line = f"{step:>6} {ours_losses[i]:>12.6f} {f32[i]:>12.6f} {rel[i]:>10.2e}"
            print(line + (f" {f64[i]:>12.6f} {rel64[i]:>10.2e}" if f64 else ""))
    print(f"step 1 relative deviation {rel[0]:.2e}")
    print(f"max relative deviation {worst[0]:.2e} (step {worst[1]})")
    print(f"curves part (relative deviation > {args.part:g}) at step {parted}" if parted else
          f"curves never part (relative deviation <= {args.part:g} throughout)")
    if f64:
        print(f"control, torch f32 against torch f64: max relative deviation {worst64[0]:.2e} (step {worst64[1]}), "
              + (f"part at step {parted64}" if parted64 else "never part"))

    val = load_file(os.path.join(trace, "val.safetensors"))
    x, labels = val["x"], val["labels"].long()
    figures = {}
    if x.shape[0]:
        classes = int(load_file_meta(trace)["model.classes"])
        ours_final, _ = load_model(os.path.join(out, "run", "last.safetensors"))
        models = {"unet-wgpu": ours_final.to(args.device), "torch f32": model}
        if model64 is not None:
            models["torch f64"] = model64
        figures = {who: evaluate(m, x, labels, args.batch, classes, args.device) for who, m in models.items()}
        print(f"validation after {len(ours)} steps, {x.shape[0]} patches (all evaluated by PyTorch):")
        for who, m in figures.items():
            print(f"  {who:<10} accuracy {m['accuracy']:.4f}  mIoU {m['mean_iou']:.4f}  jacard_coef {m['jacard_coef']:.4f}")
        with open(os.path.join(out, "run", "history.csv")) as f:
            h = list(csv.DictReader(f))[-1]
        print(f"  (unet-wgpu's own figures: accuracy {float(h['val_accuracy']):.4f}  mIoU {float(h['val_mean_iou']):.4f}"
              f"  jacard_coef {float(h['val_jacard_coef']):.4f})")
    return {"loss": loss, "steps": len(ours), "step1": rel[0], "max": worst, "parted": parted,
            "control": (worst64, parted64) if f64 else None, "val": figures}


def load_file_meta(trace):
    with safe_open(os.path.join(trace, "initial.safetensors"), "pt") as f:
        return f.metadata()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loss", default="dice+ce", help=f"one of {', '.join(LOSSES)}, a comma-separated list, or all")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--data", default=os.environ.get("DUBAI") or None, required=not os.environ.get("DUBAI"),
                    help="the Dubai dataset folder (Tile 1 ... Tile 8); default: $DUBAI")
    ap.add_argument("--tiles", help="comma-separated tile folders to use (default: all), e.g. 'Tile 2' for a quick try")
    ap.add_argument("--bin", help="unet-wgpu binary (default: target/release/unet-wgpu, built if missing)")
    ap.add_argument("--out", default="/tmp/unet-wgpu-trajectory", help="runs and traces go to OUT/<loss>/")
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/<loss>/trace instead of training ours again")
    ap.add_argument("--every", type=int, default=10, help="print every N-th step (and the first and last)")
    ap.add_argument("--part", type=float, default=1e-3, help="relative deviation at which the curves part")
    ap.add_argument("--device", default="cpu", help="where PyTorch runs: cpu (the default) or cuda (TF32 off)")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the control run of PyTorch in f64 (it shows where rounding alone parts the curves)")
    args = ap.parse_args()
    # f32 means f32: no TF32 on the GPU, whose 10-bit mantissa would part the curves by itself.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    losses = LOSSES if args.loss == "all" else args.loss.split(",")
    unknown = [name for name in losses if name not in LOSSES]
    if unknown:
        ap.error(f"unknown loss {', '.join(unknown)}; choose from {', '.join(LOSSES)} or all")
    results = [compare(args, name) for name in losses]
    print(f"\n{'loss':<14} {'steps':>5} {'step 1':>9} {'max dev.':>9} {'at':>4} {'parts':>5} {'f32/f64 parts':>13}"
          f"  val mIoU: {'ours':>6} {'f32':>6} {'f64':>6}")
    for r in results:
        control = r["control"][1] or "-" if r["control"] else "n/a"
        miou = [r["val"].get(who, {}).get("mean_iou") for who in ("unet-wgpu", "torch f32", "torch f64")]
        cells = " ".join(f"{m:>6.4f}" if m is not None else f"{'-':>6}" for m in miou)
        print(f"{r['loss']:<14} {r['steps']:>5} {r['step1']:>9.2e} {r['max'][0]:>9.2e} {r['max'][1]:>4} "
              f"{r['parted'] or '-':>5} {control:>13}            {cells}")

if __name__ == "__main__":
    main()
