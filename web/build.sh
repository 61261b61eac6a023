#!/usr/bin/env bash
# Build the page into web/dist/: the wasm module (this crate, for wasm32-unknown-unknown, bound to
# JS by wasm-bindgen) and the static files. Needs `rustup target add wasm32-unknown-unknown` and
# `cargo install wasm-bindgen-cli --version 0.2.130` (the version Cargo.lock pins).
set -euo pipefail
web="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$web")"
target="${CARGO_TARGET_DIR:-$repo/target}"
want="$(grep -A1 '^name = "wasm-bindgen"$' "$repo/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" != "$want" ]; then
  echo "web/build.sh: wasm-bindgen ${have:-is not installed}; Cargo.lock wants $want:" >&2
  echo "  cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi
(cd "$repo" && cargo build -p unet-wgpu-web --target wasm32-unknown-unknown --release)
rm -rf "$web/dist"
mkdir -p "$web/dist"
wasm-bindgen --target web --no-typescript --out-dir "$web/dist/pkg" \
  "$target/wasm32-unknown-unknown/release/unet_wgpu_web.wasm"
cp "$web"/static/* "$web/dist/"
echo "web/dist: $(du -sh "$web/dist" | cut -f1) ($(du -h "$web/dist/pkg/unet_wgpu_web_bg.wasm" | cut -f1) of wasm)"
