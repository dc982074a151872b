"""Data-parallel training: samples/s of 1 process against 1 and 2 ranks (``lifelong run --nproc``).

Each configuration is a whole ``lifelong run`` (a subprocess, as users run it) on class-incremental
Split-Fashion-MNIST (60,000 training images, one pass), MLP [256, 256], Adam, tracking off (the
tracker runs on rank 0 only, and its cost is measured by bench/tracking_overhead.py). The figure
of a run is its own ``samples_per_second``: every rank's trained samples over rank 0's training
time (evaluation excluded). Runs alternate and repeat; medians are reported.

What is compared, per strategy set:
- ``1 process, batch B``: the baseline;
- ``1 rank, batch B``: the same with the data-parallel machinery (DDP, the per-step agreement);
- ``2 ranks, batch B each``: twice the samples per step; its ratio to the baseline is the speed-up;
- ``1 process, batch 2B``: the same arithmetic as 2 ranks in one process.

The communication (and coordination) share of a rank's step is estimated as
``1 − t(1 process, batch B) / t(rank of 2, batch B)`` per step: what a rank's step costs beyond the
same step alone. On a machine with 2 shared cores two ranks also compete for the CPU, so this share
includes that contention; on one GPU per rank it would not.

    OMP_NUM_THREADS=1 python bench/ddp.py [--repeats 2] [--batch 32] [--device cpu|cuda]

Writes bench/results/ddp.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import git_commit, provenance, source_fingerprint

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = {"naive": ["naive"], "replay+ewc": ["replay", "ewc"]}


def run(strategies: list[str], batch: int, nproc: int | None, device: str, workdir: Path) -> dict:
    summary = workdir / f"summary-{time.monotonic_ns()}.json"
    sets = [
        "stream.reader='split-fashion-mnist'",
        "model.name='mlp'",
        "model.hidden=[256, 256]",
        f"learner.strategies={json.dumps(strategies)}",
        "learner.epochs=1",
        f"learner.batch_size={batch}",
        f"learner.device='{device}'",
        "learner.progress=false",
        "learner.threads=1",
        "tracking.trackers=[]",
    ]
    command = [sys.executable, "-m", "lifelong", "run", "--summary", str(summary)]
    if nproc is not None:
        command += ["--nproc", str(nproc)]
    for value in sets:
        command += ["--set", value]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    data = json.loads(summary.read_text())
    steps = data["trained_samples"] / (batch * (nproc or 1))
    return {
        "samples_per_second": data["samples_per_second"],
        "training_seconds": data["training_seconds"],
        "step_ms": 1000 * data["training_seconds"] / steps,
        "acc": data["acc"],
        "ranks": data["ranks"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    commit, source = git_commit(), source_fingerprint()
    b = args.batch
    configs = {
        f"1 process, batch {b}": (b, None),
        f"1 rank, batch {b}": (b, 1),
        f"2 ranks, batch {b} each": (b, 2),
        f"1 process, batch {2 * b}": (2 * b, None),
    }
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for name, strategies in STRATEGIES.items():
            results[name] = {label: [] for label in configs}
            for repeat in range(args.repeats):
                for label, (batch, nproc) in configs.items():
                    measured = run(strategies, batch, nproc, args.device, Path(tmp))
                    results[name][label].append(measured)
                    print(f"{name} · {label} · repeat {repeat}: {measured['samples_per_second']:.0f} samples/s, "
                          f"{measured['step_ms']:.2f} ms/step, ACC {measured['acc']:.3f}", flush=True)
    table = {}
    for name, runs in results.items():
        median = {label: {k: statistics.median(r[k] for r in rs) for k in ("samples_per_second", "step_ms", "acc")} for label, rs in runs.items()}
        base = median[f"1 process, batch {b}"]
        two = median[f"2 ranks, batch {b} each"]
        table[name] = {
            "median": median,
            "speedup_2_ranks": two["samples_per_second"] / base["samples_per_second"],
            "ddp_1_rank_ratio": median[f"1 rank, batch {b}"]["samples_per_second"] / base["samples_per_second"],
            "communication_share": 1 - base["step_ms"] / two["step_ms"],
        }
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python bench/ddp.py --repeats {args.repeats} --batch {b} --device {args.device}"
    out = {"provenance": provenance(command, commit, source), "runs": results, "table": table}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ddp.json").write_text(json.dumps(out, indent=2))
    lines = [
        "# Data-parallel throughput (bench/ddp.py)",
        "",
        f"`{command}` at commit {out['provenance']['commit']}, torch {out['provenance']['torch']}, "
        f"{out['provenance']['cpu_count']} CPUs, load {out['provenance']['load_average_at_end']}. Split-Fashion-MNIST, one pass, "
        "MLP [256, 256], Adam, tracking off; medians of the repeats.",
        "",
        "| strategies | configuration | samples/s | ms per step | ACC |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, row in table.items():
        for label, m in row["median"].items():
            lines.append(f"| {name} | {label} | {m['samples_per_second']:.0f} | {m['step_ms']:.2f} | {m['acc']:.3f} |")
    lines += ["", "| strategies | 2 ranks ÷ 1 process | 1 rank ÷ 1 process | communication share of a rank's step |", "| --- | ---: | ---: | ---: |"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['speedup_2_ranks']:.2f}× | {row['ddp_1_rank_ratio']:.2f}× | {row['communication_share']:.0%} |")
    (RESULTS / "ddp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
