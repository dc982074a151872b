"""PathNet, measured the way the paper measures it and against lifelong's other strategies.

Four measurements (Fernando et al. 2017 for the first two; CPU, one torch thread):

1. ``forgetting``: task-incremental Split-Digits and Split-FMNIST through the real pipeline.
   After every later task, each finished task's accuracy must be exactly unchanged and its
   outputs bit-identical (the generation that froze it, rebuilt, against the final model).
2. ``transfer``: the paper's speed-up. Binary task pairs A → B; minibatches (of 16) PathNet needs
   to reach a target training accuracy on B after learning A (and freezing its path), against an
   independent control: the same architecture, options and seed learning B from scratch. The
   ratio control / PathNet over 5 seeds and 3 pairs per data set. Training accuracy is the mean
   pre-update accuracy of the last 20 minibatches (320 samples); a run that never reaches the
   target within the budget counts the budget (censored; reported).
3. ``compare``: the same task-IL benchmarks with pathnet, replay (memory 200), ewc and naive:
   ACC, BWT and the pipeline's samples/s, 3 seeds. PathNet trains its grid with SGD at lr 0.05
   (the paper used SGD); the others use the MLP [256, 256] with Adam at lr 1e-3 (the project's
   defaults). Also class-incremental (no task ids at test time): how often the lowest-entropy rule
   picks the right path, per sample and per batch, and the resulting ACC.
4. ``cost``: the tournament's overhead per minibatch: pathnet (P = 64, T = 10) against the same
   grid training one fixed path (P = 1), alternated, in process CPU time.

    OMP_NUM_THREADS=1 python bench/pathnet.py [--seeds 5] [--parts forgetting transfer compare cost]

Writes bench/results/pathnet.{json,md} and docs/img/pathnet_transfer.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong import config, hookimpl, pipeline
from lifelong.host import PluginHost
from lifelong.learner import Learner
from lifelong import plan as plan_module
from lifelong.components import Components
from lifelong.config import LearnerOptions
from lifelong.run import Run, Session
from lifelong.types import Batch, ModelSpec, StreamInfo
from lifelong_pathnet import PathNet, PathNetOptions
from lifelong_pathnet.grid import GridOptions, build_grid
from common import load_average, save_figure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fixtures.generation_log
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"

PATHNET = [
    "learner.strategies=['pathnet']",
    "learner.optimizer='sgd'",
    "learner.lr=0.05",
    "strategy.pathnet.population=64",
    "strategy.pathnet.tournament_batches=10",
]
BASELINES = {
    "naive": ["learner.strategies=['naive']"],
    "replay 200": ["learner.strategies=['replay']", "strategy.replay.memory=200"],
    "ewc": ["learner.strategies=['ewc']"],
}
# The generation log keeps every generation for the bit-identity check (the kernel keeps none).
COMMON = ["learner.progress=false", "tracking.trackers=['generation-log']", "learner.batch_size=32"]
BENCHMARKS = {
    "split-digits": ["stream.reader='split-digits'", "stream.experiences=5", "learner.epochs=20"],
    "split-fmnist": [
        "stream.reader='split-fashion-mnist'", "stream.experiences=5",
        "stream.train_per_class=1000", "stream.test_per_class=500", "learner.epochs=3",
    ],
}
FMNIST_PAIRS = [((0, 1), (2, 3)), ((5, 7), (9, 8)), ((2, 4), (0, 6))]
DIGIT_PAIRS = [((0, 1), (2, 3)), ((2, 3), (4, 5)), ((6, 7), (8, 9))]


def execute(overrides: list[str]) -> tuple[dict[str, Any], pipeline.Runner]:
    raw = config.load(None, [*COMMON, *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        plan = pipeline.build(PluginHost(plugins=["tests.fixtures.generation_log"]), raw, Path(tmp) / "dead.jsonl")
        runner = pipeline.Runner(plan)
        return runner.execute(), runner


def logits(model: torch.nn.Module, data: Batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(data.x, data.task)


# -- 1. zero forgetting -----------------------------------------------------------------------------
def forgetting(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in BENCHMARKS.items():
        for seed in range(seeds):
            summary, runner = execute([*overrides, *PATHNET, "stream.scenario='task'", f"learner.seed={seed}"])
            matrix = summary["accuracy_matrix"]
            max_change = max(abs(row[i] - matrix[i][i]) for i in range(len(matrix)) for row in matrix[i:])
            identical = []
            for gen in runner.plan.trackers["generation-log"].generations:
                rebuilt = build_grid(GridOptions(**gen.model_spec.options), gen.model_spec.info)
                rebuilt.load_state_dict(gen.state)
                exp = gen.experience.experience_ids[0]
                identical.append(torch.equal(logits(rebuilt, runner.test_sets[exp]), logits(runner.model, runner.test_sets[exp])))
            rows.append({
                "benchmark": name, "seed": seed, "acc": summary["acc"], "bwt": summary["bwt"],
                "max_accuracy_change": max_change, "outputs_bit_identical": all(identical),
                "tasks": len(identical),
            })
            print(f"forgetting {name} seed {seed}: ACC {summary['acc']:.3f} BWT {summary['bwt']:+.4f} "
                  f"max change {max_change} bit-identical {all(identical)}", flush=True)
    return rows


# -- 2. transfer speed-up ---------------------------------------------------------------------------
class AccuracyLog:
    """Pre-update accuracy of every minibatch, kept on the device (read in blocks)."""

    def __init__(self):
        self.values: list[torch.Tensor] = []

    @hookimpl
    def after_step(self, batch, outputs, first_pass):
        self.values.append((outputs.argmax(dim=1) == batch.y).float().mean())


def binary_task(x: np.ndarray, y: np.ndarray, classes: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    keep = np.isin(y, classes)
    return torch.from_numpy(x[keep]), torch.from_numpy((y[keep] == classes[1]).astype(np.int64))


class Trainee:
    """One PathNet (strategy + grid + SGD) driven minibatch by minibatch, outside the pipeline."""

    def __init__(self, seed: int, input_shape: tuple[int, ...], options: PathNetOptions, lr: float):
        torch.manual_seed(seed)
        info = StreamInfo(input_shape=input_shape, num_classes=2, experiences=[0, 1])
        self.strategy = PathNet(options)
        model, spec = self.strategy.wrap_model(model=None, spec=ModelSpec("none", {}, info))
        optimizer = torch.optim.SGD(model.param_groups(lr), lr=lr)
        pm = plan_module._lifecycle_manager({"pathnet": self.strategy}, {})
        self.log = AccuracyLog()
        pm.register(self.log)
        learner = LearnerOptions(strategies=["pathnet"], seed=seed)
        run = Run(model, optimizer, torch.device("cpu"), info, spec, learner, Session("bench"), Components.default(), {})
        pm.hook.on_run_start(run=run)
        self.hooks = pm.hook
        self.model = model
        self.learner = Learner(model, optimizer, pm.hook, torch.device("cpu"))
        self.rng = torch.Generator().manual_seed(seed + 1)

    def train_until(self, x: torch.Tensor, y: torch.Tensor, target: float, budget: int, window: int = 20) -> int:
        """Minibatches of 16 until the mean accuracy of the last ``window`` reaches ``target`` (``budget`` if never)."""
        self.log.values.clear()
        for step in range(1, budget + 1):
            index = torch.randint(len(y), (16,), generator=self.rng)
            self.learner.step(Batch(x=x[index], y=y[index]))
            if target <= 1.0 and step >= window and step % 10 == 0:
                recent = torch.stack(self.log.values[-(window + 9):]).unfold(0, window, 1).mean(dim=1)
                hits = (recent >= target).nonzero()
                if len(hits):
                    return step - (len(recent) - 1 - int(hits[0]))
        return budget

    def end_task(self) -> None:
        self.hooks.on_boundary(experience=None, model=self.model)


def transfer(seeds: int, options: PathNetOptions) -> list[dict[str, Any]]:
    from lifelong_streams.digits import load_digits
    from lifelong_streams.fashion_mnist import load_fashion_mnist

    data = {"digits": (*load_digits(), DIGIT_PAIRS, 0.98)}
    try:
        x, y, n_train = load_fashion_mnist()
        first = np.concatenate([np.flatnonzero(y[:n_train] == c)[:1000] for c in range(10)])
        data["fashion-mnist"] = (x[first], y[first], FMNIST_PAIRS, 0.90)
    except FileNotFoundError:
        print("fashion-mnist not installed: transfer on digits only", file=sys.stderr)
    rows = []
    for name, (x, y, pairs, target) in data.items():
        for a, b in pairs:
            xa, ya = binary_task(x, y, a)
            xb, yb = binary_task(x, y, b)
            for seed in range(seeds):
                learned = Trainee(seed, tuple(x.shape[1:]), options, lr=0.05)
                learned.train_until(xa, ya, target=2.0, budget=BUDGET_A)  # a fixed budget on A
                learned.end_task()
                after_a = learned.train_until(xb, yb, target, BUDGET_B)
                control = Trainee(seed, tuple(x.shape[1:]), options, lr=0.05).train_until(xb, yb, target, BUDGET_B)
                rows.append({
                    "data": name, "a": list(a), "b": list(b), "seed": seed, "target": target,
                    "pathnet_after_a": after_a, "control": control, "speedup": control / after_a,
                    "censored": after_a == BUDGET_B or control == BUDGET_B,
                })
                print(f"transfer {name} {a}->{b} seed {seed}: after A {after_a}, control {control}, "
                      f"speed-up {control / after_a:.2f}", flush=True)
    return rows


BUDGET_A = 500
BUDGET_B = 3000


# -- 3. against replay and EWC ------------------------------------------------------------------------
def inferred(runner: pipeline.Runner, mode: str) -> tuple[float, float]:
    """(share of test samples whose path is picked right, class-IL ACC) with the given inference mode."""
    model = runner.model
    model.options.inference = mode
    model.eval()
    picks, accs = [], []
    for exp, data in runner.test_sets.items():
        with torch.no_grad():
            out, chosen = model.infer(data.x)
        picks.append((chosen == exp).float().mean().item())
        accs.append((out.argmax(dim=1) == data.y).float().mean().item())
    return float(np.mean(picks)), float(np.mean(accs))


def compare(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in BENCHMARKS.items():
        for seed in range(seeds):
            for label, strategy in {"pathnet": PATHNET, **BASELINES}.items():
                for scenario in ("task", "class"):
                    summary, runner = execute([*overrides, *strategy, f"stream.scenario='{scenario}'", f"learner.seed={seed}"])
                    row = {
                        "benchmark": name, "scenario": scenario, "strategy": label, "seed": seed,
                        "acc": summary["acc"], "bwt": summary["bwt"], "samples_per_second": summary["samples_per_second"],
                    }
                    if label == "pathnet" and scenario == "class":
                        for mode in ("sample", "batch"):
                            row[f"picked_{mode}"], row[f"acc_{mode}"] = inferred(runner, mode)
                    rows.append(row)
                    print(f"compare {name} {scenario}-IL {label} seed {seed}: ACC {summary['acc']:.3f} "
                          f"BWT {summary['bwt']:+.3f} {summary['samples_per_second']:.0f} samples/s", flush=True)
    return rows


# -- 4. tournament cost -------------------------------------------------------------------------------
def cost(repeats: int) -> list[dict[str, Any]]:
    base = [*BENCHMARKS["split-digits"], *PATHNET, "stream.scenario='task'", "learner.epochs=10"]
    variants = {"tournament (P 64, T 10)": [], "fixed path (P 1)": ["strategy.pathnet.population=1"]}
    rows = []
    for r in range(repeats):
        for label, extra in variants.items():
            raw = config.load(None, [*COMMON, *base, *extra])
            with tempfile.TemporaryDirectory() as tmp:
                plan = pipeline.build(PluginHost(plugins=["tests.fixtures.generation_log"]), raw, Path(tmp) / "dead.jsonl")
                runner = pipeline.Runner(plan)
                start = time.process_time()
                summary = runner.execute()
                seconds = time.process_time() - start
            rows.append({"variant": label, "repeat": r, "cpu_seconds": seconds, "trained": summary["trained_samples"],
                         "samples_per_cpu_second": summary["trained_samples"] / seconds})
            print(f"cost {label} repeat {r}: {summary['trained_samples'] / seconds:.0f} samples per CPU second", flush=True)
    return rows


# -- report ------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def render(result: dict[str, Any]) -> str:
    lines = ["# PathNet", "", f"`{result['command']}` — {result['machine']}, torch {result['torch']}, "
             f"load average at start {result['load_average']}, {result['minutes']:.1f} min.", ""]
    if result.get("forgetting"):
        lines += ["## Zero forgetting (task-IL)", "",
                  "| benchmark | seeds | ACC | BWT | largest change of a finished task's accuracy | outputs bit-identical |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name in BENCHMARKS:
            rows = [r for r in result["forgetting"] if r["benchmark"] == name]
            if rows:
                lines.append(f"| {name} | {len(rows)} | {mean_std([r['acc'] for r in rows])} | {mean_std([r['bwt'] for r in rows])} | "
                             f"{max(r['max_accuracy_change'] for r in rows)} | {all(r['outputs_bit_identical'] for r in rows)} "
                             f"({sum(r['tasks'] for r in rows)} tasks) |")
        lines.append("")
    if result.get("transfer"):
        lines += ["## Transfer speed-up (the paper's measure)", "",
                  f"T = {result['tournament_batches']}. "
                  f"Minibatches of 16 to reach the target training accuracy on B; A trained for {BUDGET_A} minibatches "
                  f"first; budget {BUDGET_B} (censored runs count the budget). Speed-up = control / PathNet after A.", "",
                  "| data | A → B | target | PathNet after A | control | speed-up (mean ± sd, min–max) | censored |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        groups: dict[tuple, list] = {}
        for r in result["transfer"]:
            groups.setdefault((r["data"], tuple(r["a"]), tuple(r["b"])), []).append(r)
        for (data, a, b), rows in groups.items():
            s = [r["speedup"] for r in rows]
            lines.append(f"| {data} | {a} → {b} | {rows[0]['target']} | {mean_std([r['pathnet_after_a'] for r in rows])} | "
                         f"{mean_std([r['control'] for r in rows])} | {mean_std(s)} ({min(s):.2f}–{max(s):.2f}) | "
                         f"{sum(r['censored'] for r in rows)}/{len(rows)} |")
        for data in sorted({r["data"] for r in result["transfer"]}):
            s = [r["speedup"] for r in result["transfer"] if r["data"] == data]
            g = float(np.exp(np.mean(np.log(s))))
            lines.append(f"| {data} | all pairs | | | | {mean_std(s)}, geometric mean {g:.2f} | |")
        lines += ["", "![speed-up per pair](../../docs/img/pathnet_transfer.png)", ""]
    if result.get("compare"):
        lines += ["## Against replay and EWC", "",
                  "| benchmark | scenario | strategy | ACC | BWT | samples/s |", "| --- | --- | --- | --- | --- | --- |"]
        keys = []
        for r in result["compare"]:
            k = (r["benchmark"], r["scenario"], r["strategy"])
            if k not in keys:
                keys.append(k)
        for k in sorted(keys, key=lambda k: (k[0], k[1] != "task")):
            rows = [r for r in result["compare"] if (r["benchmark"], r["scenario"], r["strategy"]) == k]
            lines.append(f"| {k[0]} | {k[1]}-IL | {k[2]} | {mean_std([r['acc'] for r in rows])} | "
                         f"{mean_std([r['bwt'] for r in rows])} | {statistics.mean(r['samples_per_second'] for r in rows):.0f} |")
        lines += ["", "Task-id inference without task labels (class-IL; PathNet's frozen paths, lowest predictive entropy):", "",
                  "| benchmark | right path, per sample | ACC, per sample | right path, per batch | ACC, per batch |",
                  "| --- | --- | --- | --- | --- |"]
        for name in BENCHMARKS:
            rows = [r for r in result["compare"] if r["benchmark"] == name and "picked_sample" in r]
            if rows:
                lines.append(f"| {name} | {mean_std([r['picked_sample'] for r in rows])} | {mean_std([r['acc_sample'] for r in rows])} | "
                             f"{mean_std([r['picked_batch'] for r in rows])} | {mean_std([r['acc_batch'] for r in rows])} |")
        lines.append("")
    if result.get("cost"):
        lines += ["## Tournament cost", "", "| variant | samples per CPU second (mean ± sd) |", "| --- | --- |"]
        by: dict[str, list[float]] = {}
        for r in result["cost"]:
            by.setdefault(r["variant"], []).append(r["samples_per_cpu_second"])
        for label, values in by.items():
            lines.append(f"| {label} | {mean_std(values)} |")
        t, f = (statistics.mean(v) for v in by.values())
        lines += ["", f"Tournament overhead per minibatch: {100 * (f / t - 1):+.1f} % time (ratio {t / f:.3f} of the fixed path's throughput).", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r['data']}\n{tuple(r['a'])}→{tuple(r['b'])}", []).append(r["speedup"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (label, values) in enumerate(groups.items()):
        ax.scatter([i] * len(values), values, color="tab:blue", alpha=0.7)
        ax.hlines(statistics.mean(values), i - 0.25, i + 0.25, color="tab:red")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up (control / PathNet after A)")
    ax.set_title("PathNet transfer: minibatches to the target accuracy on B (dots: seeds, red: mean)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds for transfer (forgetting and compare use min(seeds, 3))")
    parser.add_argument("--parts", nargs="+", default=["forgetting", "transfer", "compare", "cost"])
    parser.add_argument("--repeats", type=int, default=5, help="alternated repeats of the cost measurement")
    parser.add_argument("--tournament-batches", type=int, default=10, help="T of the transfer experiment (the paper: 50)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 python bench/pathnet.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.system()}, 2 shared cores",
        "torch": torch.__version__,
        "load_average": load_average(),
        "tournament_batches": args.tournament_batches,
    }
    options = PathNetOptions(population=64, tournament_batches=args.tournament_batches)
    if "forgetting" in args.parts:
        result["forgetting"] = forgetting(min(args.seeds, 3))
    if "transfer" in args.parts:
        result["transfer"] = transfer(args.seeds, options)
        if args.tournament_batches == 10:
            plot(result["transfer"], IMAGES / "pathnet_transfer.png")
    if "compare" in args.parts:
        result["compare"] = compare(min(args.seeds, 3))
    if "cost" in args.parts:
        result["cost"] = cost(args.repeats)
    result["minutes"] = (time.perf_counter() - started) / 60
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "pathnet" if set(args.parts) == {"forgetting", "transfer", "compare", "cost"} else "pathnet_" + "_".join(args.parts)
    if args.tournament_batches != 10:
        name += f"_t{args.tournament_batches}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
