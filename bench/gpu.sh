#!/usr/bin/env bash
# bench/gpu.sh: lifelong's GPU checks and figures, one command on a machine with one CUDA GPU, in
# under 8 minutes (each step has a time limit, and the steps share an overall budget).
#
#   bench/gpu.sh              on CUDA
#   bench/gpu.sh --dry-run    on the CPU with tiny sizes (also: DEVICE=cpu bench/gpu.sh): proves the
#                             script end to end where there is no GPU; figures are meaningless
#
# Steps, in order; a failing step is recorded and the next one runs:
#   1. tests        pytest tests/gpu (CUDA: every strategy under torch.cuda.set_sync_debug_mode
#                   "error"; the CPU stand-in of the same check), the prepare_host tests, and the
#                   non-finite guard's tests (their "cuda" cases: a skipped batch on the deferred path)
#   2. throughput   bench/strategy_throughput.py: naive, replay, EWC against the bare loop, batch 32 and 256
#   3. fisher       bench/fisher_cost.py
#   4. overhead     bench/pipeline_overhead.py
#   5. run          lifelong run of the default pipeline on the device, tracking off
#   6. ddp          lifelong run --nproc 1 with NCCL (gloo on the CPU): a sanity run of one rank
#
# Where results go: RESULTS_DIR (default bench/results/gpu/): summary.md (one line per step:
# status, seconds, where its output is), summary.json, one log per step, the benchmark files and the
# run summaries. The benchmark scripts also keep writing their own files (bench/results/*_cuda.*,
# docs/img/*_cuda.png), which docs/benchmarks.md links. With OUT set (the device tool's output
# folder), the results are written under a scratch folder and OUT receives summary.md, all.log and
# gpu_results.tar.gz (everything), since only a few files come back from there.
#
# Environment: Python with torch (PYTHON, default python3). lifelong need not be installed: without
# its distribution the checkout is put on PYTHONPATH and its plugins named in LIFELONG_PLUGINS
# (mlflow and river are not needed: tracking is off, and no step reads a river data set).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$DRY" = 1 ]; then DEVICE=cpu; fi
if [ "$DEVICE" = cpu ]; then DRY=1; fi
BUDGET="${BUDGET:-450}"  # seconds for all steps together; a step gets min(its own limit, what is left)

if [ -n "${OUT:-}" ]; then
  RESULTS_DIR="${RESULTS_DIR:-$(mktemp -d /tmp/lifelong-gpu.XXXXXX)}"
else
  RESULTS_DIR="${RESULTS_DIR:-$ROOT/bench/results/gpu}"
