#!/usr/bin/env bash
# Every pipeline the program can create, built by a second WebGPU implementation: headless
# Chromium's (Dawn, its WGSL compiler Tint, and SwiftShader where there is no GPU), with the
# device at WebGPU's default limits. The list (every shader, entry point and set of pipeline
# constants: the builtin tile sizes of every kind of adapter and the autotune's candidates)
# comes from tests/shader_languages, which naga translates for every backend. Prints what was
# built; fails on any error. Needs chromium (or $CHROMIUM), node and npm.
set -euo pipefail
web="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$web")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$repo" && UNET_WGPU_PIPELINES="$work/pipelines.json" cargo test --release --test shader_languages -q -- --nocapture) |
  grep -E '^wrote'
[ -d "$web/node_modules/puppeteer-core" ] || (cd "$web" && npm ci --no-audit --no-fund)

# SwiftShader cannot build the register-tile convolutions (its compiler grows past 13 GB and
# Chromium loses the device: docs/browser.md), so the program never picks them there
# (`builds_register_convolutions`); they are left out here, and named in the summary.
register_tiles=conv2d/tiled::conv2d_forward,conv2d/tiled::conv2d_backward_data_stride1
register_tiles+=,conv2d/tiled_backward::conv2d_backward_data
node "$web/pipelines.mjs" --pipelines "$work/pipelines.json" --skip "$register_tiles"
