"""Bounded memory: the RSS of one long `lifelong run` at 10^5 and at 10^6 stream samples.

The stream: scikit-learn's digits (the Split-Digits data: 8×8 images as 64 float32 features in
[0, 1]), 25 % of each class held out (seeded) as a small test archive, the rest tiled to ``--samples``
rows (default 10^6: 5 class-incremental experiences of 200,000 rows, classes {0,1}, {2,3}, …) and
written to one ``.npz`` in a temporary directory (~270 MB), read with ``stream.reader='npz'`` and
``test_path``. The pipeline is the built-in one otherwise (MLP [256, 256], replay + EWC, Adam,
batch 32) with ``learner.epochs=1`` (a stream), window boundaries every ``--window`` batches
(default 50: 625 generations), the MLflow tracker ON into a sqlite store in the temporary directory
(every generation logged and registered, as users run it) and checkpoints on (``checkpoint.dir``,
``every_batches`` ``--checkpoint-every``, default 500, plus one per generation as always).

How RSS is measured: the real CLI runs as a subprocess (``lifelong --plugin bench_probes run
pipeline.toml``); the bench's ``rss-log`` tracker (``bench/bench_probes.py``) appends the process's
VmRSS and VmHWM from ``/proc/self/status`` with ``samples_seen`` at every ``on_metrics`` call (every
``learner.log_every`` = 20 batches), so each RSS figure sits at a known point of the stream; at
10^5 and 10^6 samples it also counts the live Python objects per type (after reading RSS). The
harness samples ``/proc/<pid>/status`` from outside every 0.25 s as well, for the whole process
(start-up, loading the archive, the final MLflow drain). ``--trace`` adds tracemalloc (slower) to
name the allocation sites that grew.

Target: RSS growth from 10^5 to 10^6 samples under 10 %.

    OMP_NUM_THREADS=1 python bench/memory.py [--samples 1000000] [--window 50] [--checkpoint-every 500] [--trace]

Writes bench/results/memory.{json,md} and docs/img/memory.png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import git_commit, load_average, save_figure, source_fingerprint

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
IMAGES = ROOT / "docs" / "img"
TARGET_GROWTH = 0.10


def write_stream(tmp: Path, samples: int, seed: int) -> tuple[Path, Path, dict[str, Any]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0).reshape(len(data.images), 64)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(idx) * 0.25)
        test_idx.append(idx[:cut])
        train_idx.append(idx[cut:])
    train_idx, test_idx = np.concatenate(train_idx), np.sort(np.concatenate(test_idx))
    experiences = 5
    per = samples // experiences
    xs, ys, es = [], [], []
    for e in range(experiences):
        pool = rng.permutation(train_idx[np.isin(y[train_idx], [2 * e, 2 * e + 1])])
        rows = np.resize(pool, per + (samples - per * experiences if e == experiences - 1 else 0))  # tiled
        xs.append(x[rows])
        ys.append(y[rows])
        es.append(np.full(len(rows), e, dtype=np.int64))
    train, test = tmp / "stream.npz", tmp / "test.npz"
    np.savez(train, x=np.concatenate(xs), y=np.concatenate(ys), experience=np.concatenate(es))
    np.savez(test, x=x[test_idx], y=y[test_idx], experience=y[test_idx] // 2)
    return (
        train,
        test,
        {
            "rows": samples,
            "bytes": train.stat().st_size,
            "test_rows": len(test_idx),
            "distinct_train_rows": len(train_idx),
        },
    )


def pipeline_toml(tmp: Path, train: Path, test: Path, args: argparse.Namespace) -> Path:
    census = [10**5, args.samples]
    text = f"""
[stream]
reader = "npz"
path = "{train}"
test_path = "{test}"
scenario = "class"

[learner]
epochs = 1
progress = false

[boundary]
detector = "window"
batches = {args.window}

[tracking]
trackers = {'["rss-log"]' if args.no_mlflow else '["mlflow", "rss-log"]'}

[tracking.mlflow]
tracking_uri = "sqlite:///{tmp / "mlflow.db"}"

[tracking.rss-log]
path = "{tmp / "rss.jsonl"}"
census_at = {census}
trace = {"true" if args.trace else "false"}

