"""Loads a unet-wgpu checkpoint into the equivalent PyTorch model and checks
that it gives the same logits as unet-wgpu. Run by hand:

    cargo run --release --example checkpoint_logits -- runs/latest/best.safetensors /tmp/logits.safetensors
    python3 benches/reference/check_checkpoint.py runs/latest/best.safetensors /tmp/logits.safetensors

The model is rebuilt from the checkpoint's metadata; tensor names and layouts
are PyTorch's, so `load_state_dict` takes them as they are (PyTorch's batch-norm
`num_batches_tracked` counters, which unet-wgpu does not keep, stay at 0).
"""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from unet_torch import from_metadata  # noqa: E402

checkpoint, logits_file = sys.argv[1], sys.argv[2]
with safe_open(checkpoint, "pt") as f:
    meta = f.metadata()
model = from_metadata(meta).double().eval()
state = {k: v.double() for k, v in load_file(checkpoint).items() if not k.startswith("optimizer.")}
missing, unexpected = model.load_state_dict(state, strict=False)
assert not unexpected, f"tensors PyTorch does not know: {unexpected}"
assert all(k.endswith("num_batches_tracked") for k in missing), f"tensors the checkpoint lacks: {missing}"
ours = load_file(logits_file)
with torch.no_grad():
    theirs = model(ours["input"].double())
err = ((theirs - ours["logits"].double()).abs() / theirs.abs().clamp(min=theirs.pow(2).mean().sqrt())).max().item()
print(f"{len(state)} tensors loaded into PyTorch {torch.__version__}; logits {tuple(theirs.shape)}; "
      f"max relative error {err:.2e}: {'within' if err < 1e-4 else 'OUTSIDE'} 1e-4")
sys.exit(0 if err < 1e-4 else 1)
