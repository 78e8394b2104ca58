#!/usr/bin/env bash
# One-command check of the CUDA backend on a machine with a GPU (written for an H100 with a CUDA
# build of torch 2.11+, nvcc, pytest, pytest-benchmark, compute-sanitizer and ncu; no network):
#
#     bash python_tests/gpu_check.sh            # from the repository root
#
# Steps: host tiling test, build the extension from the working tree, ptxas resource usage, the
# CUDA pytest suite, compute-sanitizer memcheck / racecheck / synccheck / initcheck on small cases,
# a quick timing against PyTorch, the CUDA benchmark file if there is one, the kernels' hardware
# counters beside the emulator's (ncu; RUN_COUNTERS=0 skips), and (RUN_NCU=1) an Nsight Compute
# look at the main kernel. Every step runs even if an earlier one failed (except
# those that need the build); a summary table is printed last, and the exit status is non-zero if
# any step failed. Without a visible GPU the GPU steps are reported as skipped, so the script can
# be dry-run on a CPU machine with a CUDA build of torch (the build, registration and ptxas steps
# still run). compute-sanitizer is probed first: where it refuses the device, its four steps are
# reported as skipped with its message, not as failures.
# Environment: ARCH (default 9.0) = TORCH_CUDA_ARCH_LIST; PYTHON (default python); LOG_DIR
# (default $OUT when set, as on the project's device machines, else build/gpu_check) keeps each
# step's full output, the benchmark JSON and the summary; MAX_JOBS (default: all cores) for the build.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
ARCH=${ARCH:-9.0}
LOG_DIR=${LOG_DIR:-${OUT:-build/gpu_check}}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
mkdir -p "$LOG_DIR"

declare -a NAMES=() RESULTS=() SECONDS_TAKEN=()

# run_step NAME LOGFILE CMD...: runs CMD, tees its output to LOGFILE, records pass/fail and time.
run_step() {
  local name=$1 log=$2
  shift 2
  echo
  echo "==== $name ===="
  local start=$SECONDS rc
  "$@" 2>&1 | tee "$LOG_DIR/$log"
  rc=${PIPESTATUS[0]}
  NAMES+=("$name")
  SECONDS_TAKEN+=($((SECONDS - start)))
  if [ "$rc" -eq 0 ]; then RESULTS+=("ok"); else RESULTS+=("FAILED (rc $rc, $LOG_DIR/$log)"); fi
  return "$rc"
}

skip_step() {
  NAMES+=("$1")
  SECONDS_TAKEN+=(0)
  RESULTS+=("skipped: $2")
}

# ---- 0. Environment ---------------------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

# ---- 1. Host tests of the tile arithmetic (no GPU needed) ----------------------------------------
run_step "host tiling test (g++)" tiling.log bash -o pipefail -c \
  "g++ -std=c++17 -O2 -Icsrc csrc/tests/test_cuda_tiling.cpp -o '$LOG_DIR/test_cuda_tiling' && '$LOG_DIR/test_cuda_tiling'"

# ---- 2. Build ----------------------------------------------------------------------------------
BUILD_OK=0
if run_step "build (TORCH_CUDA_ARCH_LIST=$ARCH)" build.log env TORCH_CUDA_ARCH_LIST="$ARCH" FORCE_CUDA=1 \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e .; then
  if run_step "extension has the CUDA backend" backend.log "$PYTHON" -c "
import torch
from repsr_ext import ops
assert ops.has_backend('cuda'), 'repsr_ext was built without CUDA kernels'
assert 'CUDA' in torch._C._dispatch_dump('repsr_ext::fused_sr'), 'no CUDA kernel registered'
print('CUDA kernels registered; device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible')
"; then BUILD_OK=1; fi
fi