[checkpoint]
dir = "{tmp / "ckpt"}"
every_batches = {args.checkpoint_every}
"""
    path = tmp / "pipeline.toml"
    path.write_text(text)
    return path


def vm(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def at(entries: list[dict], samples: int) -> dict:
    """The first in-process entry at or past ``samples`` stream samples."""
    return next(e for e in entries if e["samples"] >= samples)


def window(entries: list[dict], lo: int, hi: int) -> list[int]:
    return [e["VmRSS"] for e in entries if lo <= e["samples"] <= hi]


def frames(lines: list[str]) -> list[str]:
    """tracemalloc's formatted traceback (oldest first, 'File …, line N' then the code) as 'file:N code', innermost first."""
    out = []
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith("File "):
            path, _, number = line[5:].partition(", line ")
            path = path.strip('"')
            short = (
                "/".join(Path(path).parts[-3:])
                if "site-packages" in path or "lib/python" in path
                else os.path.relpath(path, ROOT)
                if path.startswith(str(ROOT))
                else path
            )
            code = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].strip().startswith("File ") else ""
            out.append(f"`{short}:{number}` {code}".replace("|", "/"))
    return out[::-1]


def where(stack: list[str]) -> list[str]:
    """The innermost frame, the innermost frame outside the standard library, and the innermost in this project."""
    picks = stack[:1]
    outside = next((f for f in stack if not f.startswith(("`lib/python", "`<frozen"))), None)
    ours = next((f for f in stack if f.startswith(("`lifelong/", "`plugins/", "`bench/"))), None)
    for f in (outside, ours):
        if f is not None and f not in picks:
            picks.append(f)
    return picks


def census_growth(first: dict, last: dict, top: int = 15) -> list[tuple[str, int, int, int]]:
    a, b = first.get("census", {}), last.get("census", {})
    rows = [(k, a.get(k, 0), b.get(k, 0), b.get(k, 0) - a.get(k, 0)) for k in set(a) | set(b)]
    return sorted(rows, key=lambda r: -r[3])[:top]


HEATMAP_SCRIPT = """
import json, random, sys, time
def status(key):  # VmHWM / VmRSS of this process in KiB (ru_maxrss would carry the parent's peak over fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
rows = int(sys.argv[1])
random.seed(0)
summary = {"accuracy_matrix": [[random.random() for _ in range(5)] for _ in range(rows)], "experiences": [0, 1, 2, 3, 4], "acc": 0.5}
from lifelong import report
import matplotlib.pyplot  # imported before the baseline, as in a run that already drew nothing
base = status("VmRSS")
start = time.perf_counter()
report.heatmap(summary, sys.argv[2])
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start, "baseline_kib": base,
                  "peak_kib": status("VmHWM")}))
"""


