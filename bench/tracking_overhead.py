"""Tracking overhead: training samples/s with the MLflow tracker against without it, in one process.

The same stream trains with ``tracking.trackers = ['mlflow']`` and with ``tracking.trackers = []``,
alternating (so drift on a shared machine hits both alike); the figure is the median over
``--repeats`` of tracked samples/s ÷ untracked samples/s (each run's own ``samples_per_second``:
training time only, evaluation excluded). Four cases: a generation every 200 and every 50 batches
(a ``window`` boundary), into a local sqlite store and into an ``mlflow server`` on 127.0.0.1.
Target: ≥ 0.95 in every case. Against the server, the server's own CPU seconds during each tracked
run are read from /proc (its process group) and set beside the run's training seconds: on a
machine of 2 vCPUs, the server shares them with training.

Stream: Permuted-Digits (domain-IL, ``--experiences`` permutations of 1,347 training images, ~42
batches each), the default model and strategies (MLP [256, 256], Adam, batch 32, replay + EWC),
one epoch. Every tracked run must end complete (every generation registered, the run FINISHED).

    OMP_NUM_THREADS=1 python bench/tracking_overhead.py [--repeats 3] [--experiences 48]

Writes bench/results/tracking_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fixtures.mlflow_server: the same server the tests use

from lifelong import config, pipeline
from lifelong.host import PluginHost
from common import git_commit, provenance, source_fingerprint  # noqa: E402
from tests.fixtures.mlflow_server import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.95
EVERY = (200, 50)


def one_run(host: PluginHost, tmp: Path, uri: str | None, every: int, experiences: int) -> dict[str, Any]:
    overrides = [
        "learner.progress=false",
        "stream.reader='permuted-digits'",
        "stream.scenario='domain'",
        f"stream.experiences={experiences}",
        "learner.epochs=1",
        "boundary.detector='window'",
        f"boundary.batches={every}",
        "tracking.mlflow.drain_seconds=600",
    ]
    if uri is None:
        overrides.append("tracking.trackers=[]")
    else:
        overrides += ["tracking.trackers=['mlflow']", f"tracking.mlflow.tracking_uri='{uri}'"]
    plan = pipeline.build(host, config.load(None, overrides), tmp / "dead.jsonl")
    started = time.perf_counter()
    summary = pipeline.Runner(plan).execute()
    result = {
        "samples_per_second": summary["samples_per_second"],
        "training_seconds": summary["training_seconds"],
        "wall_seconds": time.perf_counter() - started,
        "generations": len(summary["generations"]),
    }
    if uri is not None:
        tracked = summary["trackers"]["mlflow"]
        if not tracked["complete"]:
            raise RuntimeError(f"the tracked run did not record everything: {tracked['message']}")
        result["log_seconds_p50"] = statistics.median(plan.trackers["mlflow"].log_seconds or [float("nan")])
    return result


def group_cpu_seconds(group: int) -> float:
    """User + system CPU seconds of every live process in process group ``group`` (and of its reaped
    children), from /proc: the ``mlflow server``'s own work, which the writer's nice does not cover."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group:  # pgrp; utime, stime, cutime, cstime follow at 11-14
            total += sum(int(v) for v in fields[11:15])
    return total / ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--experiences", type=int, default=48)
    parser.add_argument("--stores", default="sqlite,server", help="which stores: sqlite, server or both")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    commit, source = git_commit(), source_fingerprint()
    host = PluginHost()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tracking-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)  # MLflow's default artifact root (./mlruns) lands in the temporary directory
        for store in args.stores.split(","):
            server = None
            if store == "server":
                (tmp / "server").mkdir()
                server = ServerProcess(tmp / "server")
                uri = server.start()
            else:
                uri = "sqlite:///" + str(tmp / "mlflow.db")
            try:
                one_run(host, tmp, uri, 200, 2)  # warm: the store's schema, the experiment, imports
                for every in EVERY:
                    runs: dict[str, list[dict[str, Any]]] = {"none": [], "mlflow": []}
                    for _ in range(args.repeats):
                        runs["none"].append(one_run(host, tmp, None, every, args.experiences))
                        before = group_cpu_seconds(server.process.pid) if server else 0.0
                        runs["mlflow"].append(one_run(host, tmp, uri, every, args.experiences))
                        if server:
                            runs["mlflow"][-1]["server_cpu_seconds"] = group_cpu_seconds(server.process.pid) - before
                    ratios = [t["samples_per_second"] / u["samples_per_second"] for t, u in zip(runs["mlflow"], runs["none"])]
                    row = {
                        "store": "mlflow server (127.0.0.1)" if server else "sqlite file",
                        "generation_every_batches": every,
                        "generations": runs["mlflow"][0]["generations"],
                        "untracked_samples_per_second": statistics.median(r["samples_per_second"] for r in runs["none"]),
                        "tracked_samples_per_second": statistics.median(r["samples_per_second"] for r in runs["mlflow"]),
                        "ratio_median": statistics.median(ratios),
                        "ratio_min": min(ratios),
                        "ratio_max": max(ratios),
                        "training_seconds_untracked": statistics.median(r["training_seconds"] for r in runs["none"]),
                        "wall_seconds_tracked": statistics.median(r["wall_seconds"] for r in runs["mlflow"]),
                        "log_register_seconds_p50": statistics.median(r["log_seconds_p50"] for r in runs["mlflow"]),
                        "training_seconds_tracked": statistics.median(r["training_seconds"] for r in runs["mlflow"]),
                        "server_cpu_seconds_per_run": statistics.median(r["server_cpu_seconds"] for r in runs["mlflow"]) if server else None,
                        "target": TARGET,
                    }
                    row["met"] = row["ratio_median"] >= TARGET
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if server is not None:
                    server.stop()
    command = "OMP_NUM_THREADS=1 python bench/tracking_overhead.py " + " ".join(sys.argv[1:])
    meta = {
        "command": command.strip(),
        "torch": torch.__version__,
        "mlflow": __import__("mlflow").__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "stream": f"permuted-digits, {args.experiences} experiences, 1 epoch; mlp [256, 256], adam, batch 32, replay + ewc",
        "repeats": args.repeats,
        "load_average_at_end": os.getloadavg(),
        "provenance": provenance(command.strip(), commit, source),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracking_overhead.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        (
            f"Tracking overhead ({meta['stream']}): tracked ÷ untracked training samples/s, median of "
            f"{args.repeats} alternating runs; {meta['cpu_count']} CPUs, OMP_NUM_THREADS={meta['omp_num_threads']}."
        ),
        f"Command: `{meta['command']}`; commit {commit}, lifelong/ + plugins/ sources "
        f"{'unchanged' if not meta['provenance']['code_changed_during_run'] else 'CHANGED'} during the run.",
        "",
        (
            "| store | generation every | generations | untracked samples/s | tracked samples/s | ratio (min–max) | "
            "log+register s/gen (writer process) | server CPU s / training s of a tracked run | target ≥ 0.95 |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        server = "-" if r["server_cpu_seconds_per_run"] is None else f"{r['server_cpu_seconds_per_run']:.1f} / {r['training_seconds_tracked']:.1f}"
        lines.append(
            f"| {r['store']} | {r['generation_every_batches']} batches | {r['generations']} | "
            f"{r['untracked_samples_per_second']:.0f} | {r['tracked_samples_per_second']:.0f} | "
            f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {r['log_register_seconds_p50']:.3f} | "
            f"{server} | {'met' if r['met'] else 'missed'} |"
        )
    (RESULTS / "tracking_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