fi
mkdir -p "$RESULTS_DIR"
rm -f "$RESULTS_DIR"/*.log "$RESULTS_DIR"/summary.md "$RESULTS_DIR"/summary.json "$RESULTS_DIR"/steps.tsv

# lifelong without installing it: the checkout on the path, the plugins by module name
if ! "$PY" -c "import importlib.metadata as m; m.distribution('lifelong')" >/dev/null 2>&1; then
  export PYTHONPATH="$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
  export LIFELONG_PLUGINS="lifelong_streams,lifelong_models,lifelong_strategies,lifelong_boundaries,lifelong_transfer,lifelong_pathnet,lifelong_anomaly"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# The dry run must not overwrite the CPU figures the repository keeps: its benchmarks run in a scratch
# copy of the checkout (the scripts write next to themselves).
BENCH_ROOT="$ROOT"
if [ "$DRY" = 1 ]; then
  BENCH_ROOT="$(mktemp -d /tmp/lifelong-gpu-dry.XXXXXX)"
  cp -r "$ROOT/lifelong" "$ROOT/plugins" "$ROOT/bench" "$BENCH_ROOT/"
  mkdir -p "$BENCH_ROOT/docs/img"
  rm -rf "$BENCH_ROOT/bench/results"
fi

START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT COMMAND...: run with a timeout, log to NAME.log, record status and seconds
step() {
  local name="$1" limit="$2"; shift 2
  local budget; budget=$(left)
  if [ "$budget" -lt 10 ]; then
    printf '%s\tskipped\t0\tno time left in the %ss budget\n' "$name" "$BUDGET" >> "$RESULTS_DIR/steps.tsv"
    echo "== $name: skipped (budget spent)"
    return
  fi
  [ "$limit" -gt "$budget" ] && limit=$budget
  echo "== $name (limit ${limit}s): $*"
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$RESULTS_DIR/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$name.log" >> "$RESULTS_DIR/steps.tsv"
  echo "   $status in $(( $(date +%s) - t0 ))s"
  tail -n 3 "$RESULTS_DIR/$name.log" | sed 's/^/   | /'
}

# collect FILE...: copy what a benchmark wrote into the results folder
collect() {
  for f in "$@"; do [ -f "$f" ] && cp "$f" "$RESULTS_DIR/"; done
  return 0
}

{
  echo "device: $DEVICE (dry run: $DRY)"
  "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  (cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null && git status --porcelain 2>/dev/null | head -20)
} > "$RESULTS_DIR/environment.log" 2>&1

# the non-finite guard's skipped batches (flags read late, after_step deferred on CUDA: lifelong.observation)
GUARD_TESTS=(tests/kernel/test_nonfinite_guard.py tests/kernel/test_observation.py)
if [ "$DRY" = 1 ]; then
  TP_ARGS=(--device cpu --strategies naive replay ewc --batch-sizes 256 --repeats 1 --epochs 1 --name strategy_throughput_gpu_dry)
  FC_ARGS=(--device cpu --repeats 1 --samples 64)
  PO_ARGS=(--device cpu --repeats 1 --epochs 1)
  RUN_SET=(--set learner.device=cpu --set learner.epochs=1)
  DDP_SET=(--set learner.device=cpu --set learner.epochs=1 --set distributed.backend=gloo)
  TESTS=(tests/gpu tests/plugins/test_text_prepare_host.py "${GUARD_TESTS[@]}" -k "not on_cpu or naive or class_balanced")
else
  TP_ARGS=(--device cuda --strategies naive replay ewc --batch-sizes 32 256 --repeats 3 --name strategy_throughput_cuda)
  FC_ARGS=(--device cuda --repeats 3)
  PO_ARGS=(--device cuda --repeats 3)
  RUN_SET=(--set learner.device=cuda)
  DDP_SET=(--set learner.device=cuda --set distributed.backend=nccl)
  TESTS=(tests/gpu tests/plugins/test_text_prepare_host.py "${GUARD_TESTS[@]}")
fi

step tests 150 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step throughput 170 bash -c 'cd "$0" && exec "$1" bench/strategy_throughput.py "${@:2}"' "$BENCH_ROOT" "$PY" "${TP_ARGS[@]}"
collect "$BENCH_ROOT"/bench/results/strategy_throughput_*.json "$BENCH_ROOT"/bench/results/strategy_throughput_*.md \
  "$BENCH_ROOT"/docs/img/strategy_throughput_*.png
step fisher 60 bash -c 'cd "$0" && exec "$1" bench/fisher_cost.py "${@:2}"' "$BENCH_ROOT" "$PY" "${FC_ARGS[@]}"
collect "$BENCH_ROOT"/bench/results/fisher_cost*.json "$BENCH_ROOT"/bench/results/fisher_cost*.md "$BENCH_ROOT"/docs/img/fisher_cost_*.png
step overhead 60 bash -c 'cd "$0" && exec "$1" bench/pipeline_overhead.py "${@:2}"' "$BENCH_ROOT" "$PY" "${PO_ARGS[@]}"
collect "$BENCH_ROOT"/bench/results/pipeline_overhead*.json "$BENCH_ROOT"/bench/results/pipeline_overhead*.md
step run 60 "$PY" -m lifelong.cli run "${RUN_SET[@]}" --set tracking.trackers=[] --set learner.progress=false \
  --summary "$RESULTS_DIR/run_summary.json"
# DDP on one GPU: a failure is reported in the summary and does not stop the script
step ddp 60 "$PY" -m lifelong.cli run --nproc 1 "${DDP_SET[@]}" --set tracking.trackers=[] --set learner.progress=false \
  --summary "$RESULTS_DIR/ddp_summary.json"

# the summary: one line per step, and the headline figures of the two runs
"$PY" - "$RESULTS_DIR" "$DEVICE" "$DRY" <<'EOF'
import json, sys
from pathlib import Path

out, device, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
steps = [dict(zip(("step", "status", "seconds", "log"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()]
runs = {}
for name in ("run_summary", "ddp_summary"):
    path = out / f"{name}.json"
    if path.is_file():
        s = json.loads(path.read_text())
        runs[name] = {k: s.get(k) for k in ("acc", "samples_per_second", "wall_seconds", "samples_seen")}
lines = [f"# bench/gpu.sh on {device}" + (" (dry run: tiny sizes, figures meaningless)" if dry else ""), "",
         (out / "environment.log").read_text().strip().replace("\n", "  \n"), "",
         "| step | status | seconds | output |", "| --- | --- | --- | --- |"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['log']} |" for s in steps]
for name, figures in runs.items():
    lines += ["", f"{name}: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in figures.items())]
(out / "summary.md").write_text("\n".join(lines) + "\n")
(out / "summary.json").write_text(json.dumps({"device": device, "dry_run": dry, "steps": steps, "runs": runs}, indent=2))
print("\n".join(lines))
failed = [s["step"] for s in steps if s["status"] != "ok"]
sys.exit(1 if failed else 0)
EOF
RC=$?

if [ -n "${OUT:-}" ]; then
  cat "$RESULTS_DIR"/*.log > "$OUT/all.log" 2>/dev/null
  cp "$RESULTS_DIR/summary.md" "$OUT/"
  tar -czf "$OUT/gpu_results.tar.gz" -C "$RESULTS_DIR" .
fi
[ "$DRY" = 1 ] && rm -rf "$BENCH_ROOT"
echo "results: $RESULTS_DIR${OUT:+ (and $OUT)}"
exit $RC