def heatmap_cost(rows: int, tmp: Path) -> dict[str, Any]:
    """Peak RSS and seconds of ``lifelong.report.heatmap`` alone for a rows × 5 accuracy matrix (a fresh process)."""
    out = subprocess.run(
        [sys.executable, "-c", HEATMAP_SCRIPT, str(rows), str(tmp / f"heatmap-{rows}.png")],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        return {"rows": rows, "error": out.stderr[-2000:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["png_bytes"] = (tmp / f"heatmap-{rows}.png").stat().st_size
    return result


def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["inside"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    ax.plot([e["samples"] for e in entries], [e["VmRSS"] / 1024 for e in entries], lw=1, label="VmRSS")
    ax.plot([e["samples"] for e in entries], [e["VmHWM"] / 1024 for e in entries], lw=1, ls="--", label="VmHWM (peak)")
    for s in (10**5, result["meta"]["samples"]):
        ax.axvline(s, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("stream samples")
    ax.set_ylabel("MiB")
    ax.set_title(
        f"RSS against samples: growth 10^5 → {result['meta']['samples']:.0e}: {result['growth'] * 100:+.1f} %",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    outside = result["outside"]
    bx.plot([o["t"] for o in outside], [o["VmRSS"] / 1024 for o in outside], lw=1)
    bx.set_xlabel("seconds since the process started (sampled from outside)")
    bx.set_ylabel("VmRSS, MiB")
    bx.set_title(f"whole process, {result['wall_seconds']:.0f} s, {result['generations']} generations", fontsize=10)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10**6)
    parser.add_argument("--window", type=int, default=50, help="boundary.batches")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint.every_batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the run (slower; to name what grows)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the run is killed")
    parser.add_argument(
        "--heatmap-rows",
        type=int,
        nargs="*",
        default=[5, 625, 2000],
        help="also time report.heatmap alone for these row counts",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="diagnosis only: without the MLflow tracker")
    parser.add_argument(
        "--env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the run (e.g. glibc malloc tunables)",
    )
    parser.add_argument("--name", default="memory")
    args = parser.parse_args()
    command = ("OMP_NUM_THREADS=1 python bench/memory.py " + " ".join(sys.argv[1:])).strip()
    commit_at_start, source_at_start = git_commit(), source_fingerprint()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        train, test, data = write_stream(tmp, args.samples, args.seed)
        toml = pipeline_toml(tmp, train, test, args)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
            **dict(item.split("=", 1) for item in args.env),
        }
        outside: list[dict] = []
        start = time.monotonic()
        mono_start = start
        with open(tmp / "out.txt", "w") as out, open(tmp / "err.txt", "w") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lifelong.cli",
                    "--plugin",
                    "bench_probes",
                    "run",
                    str(toml),
                    "--summary",
                    str(tmp / "summary.json"),
                ],
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                v = vm(proc.pid)
                if v:
                    outside.append({"t": time.monotonic() - start, **v})
                done.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
            done.set()
            sampler.join(timeout=10)
        wall = time.monotonic() - start
        stderr = (tmp / "err.txt").read_text()
        if rc != 0:
            print(stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"the run {'timed out' if rc is None else f'exited {rc}'} after {wall:.0f} s")
        summary = json.loads((tmp / "summary.json").read_text())
        lines = [json.loads(line) for line in (tmp / "rss.jsonl").read_text().splitlines()]
        entries = [e for e in lines if "samples" in e]
        end_entry = next((e for e in lines if e.get("end")), None)
        ckpts = sorted((tmp / "ckpt").glob("ckpt-*"))
        newest_state = (ckpts[-1] / "state.json").stat().st_size if ckpts else None
        newest_tensors = (ckpts[-1] / "tensors.safetensors").stat().st_size if ckpts else None
        db_bytes = (tmp / "mlflow.db").stat().st_size if (tmp / "mlflow.db").exists() else 0
        heatmaps = [heatmap_cost(rows, tmp) for rows in args.heatmap_rows] if args.heatmap_rows else []
        mlruns_bytes = (
            sum(f.stat().st_size for f in (tmp / "mlruns").rglob("*") if f.is_file())
            if (tmp / "mlruns").exists()
            else 0
        )

    first, last = at(entries, 10**5), at(entries, args.samples)
    # After training (the last metrics call, at the end of the stream): from the outside samples.
    trained_at = last["mono"] - mono_start if "mono" in last else None
    after = [o for o in outside if trained_at is not None and o["t"] >= trained_at]
    growth = last["VmRSS"] / first["VmRSS"] - 1
    w1, w2 = window(entries, int(0.9 * 10**5), int(1.1 * 10**5)), window(entries, int(0.9 * args.samples), args.samples)
    result: dict[str, Any] = {
        "meta": {
            "command": command,
            "commit": git_commit(),
            "commit_at_start": commit_at_start,
            "source_fingerprint": [source_at_start, source_fingerprint()],
            "cpu_count": os.cpu_count(),
            "omp_threads": env["OMP_NUM_THREADS"],
            "samples": args.samples,
            "window": args.window,
            "checkpoint_every": args.checkpoint_every,
            "trace": args.trace,
            "env": args.env,
            "mlflow": not args.no_mlflow,
            "data": data,
            "load_average_at_end": load_average(),
        },
        "rc": rc,
        "wall_seconds": wall,
        "training_seconds": summary["training_seconds"],
        "samples_per_second": summary["samples_per_second"],
        "samples_seen": summary["samples_seen"],
        "generations": len(summary["generations"]),
        "registered_versions": sum(1 for g in summary["generations"] if g.get("version")),
        "mlflow": {k: v for k, v in summary["trackers"].get("mlflow", {}).items() if k != "message"},
        "errors": summary.get("errors", []),
        "acc": summary["acc"],
        "rss_at_1e5_kib": first["VmRSS"],
        "rss_at_end_kib": last["VmRSS"],
        "samples_at_first_point": first["samples"],
        "samples_at_last_point": last["samples"],
        "growth": growth,
        "rss_window_1e5_median_kib": float(np.median(w1)),
        "rss_window_end_median_kib": float(np.median(w2)),
        "growth_window_medians": float(np.median(w2)) / float(np.median(w1)) - 1,
        "hwm_at_end_kib": last["VmHWM"],
        "rss_after_run_end_kib": end_entry.get("VmRSS") if end_entry else None,
        "rss_outside_max_kib": max(o["VmRSS"] for o in outside) if outside else None,
        "after_training_seconds": wall - trained_at if trained_at is not None else None,
        "after_training_rss_max_kib": max((o["VmRSS"] for o in after), default=None),
        "heatmap_alone": heatmaps,
        "gc_objects": [first.get("gc_objects"), last.get("gc_objects")],
        "census_growth": census_growth(first, last),
        "trace_top": last.get("trace_top"),
        "checkpoint_state_json_bytes_newest": newest_state,
        "checkpoint_tensors_bytes_newest": newest_tensors,
        "mlflow_db_bytes": db_bytes,
        "mlruns_bytes": mlruns_bytes,
        "target": TARGET_GROWTH,
        "met": growth < TARGET_GROWTH,
        "traced_bytes": [first.get("traced_bytes"), last.get("traced_bytes")],
        "trace_total_diff": last.get("trace_total_diff"),
        "trace_count_diff": last.get("trace_count_diff"),
        "rss_anon_kib": [first.get("RssAnon"), last.get("RssAnon")],
        "rss_file_kib": [first.get("RssFile"), last.get("RssFile")],
        "threads": [first.get("Threads"), last.get("Threads")],
        "growth_kib_per_generation": (last["VmRSS"] - first["VmRSS"])
        / max(1, last["generations"] - first["generations"]),
        "inside": [
            {
                k: e.get(k)
                for k in ("t", "step", "samples", "generations", "VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")
            }
            for e in entries
        ],
        "outside": outside,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    figure(result, IMAGES / f"{args.name}.png")
    mib = lambda kib: f"{kib / 1024:.1f} MiB"
    md = [
        f"Bounded memory: one `lifelong run` over {args.samples:,} samples (Split-Digits data tiled into an npz, "
        f"{data['bytes'] / 1e6:.0f} MB; {data['test_rows']} held-out rows), window boundaries every {args.window} batches, "
        f"MLflow tracker {'OFF (diagnosis)' if args.no_mlflow else 'on (sqlite)'}, checkpoints every {args.checkpoint_every} batches and at every generation; "
        f"commit {result['meta']['commit']}"
        + (f" (at the start: {commit_at_start})" if commit_at_start != result["meta"]["commit"] else "")
        + f", lifelong/ + plugins/ sources {result['meta']['source_fingerprint'][0]}"
        + (
            f" → {result['meta']['source_fingerprint'][1]} (**the code changed during the run**)"
            if len(set(result["meta"]["source_fingerprint"])) > 1
            else " (unchanged during the run)"
        )
        + f", {os.cpu_count()} shared CPUs, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
        + (", tracemalloc on" if args.trace else "")
        + (f", environment {' '.join(args.env)}" if args.env else "")
        + ".",
        f"Command: `{command}`",
        "",
        *(
            [
                (
                    "**A diagnosis run: tracemalloc keeps a traceback for every live allocation (and the first snapshot), so "
                    "the RSS figures below include its own memory and are not a measurement of the run; see the allocation "
                    "sites further down.**"
                ),
                "",
            ]
            if args.trace
            else []
        ),
        "| | |",
        "| --- | --- |",
        f"| RSS at 10^5 samples (first log point ≥ 10^5: {first['samples']:,}) | {mib(first['VmRSS'])} |",
        f"| RSS at {args.samples:,} samples | {mib(last['VmRSS'])} |",
        f"| growth | **{growth * 100:+.2f} %** (target < {TARGET_GROWTH * 100:.0f} %: **{'met' if result['met'] else 'missed'}**) |",
        f"| growth of the medians over ±10 % windows (0.9–1.1 × 10^5 vs the last 10 %) | {result['growth_window_medians'] * 100:+.2f} % |",
        (
            f"| growth per generation between the two points | {result['growth_kib_per_generation']:.1f} KiB "
            f"({last['generations'] - first['generations']} generations) |"
        ),
        (
            f"| RssAnon / RssFile at 10^5 → at the end | {mib(first.get('RssAnon', 0))} / {mib(first.get('RssFile', 0))} → "
            f"{mib(last.get('RssAnon', 0))} / {mib(last.get('RssFile', 0))} |"
        ),
        f"| threads at 10^5 / at the end | {first.get('Threads')} / {last.get('Threads')} |",
        (
            f"| peak (VmHWM) at the end of training / max sampled from outside | {mib(last['VmHWM'])} / "
            f"{mib(result['rss_outside_max_kib']) if result['rss_outside_max_kib'] else '–'} |"
        ),
        (
            f"| after training (final evaluation, checkpoint, heatmap, MLflow drain): seconds / RSS max | "
            f"{result['after_training_seconds'] or float('nan'):.0f} s / {mib(result['after_training_rss_max_kib']) if result['after_training_rss_max_kib'] else '–'} |"
        ),
        f"| live gc-tracked objects at 10^5 / at the end | {first.get('gc_objects'):,} / {last.get('gc_objects'):,} |",
        f"| generations (registered versions) | {result['generations']} ({result['registered_versions']}) |",
        (
            f"| wall time of the process / training seconds | {wall:.0f} s / {summary['training_seconds']:.0f} s "
            f"({summary['samples_per_second']:.0f} samples/s) |"
        ),
        f"| MLflow back-pressure wait | {result['mlflow'].get('backpressure_seconds', 0):.1f} s |",
        f"| newest checkpoint: state.json / tensors | {newest_state / 1e3:.0f} kB / {newest_tensors / 1e6:.1f} MB |",
        f"| sqlite store / artifacts on disk | {db_bytes / 1e6:.1f} MB / {mlruns_bytes / 1e6:.0f} MB |",
        "",
        *(
            [
                "`lifelong.report.heatmap` alone (a fresh process, a rows × 5 matrix like this run's; matplotlib imported before the baseline):",
                "",
                "| rows (generations) | seconds | RSS before → peak | PNG |",
                "| --- | --- | --- | --- |",
                *[
                    f"| {h['rows']} | {h['seconds']:.1f} | {mib(h['baseline_kib'])} → {mib(h['peak_kib'])} | {h['png_bytes'] / 1e6:.1f} MB |"
                    if "error" not in h
                    else f"| {h['rows']} | failed: {h['error'].strip().splitlines()[-1]} | | |"
                    for h in heatmaps
                ],
                "",
            ]
            if heatmaps
            else []
        ),
        *(
            [
                (
                    f"tracemalloc: traced Python memory {first.get('traced_bytes', 0) / 2**20:.1f} → {last.get('traced_bytes', 0) / 2**20:.1f} MiB "
                    f"({last.get('trace_total_diff', 0) / 2**20:+.2f} MiB, {last.get('trace_count_diff', 0):+,} blocks); the allocation sites that grew most "
                    "(innermost frames last):"
                ),
                "",
                "| size Δ | blocks Δ | where (last 3 frames) |",
                "| --- | --- | --- |",
                *[
                    f"| {d['size_diff'] / 1024:+.1f} KiB | {d['count_diff']:+,} | "
                    + " ← ".join(where(frames(d["traceback"])))
                    + " |"
                    for d in (last.get("trace_top") or [])[:15]
                ],
                "",
            ]
            if last.get("trace_top")
            else []
        ),
        "Object types that grew most between the two points (gc-tracked objects: type, at 10^5, at the end, difference):",
        "",
        "| type | at 10^5 | at the end | Δ |",
        "| --- | --- | --- | --- |",
        *[f"| {k} | {a:,} | {b:,} | {d:+,} |" for k, a, b, d in result["census_growth"][:10]],
        "",
        f"Load average (1, 5, 15 min) at the end: {result['meta']['load_average_at_end']}.",
        "",
        f"![RSS against samples](../../docs/img/{args.name}.png)",
    ]
    if result["errors"]:
        md += [
            "",
            "Errors reported by the run:",
            "",
            *[f"- {e.splitlines()[-1] if e else e}" for e in result["errors"]],
        ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
