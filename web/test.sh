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

# The run: page field=value. A few dozen steps of a small U-Net on small tiles, first on the
# textbook kernels, then (one epoch) on the tuned ones: on SwiftShader those have every
# convolution a workgroup-memory GEMM (`Tuning::builtin`), which natively `--tiling gpu` gives.
run=(tiles=8 tileSize=64 patch=32 base=8 depth=2 batch=2 loss=dice+ce lr=0.002 seed=0)
# native_flags FIELD=VALUE...: the same run's flags for `unet-wgpu train`; query FIELD=VALUE...:
# the page's address.
native_flags() {
  for pair in "$@"; do
    name="${pair%%=*}" value="${pair#*=}"
    case "$name" in
      tiles) printf '%s\n' --synthetic-tiles "$value" ;;
      tileSize) printf '%s\n' --synthetic-size "$value" ;;
      *) printf '%s\n' "--$name" "$value" ;;
    esac
  done
}
query() {
  local q=""
  for pair in "$@"; do q+="${q:+&}${pair//+/%2B}"; done
  echo "$q"
}

"$web/build.sh"
(cd "$repo" && cargo build --release --bin unet-wgpu)
[ -d "$web/node_modules/puppeteer-core" ] || (cd "$web" && npm ci --no-audit --no-fund)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# compare CHECKS NATIVE-FLAGS... -- FIELD=VALUE...: the native run, then the page's, compared.
# CHECKS: all (the page's figures, tables and pictures, "Compare losses", a browser without
# WebGPU, the screenshot) or numbers (the losses and mIoU against native only).
compare() {
  local checks="$1"; shift
  local native=() fields
  while [ "$1" != "--" ]; do native+=("$1"); shift; done
  shift
  fields=("$@")
  mapfile -t -O "${#native[@]}" native < <(native_flags "${fields[@]}")
  rm -rf "$work/out" "$work/trace"
  echo "== native: unet-wgpu ${native[*]}"
  "$target/release/unet-wgpu" "${native[@]}" --out "$work/out" --trace "$work/trace" | tail -n 2
  echo "== the page in headless Chromium: /?$(query "${fields[@]}")"
  local shot=()
  [ "$checks" = all ] && shot=(--screenshot "${SCREENSHOT:-$web/screenshot.png}")
  timeout 600 node "$web/test.mjs" --dist "$web/dist" --native "$work" --query "$(query "${fields[@]}")" \
    --checks "$checks" "${shot[@]}" --tolerance 1e-3
}
compare all train -- "${run[@]}" epochs=2 kernels=reference
compare numbers --tiling gpu train -- "${run[@]}" epochs=1 kernels=tuned
