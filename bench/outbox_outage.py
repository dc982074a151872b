"""Outbox outage: a 60 s MLflow outage in the middle of a run, against the same run without one.

An ``mlflow server`` on 127.0.0.1 (tests/fixtures/mlflow_server.py) is killed with SIGKILL to its
process group ``--before`` seconds into training, stays down ``--outage`` seconds, and is started
again on the same port and backend store. Measured:

- **stall**: what each boundary blocks the training thread (the kernel's snapshot to the CPU plus
  the trackers' ``on_metrics`` and ``on_generation``: :class:`generation_stall.Probe`), for the
  boundaries during the outage and for the run without an outage (target: under 20 ms, the same
  as without an outage);
- **drain**: seconds from the server answering again to the outbox holding none of the run's
  entries (the writer process's backoff, at most 5 s, plus sending what queued up), and the most
  entries that waited;
- **throughput**: each run's training samples/s, and whether the run ended complete (every
  generation registered once, the run FINISHED).

Stream: Permuted-Digits (domain-IL), a generation every 50 batches, the default model and
strategies, one epoch; each step is followed by a ``--pause`` (a slower model) so training lasts
through the outage and the restart.

    OMP_NUM_THREADS=1 python bench/outbox_outage.py [--outage 60] [--before 10] [--pause 0.03]

Writes bench/results/outbox_outage.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generation_stall import TARGET_MS, Probe, percentile
from lifelong_mlflow import outbox

from lifelong import config, pipeline
from lifelong.host import PluginHost
from tests.fixtures.mlflow_server import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(host: PluginHost, tmp: Path, server: ServerProcess, args, outage: bool) -> dict[str, Any]:
    box_root = tmp / f"outbox-{'outage' if outage else 'steady'}"
    overrides = [
        "learner.progress=false",
        "stream.reader='permuted-digits'",
        "stream.scenario='domain'",
        f"stream.experiences={args.experiences}",
        "learner.epochs=1",
        "boundary.detector='window'",
        "boundary.batches=50",
        f"tracking.mlflow.tracking_uri='{server.uri}'",
        f"tracking.mlflow.outbox='{box_root}'",
        "tracking.mlflow.drain_seconds=600",
    ]
    plan = pipeline.build(host, config.load(None, overrides), tmp / "dead.jsonl")
    runner = pipeline.Runner(plan)
    probe = Probe(runner, plan.device)
    step = runner.learner.step

    def paused(*a, **k):
        step(*a, **k)
        time.sleep(args.pause)

    runner.learner.step = paused
    boundaries: list[float] = []  # wall-clock time of each boundary's hooks, to place it in the outage
    on_generation = runner.hooks.on_generation

    def noted(**kwargs):
        boundaries.append(time.time())
        return on_generation(**kwargs)

    runner.hooks.on_generation = noted
    marks: dict[str, float] = {}
    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not probe.steps and not done.is_set():
            time.sleep(0.01)
        started = time.time()
        killed = False
        while not done.is_set():
            waiting = sum(len(b.entries()) for b in outbox.sessions(box_root))
            most[0] = max(most[0], waiting)
            now = time.time()
            if outage and not killed and now - started >= args.before:
                server.kill()
                marks["killed"], killed = now, True
            if outage and killed and "restarting" not in marks and now - marks["killed"] >= args.outage:
                marks["restarting"] = now
                server.start()
                marks["up"] = time.time()
            if "up" in marks and "drained" not in marks and waiting == 0:
                marks["drained"] = time.time()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = runner.execute()
    finally:
        done.set()
        watcher.join(timeout=120)
        probe.close()
    if outage and "drained" not in marks and "up" in marks:
        marks["drained"] = time.time()  # the end's drain finished after the last look
    blocking = [s + h for s, h in zip(probe.snapshot_ms, probe.hooks_ms)]
    if outage:
        window = (marks.get("killed", 0.0), marks.get("up", float("inf")))
        blocking = [ms for at, ms in zip(boundaries, blocking) if window[0] <= at < window[1]]
    tracked = summary["trackers"]["mlflow"]
    return {
        "outage": outage,
        "samples_per_second": summary["samples_per_second"],
        "training_seconds": summary["training_seconds"],
        "generations": len(summary["generations"]),
        "boundaries_measured": len(blocking),
        "blocking_ms_p50": statistics.median(blocking) if blocking else float("nan"),
        "blocking_ms_p90": percentile(blocking, 0.9),
        "blocking_ms_max": max(blocking, default=float("nan")),
        "complete": tracked["complete"],
        "message": tracked["message"],
        "outbox_most_entries": most[0],
        "drain_seconds": marks["drained"] - marks["up"] if outage and "up" in marks else None,
        "restart_seconds": marks["up"] - marks["restarting"] if "up" in marks else None,
        "outage_seconds": marks["restarting"] - marks["killed"] if "restarting" in marks else None,
        "training_ended_before_server_up": bool(outage and "up" in marks and probe.steps[-1][1] < marks["up"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--before", type=float, default=10.0)
    parser.add_argument("--pause", type=float, default=0.03)
    parser.add_argument("--experiences", type=int, default=72)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    host = PluginHost()
    rows = []
    with tempfile.TemporaryDirectory(prefix="outbox-outage-") as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)
        server = ServerProcess(tmp)
        server.start()
        try:
            for outage in (False, True):
                rows.append(one_run(host, tmp, server, args, outage))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.stop()
    command = "OMP_NUM_THREADS=1 python bench/outbox_outage.py " + " ".join(sys.argv[1:])
    meta = {
        "command": command.strip(),
        "torch": torch.__version__,
        "mlflow": __import__("mlflow").__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "stream": f"permuted-digits, {args.experiences} experiences, a generation every 50 batches, "
        f"{args.pause * 1000:.0f} ms pause per step; mlp [256, 256], adam, batch 32, replay + ewc",
        "outage_seconds": args.outage,
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "outbox_outage.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    steady, down = rows
    lines = [
        (
            f"Outbox outage ({meta['stream']}): an `mlflow server` on 127.0.0.1 killed with SIGKILL {args.before:g} s "
            f"into training, down {args.outage:g} s, restarted on the same port and store; {meta['cpu_count']} CPUs."
        ),
        f"Command: `{meta['command']}`",
        "",
        (
            "| run | boundaries | stall p50 / p90 / max ms | target < 20 ms | samples/s | complete | "
            "most entries waiting | restart s | drain after restart s |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in (("no outage", steady), (f"{args.outage:g} s outage (boundaries while down)", down)):
        met = r["blocking_ms_p90"] < TARGET_MS
        drain = "-" if r["drain_seconds"] is None else f"{r['drain_seconds']:.1f}"
        restart = "-" if r["restart_seconds"] is None else f"{r['restart_seconds']:.1f}"
        lines.append(
            f"| {label} | {r['boundaries_measured']} | {r['blocking_ms_p50']:.2f} / {r['blocking_ms_p90']:.2f} / "
            f"{r['blocking_ms_max']:.2f} | {'met' if met else 'missed'} | {r['samples_per_second']:.0f} | "
            f"{r['complete']} | {r['outbox_most_entries']} | {restart} | {drain} |"
        )
    lines += [
        "",
        "Stall: the training thread's time at a boundary beyond evaluation (snapshot + trackers' hooks), judged on",
        "the p90. Drain: from the restarted server answering /health to the outbox holding none of the run's",
        "entries. Samples/s include the per-step pause, so they only compare the two runs.",
    ]
    (RESULTS / "outbox_outage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
