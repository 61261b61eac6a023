#!/usr/bin/env bash
# benches/gpu.sh: everything worth measuring on a machine with a GPU, in one command
# that ends within 10 minutes and writes all it prints to one folder.
#
#   benches/gpu.sh [--any-adapter] [OUT]        (default OUT: runs/gpu-<date>-<time>)
#
# `--any-adapter` runs everything on a software driver too (to try the script itself).
# It runs, in this order, each part under its own time limit so that one slow
# part cannot eat the others' time:
#   1. the adapter and the limits its device was granted (`unet-wgpu info`);
#      on a machine with no GPU (only a software driver) it says so and stops;
#   2. the test suite;
#   3. the step bench at batch 4 with the builtin tile sizes;
#   4. `unet-wgpu tune` with a short budget (into OUT/tuning.json, not the user's cache);
#   5. the step bench at batch 4 and 16 with the tuned sizes;
#   6. the step bench at batch 4 with `--tiling gpu` (the GEMM convolutions' builtin sizes) and
#      `--tiling cpu` (the register tiles), the
#      kernel bench (GFLOP/s or GB/s, and the share of the measured ceilings), and its
#      convolutions again with `--tiling gpu`;
#   7. benches/reference/unet_step.py on CUDA at batch 4 and 16, if PyTorch sees a GPU:
#      fp32 with TF32 off, then with TF32 for the record;
#   8. a reduced Dubai run (all 8 tiles, 128-pixel patches, batch 8, Adam 1e-3, constant lr,
#      no batch norm, 3 epochs) with CE and then Dice: val mIoU and soft Jaccard per epoch.
#
# Environment:
#   DUBAI   the Dubai dataset folder (no default); part 8 is skipped
#           when it is missing.
#   BIN     a folder of prebuilt binaries, for a machine without a Rust toolchain: `unet-wgpu`,
#           `kernels` and `step` (the two benches), and `tests/` holding the test executables
#           (`cargo test --release --no-run` builds them). Default: build them here with cargo.
#   PYTHON  the Python that has PyTorch (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ANY_ADAPTER=0
if [[ "${1:-}" == "--any-adapter" ]]; then
    ANY_ADAPTER=1
    shift
fi
OUT="${1:-runs/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DUBAI="${DUBAI:-}"
PYTHON="${PYTHON:-python3}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export UNET_WGPU_CACHE="$OUT/tuning.json" # never touch the user's own cache
SUMMARY="$OUT/summary.txt"
DEADLINE=$((SECONDS + 570)) # the whole script ends within 10 minutes, however the parts go

# `part NAME SECONDS CMD...`: run CMD under a time limit (cut to what is left of the script's
# 10 minutes), its output to OUT/NAME.log and the screen.
part() {
    local name="$1" limit="$2" left=$((DEADLINE - SECONDS))
    shift 2
    if ((left < 15)); then
        echo "== $name: skipped, the script's 10 minutes are up" | tee -a "$SUMMARY"
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$SUMMARY"
    return "$rc"
}

if [[ -n "${BIN:-}" ]]; then
    BIN="$(cd "$BIN" && pwd)"
    UNET="$BIN/unet-wgpu"
    run_tests() { local rc=0 t; for t in "$BIN"/tests/*; do echo "-- $(basename "$t")"; "$t" || rc=1; done; return $rc; }
    export BIN
    KERNELS="$BIN/kernels"
    STEP="$BIN/step"
else
    cargo build --release --bins >"$OUT/build.log" 2>&1 || { echo "build failed: see $OUT/build.log"; exit 1; }
    UNET="${CARGO_TARGET_DIR:-target}/release/unet-wgpu"
    run_tests() { cargo test --release; }
    KERNELS="cargo bench --bench kernels --"
    STEP="cargo bench --bench step --"
fi

{ date -u '+%Y-%m-%d %H:%M UTC'; uname -srm; nproc | sed 's/$/ CPU cores/'; } | tee -a "$SUMMARY"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$SUMMARY"

part info 60 "$UNET" info || { echo "no adapter could be opened: see $OUT/info.log" | tee -a "$SUMMARY"; exit 1; }
if ((!ANY_ADAPTER)) && ! grep -qE '^device type: (DiscreteGpu|IntegratedGpu|VirtualGpu)' "$OUT/info.log"; then
    echo "no GPU here: the best adapter is a software driver ($(sed -n 's/^adapter: //p' "$OUT/info.log" | tail -n 1)); stopping." | tee -a "$SUMMARY"
    exit 0
fi
grep -E '^(adapter|device type):' "$OUT/info.log" >>"$SUMMARY"
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --benches >>"$OUT/build.log" 2>&1 || { echo "build failed: see $OUT/build.log"; exit 1; }
fi

export -f run_tests # `timeout` runs programs, not functions
part tests 150 bash -c run_tests
grep -hE '^test result|FAILED|panicked' "$OUT/tests.log" >>"$SUMMARY"
part step-builtin-b4 45 $STEP --batch 4 --steps 20
part tune 50 "$UNET" tune --budget 25
part step-tuned-b4 45 $STEP --batch 4 --steps 20
part step-tuned-b16 45 $STEP --batch 16 --steps 10
# Each family forced, whatever tune chose: every convolution a workgroup-memory GEMM (gpu, the
# builtin of hardware adapters), then the register tiles of CPU drivers (cpu).
part step-gpu-tiling-b4 45 $STEP --batch 4 --steps 20 --tiling gpu
part step-cpu-tiling-b4 45 $STEP --batch 4 --steps 20 --tiling cpu
BENCH_REPS=5 part kernels 100 $KERNELS
BENCH_REPS=5 part kernels-gpu-tiling 60 $KERNELS --tiling gpu conv

if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    for b in 4 16; do
        part "torch-fp32-b$b" 40 "$PYTHON" benches/reference/unet_step.py --device cuda --batch "$b" --steps 20
        part "torch-tf32-b$b" 40 "$PYTHON" benches/reference/unet_step.py --device cuda --batch "$b" --steps 20 --tf32
    done
else
    echo "== torch: PyTorch sees no GPU; skipped" | tee -a "$SUMMARY"
fi

if [[ -d "$DUBAI" ]]; then
    for loss in ce dice; do
        part "dubai-$loss" 90 "$UNET" train --data "$DUBAI" --loss "$loss" --epochs 3 --patch 128 --batch 8 \
            --lr 1e-3 --optimizer adam --schedule constant --no-batch-norm --seed 0 --out "$OUT/dubai-$loss"
    done
else
    echo "== dubai: no dataset (set DUBAI to its folder); skipped" | tee -a "$SUMMARY"
fi

# The figures a reader wants first, gathered from the logs.
{
    echo "== figures"
    grep -hE 'warm|images/s|GFLOP/s' "$OUT"/step-*.log "$OUT"/torch-*.log 2>/dev/null
    grep -hE '^(epoch|Epoch)|val_mean_iou' "$OUT"/dubai-*.log 2>/dev/null | tail -n 12
} | tee -a "$SUMMARY"
echo "everything is in $OUT"
