"""Pipeline overhead: `lifelong run` training throughput against a hand-written PyTorch loop.

Both train the same MLP with the same optimizer on the same Permuted-Digits batches; the ratio
(pipeline samples/s ÷ loop samples/s, measured in the same process, alternating, median of
``--repeats``) is what is reported, since absolute figures on a shared machine are noise.
The pipeline's figure is its own ``samples_per_second`` (training time only, evaluation excluded).

Clock: on the CPU both sides are timed in this process's CPU time (``--clock process``, the
default there, as in ``bench/strategy_throughput.py``): on a shared machine wall time measures the
other jobs too (9 wall-clock repeats gave ratios from 0.69 to 1.10). CPU time counts the pipeline's
helper threads against it. On a GPU the clock is wall time.

    python bench/pipeline_overhead.py [--device cpu|cuda] [--repeats 5] [--clock process|wall]

Writes bench/results/pipeline_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lifelong import config, pipeline
from lifelong.host import PluginHost
from lifelong.learner import build_optimizer
from common import CLOCKS, git_commit, load_average, use_clock

RESULTS = Path(__file__).resolve().parent / "results"
clock = time.perf_counter  # the hand loop's clock: the pipeline's too, once main() chose it (common.use_clock)
TARGET = 0.9


def pipeline_run(host: PluginHost, batch_size: int, device: str, epochs: int, tmp: Path) -> tuple[float, pipeline.Plan]:
    raw = config.load(
        None,
        [
            "stream.reader='permuted-digits'",
            "stream.scenario='domain'",
            "learner.strategies=['naive']",
            f"learner.batch_size={batch_size}",
            f"learner.epochs={epochs}",
            f"learner.device='{device}'",
            "learner.progress=false",
            "learner.log_every=50",
            "tracking.trackers=[]",
        ],
    )
    plan = pipeline.build(host, raw, tmp / "dead.jsonl")
    runner = pipeline.Runner(plan)
    summary = runner.execute()
    return summary["samples_per_second"], plan  # every epoch's samples, like the hand loop below


def hand_loop(plan: pipeline.Plan, device: torch.device, epochs: int) -> float:
    """The same math with nothing around it: forward, cross-entropy, backward, step."""
    torch.manual_seed(0)
    model = type(plan.model)(
        __import__("lifelong_models").MLPOptions(**plan.model_spec.options), plan.info
    ).to(device)
    lo = plan.learner
    optimizer = build_optimizer(lo.optimizer, list(model.parameters()), lo.lr, lo.momentum, lo.weight_decay)
    batches = list(plan.reader)
    samples = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(epochs):
        for batch in batches:
            x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples / (clock() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clock", choices=list(CLOCKS), default=None, help="default: process on cpu, wall on cuda")
    args = parser.parse_args()
    args.clock = args.clock or ("process" if args.device == "cpu" else "wall")
    global clock
    clock = use_clock(args.clock)
    import tempfile

    host = PluginHost()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in (32, 256):
            pipe, loop = [], []
            for _ in range(args.repeats):
                sps, plan = pipeline_run(host, batch_size, args.device, args.epochs, Path(tmp))
                pipe.append(sps)
                loop.append(hand_loop(plan, plan.device, args.epochs))
            ratios = [p / l for p, l in zip(pipe, loop)]
            rows.append(
                {
                    "strategy": "naive",
                    "batch_size": batch_size,
                    "pipeline_samples_per_second": statistics.median(pipe),
                    "loop_samples_per_second": statistics.median(loop),
                    "ratio_median": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "target": TARGET,
                    "met": statistics.median(ratios) >= TARGET,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + "python bench/pipeline_overhead.py " + " ".join(sys.argv[1:])
    meta = {
        "command": command.strip(),
        "device": str(plan.device),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "model": "mlp [256, 256], adam, permuted-digits domain-IL (5 x 1347 samples)",
        "epochs": args.epochs,
        "repeats": args.repeats,
        "clock": args.clock,
        "commit": git_commit(),
        "load_average": load_average(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    (RESULTS / f"pipeline_overhead{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"Pipeline overhead on {meta['device']} ({meta['model']}), median of {args.repeats} alternating runs, "
        f"timed in {'process CPU' if args.clock == 'process' else 'wall-clock'} time; commit {meta['commit']}, "
        f"load average {meta['load_average']} at the end.",
        f"Command: `{meta['command']}`",
        "",
        "| strategy | batch | pipeline samples/s | hand loop samples/s | ratio (min–max) | target ≥ 0.9 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['batch_size']} | {r['pipeline_samples_per_second']:.0f} | "
            f"{r['loop_samples_per_second']:.0f} | {r['ratio_median']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | "
            f"{'met' if r['met'] else 'missed'} |"
        )
    (RESULTS / f"pipeline_overhead{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
