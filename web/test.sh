#!/usr/bin/env bash
# Build the page, train a tiny U-Net in it in headless Chromium (WebGPU; SwiftShader where there is
# no GPU) and compare with the native program run with the same configuration and seed. Prints
# the loss before and after, the validation mIoU, the agreement with native and the steps per
# second of both; saves a screenshot of the page (web/screenshot.png, or $SCREENSHOT).
# Needs chromium (or $CHROMIUM), node and npm; web/build.sh's tools; a Vulkan driver for native.
set -euo pipefail
web="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$web")"
target="${CARGO_TARGET_DIR:-$repo/target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

# The run, once: page field=value. A few dozen steps of a small U-Net on small tiles, the
# textbook kernels on both sides.
run=(tiles=8 tileSize=64 patch=32 base=8 depth=2 batch=2 epochs=2 loss=dice+ce lr=0.002 seed=0 kernels=reference)
flags=()
query=""
for pair in "${run[@]}"; do
  name="${pair%%=*}" value="${pair#*=}"
  case "$name" in
    tiles) flag=--synthetic-tiles ;;
    tileSize) flag=--synthetic-size ;;
    *) flag="--$name" ;;
  esac
  flags+=("$flag" "$value")
  query+="${query:+&}$name=${value//+/%2B}"
done

"$web/build.sh"
(cd "$repo" && cargo build --release --bin unet-wgpu)
[ -d "$web/node_modules/puppeteer-core" ] || (cd "$web" && npm ci --no-audit --no-fund)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== native: unet-wgpu train ${flags[*]}"
"$target/release/unet-wgpu" train "${flags[@]}" --out "$work/out" --trace "$work/trace" | tail -n 2
echo "== the page in headless Chromium: /?$query"
timeout 600 node "$web/test.mjs" --dist "$web/dist" --native "$work" --query "$query" \
  --screenshot "${SCREENSHOT:-$web/screenshot.png}" --tolerance 1e-3
