"""Avalanche's plugins through lifelong (the ``avalanche`` strategy): ACC, BWT and samples/s over 3 seeds.

    bash bench/avalanche_env.sh                                  # once: .venv-avalanche
    OMP_NUM_THREADS=1 .venv-avalanche/bin/python bench/avalanche_adapter.py [--seeds 3] [--quick]

Runs in the Avalanche venv (Avalanche 0.6.0 needs torchvision; lifelong is installed there editable
without dependencies). Each run is the real pipeline in-process (no tracker) with one Avalanche
plugin driven by lifelong's loop through the adapter (plugins/lifelong_avalanche), next to lifelong's
naive lower bound and lifelong's own strategies for the same idea, in two settings where the two
families of plugins have something to show:

- ``permuted-tasks``: Permuted-Digits, task-incremental (one head per permutation), 5 experiences,
  5 epochs: the regularisers (SI, MAS, EWC, RWalk) and distillation (LwF) protect the shared trunk.
- ``split-classes``: Split-Digits, class-incremental, 5 experiences × 2 classes, 5 epochs: only
  methods with a memory (GEM, A-GEM, MIR) do better than naive; LFL is shown too.

One model and optimizer throughout: MLP [256, 256], Adam lr 1e-3, batch 32, CPU, one torch thread.
The plugins' arguments are in ``SETTINGS`` (chosen on seeds 0–3 while writing the tests, not tuned
here). samples/s: the pipeline's training throughput (stream samples × epochs per second of
training, consolidation included, evaluation excluded), median over seeds, on a shared 2-core
machine: indicative only.

Writes bench/results/avalanche_adapter.{json,md} (``--quick``: avalanche_adapter_quick.*, one seed,
1 epoch: a smoke run whose numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lifelong import config, pipeline
from lifelong.host import PluginHost
from common import MLP_ADAM, load_average

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

COMMON = [
    *MLP_ADAM,
    "learner.epochs=5",
    "learner.device='cpu'",
    "learner.progress=false",
    "tracking.trackers=[]",
]


def avalanche(plugin: str, args: str) -> list[str]:
    return ["learner.strategies=['avalanche']", f"strategy.avalanche.plugin='{plugin}'", f"strategy.avalanche.args={{{args}}}"]


SETTINGS: dict[str, dict[str, Any]] = {
    "permuted-tasks": {
        "title": "Permuted-Digits, task-incremental",
        "overrides": ["stream.reader='permuted-digits'", "stream.scenario='task'", "stream.experiences=5"],
        "runs": {
            "naive (lifelong)": ["learner.strategies=['naive']"],
            "SynapticIntelligence si_lambda=100": avalanche("SynapticIntelligence", "si_lambda=100.0"),
            "MAS lambda_reg=1": avalanche("MAS", "lambda_reg=1.0"),
            "EWC ewc_lambda=1000": avalanche("EWC", "ewc_lambda=1000.0"),
            "RWalk ewc_lambda=1": avalanche("RWalk", "ewc_lambda=1.0"),
            "LwF alpha=1, T=2": avalanche("LwF", "alpha=1.0, temperature=2.0"),
            "ewc (lifelong) λ=100": ["learner.strategies=['ewc']"],
            "lwf (lifelong) α=1, T=2": ["learner.strategies=['lwf']"],
        },
    },
    "split-classes": {
        "title": "Split-Digits, class-incremental",
        "overrides": ["stream.reader='split-digits'", "stream.scenario='class'", "stream.experiences=5"],
        "runs": {
            "naive (lifelong)": ["learner.strategies=['naive']"],
            "GEM 100/exp, γ=0.5": avalanche("GEM", "patterns_per_experience=100, memory_strength=0.5"),
            "AGEM 250/exp, sample 256": avalanche("AGEM", "patterns_per_experience=250, sample_size=256"),
            "MIR memory 500, 32 of 100": avalanche("MIR", "batch_size_mem=32, mem_size=500, subsample=100"),
            "LFL lambda_e=1": avalanche("LFL", "lambda_e=1.0"),
            "replay (lifelong) memory 200": ["learner.strategies=['replay']", "strategy.replay.memory=200"],
        },
    },
}


def avalanche_host() -> PluginHost:
    host = PluginHost()
    if "avalanche" not in host.components["strategy"]:  # not installed with its entry point yet
        host = PluginHost(plugins=["lifelong_avalanche"])
    return host


def run_once(host: PluginHost, overrides: list[str], tmp: Path) -> dict[str, Any]:
    plan = pipeline.build(host, config.load(None, overrides), tmp / "dead_letters.jsonl")
    summary = pipeline.Runner(plan).execute()
    return {k: summary[k] for k in ("acc", "bwt", "fwt", "forgetting", "accuracy_matrix", "samples_per_second", "training_seconds", "wall_seconds")}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    torch.set_num_threads(1)
    import avalanche

    host = avalanche_host()
    started = time.perf_counter()
    load_before = load_average()
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    runs: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            spec = SETTINGS[name]
            rows[name], runs[name] = {}, {}
            for label, overrides in spec["runs"].items():
                results = []
                for seed in range(seeds):
                    result = run_once(
                        host,
                        [*COMMON, *spec["overrides"], *overrides, f"learner.seed={seed}", *(["learner.epochs=1"] if args.quick else [])],
                        Path(tmp),
                    )
                    result["seed"] = seed
                    results.append(result)
                    print(
                        f"{name:15s} {label:36s} seed {seed}: acc {result['acc']:.3f} bwt {result['bwt']:+.3f} "
                        f"{result['samples_per_second']:7.0f} samples/s  [{time.perf_counter() - started:.0f} s]",
                        flush=True,
                    )
                runs[name][label] = results
                rows[name][label] = {
                    "acc": spread([r["acc"] for r in results]),
                    "bwt": spread([r["bwt"] for r in results]),
                    "samples_per_second": statistics.median(r["samples_per_second"] for r in results),
                    "overrides": overrides,
                }
    elapsed = time.perf_counter() - started
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/avalanche_adapter.py", *sys.argv[1:]])
    meta = {
        "command": command,
        "seeds": seeds,
        "quick": args.quick,
        "elapsed_seconds": elapsed,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "threads": torch.get_num_threads(),
        "common_overrides": COMMON,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    stem = "avalanche_adapter_quick" if args.quick else "avalanche_adapter"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2))

    lines = [
        f"# Avalanche plugins through lifelong: ACC, BWT, samples/s over {seeds} seed(s)",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv-avalanche/bin/{command}` ({elapsed / 60:.1f} min on {platform.machine()}, "
        f"1 torch thread, torch {torch.__version__}, Avalanche {avalanche.__version__}, cpu; load average "
        f"{meta['load_average_before']} before, {meta['load_average_after']} after: the machine is shared, which slows "
        "the run but does not change the metrics).",
        "",
        "Model: mlp [256, 256], Adam lr 0.001, batch 32, 5 epochs per experience"
        + (" (--quick: 1 epoch)" if args.quick else "")
        + ". Each cell: mean ± sample standard deviation over seeds "
        f"0–{seeds - 1}. Rows named after an Avalanche class are Avalanche 0.6.0 plugins run by lifelong's loop through "
        "the `avalanche` strategy (plugins/lifelong_avalanche), with the constructor arguments shown; rows marked "
        "(lifelong) are lifelong's own strategies. samples/s: training throughput (stream samples × epochs per second "
        "of training, consolidation included, evaluation excluded), median over seeds, on a shared 2-core machine: "
        "indicative only; it includes each plugin's own host synchronisations (SI copies the weights to the CPU every "
        "batch, GEM solves a quadratic program on the CPU).",
        "",
    ]
    for name, spec in SETTINGS.items():
        if name not in rows:
            continue
        lines += [f"## {spec['title']}", "", "Overrides: `" + " ".join(spec["overrides"]) + "`.", ""]
        lines += ["| strategy | ACC | BWT | samples/s |", "| --- | --- | --- | --- |"]
        for label, row in rows[name].items():
            lines.append(f"| {label} | {fmt(row['acc'])} | {fmt(row['bwt'])} | {row['samples_per_second']:.0f} |")
        lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / stem}.md/.json in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