# Registers / spills / stack of every kernel for this GPU's architecture (the .cu files are
# torch-free, so nvcc needs no torch include paths).
NVCC=${CUDA_HOME:+$CUDA_HOME/bin/}nvcc
SM=$(echo "$ARCH" | sed 's/[^0-9]//g')
# nvcc's own exit status decides the step; the filter only shortens the log.
run_step "ptxas resource usage (sm_$SM)" ptxas.log bash -o pipefail -c "
  for f in csrc/cuda/*.cu; do
    '$NVCC' -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Icsrc \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -gencode arch=compute_$SM,code=sm_$SM --resource-usage -c \$f -o /dev/null \
      > '$LOG_DIR/ptxas_raw.txt' 2>&1 || { cat '$LOG_DIR/ptxas_raw.txt'; exit 1; }
    grep -E 'Function properties|registers|spill' '$LOG_DIR/ptxas_raw.txt' | (c++filt 2>/dev/null || cat) || true
  done"

GPU_OK=0
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU_OK=1
fi

if [ "$BUILD_OK" -eq 1 ] && [ "$GPU_OK" -eq 1 ]; then
  # ---- 3. Correctness ----------------------------------------------------------------------------
  CORRECT=0
  if run_step "pytest python_tests/test_cuda.py" pytest.log "$PYTHON" -m pytest python_tests/test_cuda.py -q -rs; then
    CORRECT=1
  fi

  # ---- 4. compute-sanitizer ------------------------------------------------------------------------
  # A probe first: some machines' compute-sanitizer refuses the device (driver or permission);
  # that is reported as skipped with its own words, not as a failure of our kernels.
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    skip_step "compute-sanitizer" "not on PATH"
  elif ! compute-sanitizer --tool memcheck --error-exitcode 1 "$PYTHON" -c \
      "import torch; torch.ones(8, device='cuda').sum().item()" > "$LOG_DIR/sanitizer_probe.log" 2>&1; then
    skip_step "compute-sanitizer (4 tools)" \
      "refused the device: $(grep -v '^\s*$' "$LOG_DIR/sanitizer_probe.log" | tail -2 | tr '\n' ' ' | cut -c1-160)"
  else
    for tool in memcheck racecheck synccheck initcheck; do
      run_step "compute-sanitizer $tool" "$tool.log" compute-sanitizer --tool "$tool" \
        --error-exitcode 1 "$PYTHON" python_tests/cuda_sanitize_case.py
    done
  fi

  # ---- 5. Quick timing against PyTorch (cuDNN) ---------------------------------------------------------
  run_step "quick timing vs PyTorch" timing.log "$PYTHON" - <<'EOF'
import torch
import torch.nn.functional as F

torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = False  # float32 convs in true float32, as the fused kernel

def net(c, layers, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    widths = [3] + [c] * (layers - 1) + [3 * scale * scale]
    w = [torch.randn(o, i, 3, 3, generator=g).cuda() * (0.3 / (9 * i) ** 0.5) for i, o in zip(widths[:-1], widths[1:])]
    b = [torch.zeros(o).cuda() for o in widths[1:]]
    s = [torch.full((o,), 0.1).cuda() for o in widths[1:-1]]
    return w, b, s

def timed(fn, reps=20):
    fn(); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) / reps

def eager(x, w, b, s, scale):
    y = x
    for i, (wi, bi) in enumerate(zip(w, b)):
        y = F.conv2d(y, wi, bi, padding=1)
        if i < len(w) - 1:
            y = torch.where(y >= 0, y, s[i].view(1, -1, 1, 1) * y)
    return F.pixel_shuffle(y, scale) + x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)

print(f"{'net':8s} {'input':12s} {'dtype':9s} {'fused ms':>9s} {'torch ms':>9s} {'speedup':>8s}")
for name, c, layers in [("M4C16", 16, 4), ("M4C32", 32, 4), ("M10C32", 32, 10), ("M16C64", 64, 16)]:
    for h, wd in [(180, 320), (720, 1280)]:
        for dtype in (torch.float32, torch.float16):
            w, b, s = net(c, layers, 4)
            x = torch.rand(1, 3, h, wd, device="cuda", dtype=dtype)
            wl = [t.to(dtype) for t in w]; bl = [t.to(dtype) for t in b]; sl = [t.to(dtype) for t in s]
            fused = timed(lambda: torch.ops.repsr_ext.fused_sr(x, w, b, s, 4, True, False))
            with torch.inference_mode():
                ref = timed(lambda: eager(x, wl, bl, sl, 4))
            print(f"{name:8s} {h}x{wd:<8d} {str(dtype)[6:]:9s} {fused:9.3f} {ref:9.3f} {ref / fused:7.2f}x")
EOF

  # ---- 6. Benchmarks (if a CUDA benchmark file exists) --------------------------------------------
  BENCH=$(ls python_tests/*bench*cuda*.py python_tests/*cuda*bench*.py 2>/dev/null | head -1 || true)
  if [ "$CORRECT" -ne 1 ]; then
    skip_step "benchmarks" "the CUDA correctness tests failed: timings of wrong results mean nothing"
  elif [ -n "$BENCH" ]; then
    run_step "benchmarks ($BENCH)" bench.log env REPSR_BENCH_JSON="$LOG_DIR/cuda_results.json" \
      "$PYTHON" -m pytest "$BENCH" -q --benchmark-enable --benchmark-json="$LOG_DIR/cuda_bench.json"
    if [ -f benchmarks/summarize.py ] && [ -f "$LOG_DIR/cuda_bench.json" ]; then
      "$PYTHON" benchmarks/summarize.py "$LOG_DIR/cuda_bench.json" | tee "$LOG_DIR/cuda_table.md" || true
    fi
  else
    skip_step "benchmarks" "no python_tests/*bench*cuda*.py yet"
  fi

  # ---- 7. Hardware counters beside the emulator's (benchmarks/hardware_counters.py) ----------------
  # The emulator's small whole-run cases (totals must agree) and the benchmark cases at batch 1 in
  # float16 plus M4C16 in float32 (its 12x28 tail; the model's scaled samples), each launch with
  # where its time goes (issue, FMA / tensor pipe, shared memory, L1, DRAM). Metrics this ncu does
  # not know are left out (and said); clocks left as they are (--clock-control none).
  # RUN_COUNTERS=0 skips the step.
  if [ "${RUN_COUNTERS:-1}" != "1" ]; then
    skip_step "hardware counters" "RUN_COUNTERS=0"
  elif ! command -v ncu >/dev/null 2>&1; then
    skip_step "hardware counters" "ncu not on PATH"
  else
    counters_step() {
      local known wanted="" m
      known=$(ncu --query-metrics 2>/dev/null || true)
      for m in $("$PYTHON" benchmarks/hardware_counters.py metrics | tr , ' '); do
        if [ -z "$known" ] || grep -qw "${m%%.*}" <<<"$known"; then wanted+="${wanted:+,}$m"; else echo "ncu does not know $m: left out"; fi
      done
      local name json filter rc=0
      for name in small benchmark; do
        if [ "$name" = small ]; then json=benchmarks/hardware_counters_emulated.json filter=.; else json=benchmarks/gpu_model_counters.json filter=' f16 nchw b1 |^M4C16 f32 nchw b1 '; fi
        echo "-- $name: $json, cases matching '$filter'"
        timeout 240 ncu --clock-control none --kernel-name regex:segment_ --metrics "$wanted" \
          --export "$LOG_DIR/counters_$name" --force-overwrite \
          "$PYTHON" benchmarks/hardware_counters.py run "$json" --cases "$filter" || { rc=1; continue; }
        ncu --import "$LOG_DIR/counters_$name.ncu-rep" --csv --page raw >"$LOG_DIR/counters_$name.csv" || { rc=1; continue; }
        "$PYTHON" benchmarks/hardware_counters.py compare "$LOG_DIR/counters_$name.csv" "$json" --cases "$filter" \
          --json "$LOG_DIR/counters_$name.json" | tee "$LOG_DIR/counters_$name.md" || rc=1
      done
      return $rc
    }
    run_step "hardware counters (ncu vs emulator)" counters.log counters_step
  fi

  # ---- 8. Nsight Compute (opt-in) --------------------------------------------------------------------
  if [ "${RUN_NCU:-0}" = "1" ] && command -v ncu >/dev/null 2>&1; then
    run_step "ncu (segment kernels)" ncu.log ncu --clock-control none --kernel-name regex:segment_ --launch-count 4 \
      --section SpeedOfLight --section Occupancy --section LaunchStats "$PYTHON" -c "
import torch, repsr_ext
g = torch.Generator().manual_seed(0)
for c, layers, dt in [(16, 4, torch.float16), (64, 16, torch.float16)]:
    widths = [3] + [c] * (layers - 1) + [48]
    w = [(torch.randn(o, i, 3, 3, generator=g) * 0.05).cuda() for i, o in zip(widths[:-1], widths[1:])]
    b = [torch.zeros(o).cuda() for o in widths[1:]]
    s = [torch.full((o,), 0.1).cuda() for o in widths[1:-1]]
    x = torch.rand(1, 3, 180, 320, device='cuda', dtype=dt)
    torch.ops.repsr_ext.fused_sr(x, w, b, s, 4, True, False)
torch.cuda.synchronize()
"
  else
    skip_step "ncu" "set RUN_NCU=1 to profile"
  fi
elif [ "$BUILD_OK" -eq 1 ]; then
  skip_step "pytest / sanitizers / timing / benchmarks" "no GPU visible to torch (dry run)"
else
  skip_step "pytest / sanitizers / timing / benchmarks" "the build or the CUDA backend check failed"
fi

# ---- Summary ---------------------------------------------------------------------------------------
echo
echo "==== summary (logs in $LOG_DIR) ===="
FAILED=0
{
  printf '%-44s %6s  %s\n' "step" "sec" "result"
  for i in "${!NAMES[@]}"; do
    printf '%-44s %6s  %s\n' "${NAMES[$i]}" "${SECONDS_TAKEN[$i]}" "${RESULTS[$i]}"
  done
} | tee "$LOG_DIR/summary.txt"
for i in "${!NAMES[@]}"; do
  case "${RESULTS[$i]}" in FAILED*) FAILED=1 ;; esac
done
exit $FAILED
