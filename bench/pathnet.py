"""PathNet, measured the way the paper measures it and against lifelong's other strategies.

Every PathNet run uses PathNet's defaults and the learner's (Adam at lr 1e-3, batch 32, the
built-in pipeline's 5 epochs): only ``strategies = ["pathnet"]`` is set. Parts (CPU, one torch
thread):

1. ``forgetting``: task-incremental Split-Digits and Split-FMNIST (1,000 / 500 images per class)
   through the real pipeline, 3 seeds: each task's accuracy after training it (R[i][i]), ACC, BWT,
   and whether a finished task's outputs stay bit-identical (the generation that froze it, rebuilt,
   against the final model).
2. ``ablation``: why the defaults are what they are: the same runs with the paper's 10 modules
   and no settling, and each change alone.
3. ``transfer``: the paper's speed-up. Binary task pairs A → B; minibatches (of 16) PathNet needs
   to reach a target training accuracy on B after learning A (and freezing its path), against an
   independent control (the same grid, options and seed learning B from scratch), 5 seeds × 3
   pairs per data set; beside it the paper's fine-tuning control (one fixed path trained on A,
   then on B with the same weights and head) and that fixed path learning B from scratch.
   Training accuracy is the mean pre-update accuracy of the last 20 minibatches; a run that never
   reaches the target counts the budget (censored).
4. ``candidates``: the transfer experiment again for each candidate cause of the missing transfer
   (T = 10, loss as fitness, SGD at 0.05, a layer's modules averaged instead of summed, a learned
   scale per module, half the population started from the frozen paths).
5. ``compare``: pathnet against naive, replay (memory 200) and ewc (MLP [256, 256]) in the task-
   and class-incremental scenarios, 3 seeds; in the class-incremental one, how often the task
   classifier and the lowest-entropy rule pick the right path, per sample and per batch.
6. ``cost``: the tournament's overhead per minibatch: P = 64 against one fixed path (P = 1),
   alternated, in process CPU time.

    OMP_NUM_THREADS=1 python bench/pathnet.py [--seeds 5] [--parts forgetting ablation transfer candidates compare cost]

Writes bench/results/pathnet.{json,md} and docs/img/pathnet_transfer.png.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from lifelong import plan as plan_module
from lifelong.components import Components
from lifelong.config import LearnerOptions
from lifelong.host import PluginHost
from lifelong.learner import Learner, build_optimizer, parameter_groups
from lifelong.run import Run, Session
from lifelong.types import Batch, ModelSpec, StreamInfo
from lifelong_pathnet import PathNet, PathNetOptions
from lifelong_pathnet import strategy as pathnet_strategy
from lifelong_pathnet.evolution import mutate, path_modules
from lifelong_pathnet.grid import GridOptions, PathNetModel, build_grid
from common import git_commit, load_average, provenance, save_figure, source_fingerprint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fixtures.generation_log
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"

PATHNET = ["learner.strategies=['pathnet']"]  # nothing else: PathNet's and the learner's defaults
BASELINES = {
    "naive": ["learner.strategies=['naive']"],
    "replay 200": ["learner.strategies=['replay']", "strategy.replay.memory=200"],
    "ewc": ["learner.strategies=['ewc']"],
}
# The built-in pipeline (Adam 1e-3, batch 32, 5 epochs, MLP [256, 256] for the baselines). The
# generation log keeps every generation for the bit-identity check (the kernel keeps none).
COMMON = ["learner.progress=false", "tracking.trackers=['generation-log']"]
BENCHMARKS = {
    "split-digits": ["stream.reader='split-digits'"],
    "split-fmnist": ["stream.reader='split-fashion-mnist'", "stream.train_per_class=1000", "stream.test_per_class=500"],
}
# Why the defaults: the paper's grid (10 modules) and freezing the last winner as it is, then each change.
ABLATION = {
    "paper: 10 modules, no settling": ["strategy.pathnet.modules=10", "strategy.pathnet.settle=0"],
    "modules for every task, no settling": ["strategy.pathnet.settle=0"],
    "10 modules, settling": ["strategy.pathnet.modules=10"],
    "defaults (both)": [],
    "defaults, width 64": ["strategy.pathnet.width=64"],
}
# (A, B, target training accuracy on B). Pullover/coat → T-shirt/shirt reaches about 0.9 within the
# budget; the other Fashion-MNIST pairs reach 0.9 within the first 20-minibatch window, where every
# run would tie, so they are measured at 0.98.
FMNIST_PAIRS = [((0, 1), (2, 3), 0.98), ((5, 7), (9, 8), 0.98), ((2, 4), (0, 6), 0.90)]
MNIST_PAIRS = [((0, 1), (2, 3), 0.98), ((2, 3), (4, 5), 0.98), ((6, 7), (8, 9), 0.98)]
WINDOW = 20  # minibatches whose mean pre-update accuracy is the training accuracy
BUDGET_A = 500
BUDGET_B = 3000


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


def diagonal(summary: dict[str, Any]) -> list[float]:
    """R[i][i]: each task's held-out accuracy right after training it."""
    matrix = summary["accuracy_matrix"]
    return [matrix[i][i] for i in range(len(matrix))]


# -- 1. each task learned, none forgotten -------------------------------------------------------------
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
                "benchmark": name, "seed": seed, "acc": summary["acc"], "bwt": summary["bwt"], "diagonal": diagonal(summary),
                "max_accuracy_change": max_change, "outputs_bit_identical": all(identical), "tasks": len(identical),
                "seconds": summary.get("train_seconds"),
            })
            print(f"forgetting {name} seed {seed}: R[i][i] {[round(d, 3) for d in diagonal(summary)]} ACC {summary['acc']:.3f} "
                  f"BWT {summary['bwt']:+.4f} max change {max_change} bit-identical {all(identical)}", flush=True)
    return rows


# -- 2. why the defaults --------------------------------------------------------------------------------
def ablation(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in BENCHMARKS.items():
        for label, extra in ABLATION.items():
            for seed in range(seeds):
                summary, _ = execute([*overrides, *PATHNET, *extra, "stream.scenario='task'", f"learner.seed={seed}"])
                rows.append({"benchmark": name, "variant": label, "seed": seed, "acc": summary["acc"], "diagonal": diagonal(summary)})
                print(f"ablation {name} {label} seed {seed}: ACC {summary['acc']:.3f} min R[i][i] {min(diagonal(summary)):.3f}", flush=True)
    return rows


# -- 3. transfer speed-up ---------------------------------------------------------------------------
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
    """One PathNet (strategy, grid, the learner's optimizer) driven minibatch by minibatch, outside the pipeline."""

    def __init__(self, seed: int, input_shape: tuple[int, ...], options: PathNetOptions, optimizer: tuple[str, float]):
        torch.manual_seed(seed)
        info = StreamInfo(input_shape=input_shape, num_classes=2, experiences=[0, 1])
        self.strategy = PathNet(options)
        model, spec = self.strategy.wrap_model(model=None, spec=ModelSpec("none", {}, info))
        name, lr = optimizer
        optimizer = build_optimizer(name, parameter_groups(model, lr), lr, 0.0, 0.0)
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

    def train_until(self, x: torch.Tensor, y: torch.Tensor, target: float, budget: int, window: int = WINDOW) -> int:
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


DEFAULT_OPTIMIZER = (LearnerOptions().optimizer, LearnerOptions().lr)


@contextlib.contextmanager
def averaged_modules():
    """Candidate: a layer's output is the mean of its active modules, not their sum (frozen ones cannot dominate)."""
    original = PathNetModel.features

    def features(self, x, path):
        h = x.flatten(1)
        for layer, modules in zip(self.grid, path):
            h = sum(layer[m](h) for m in modules) / len(modules)
        return h

    PathNetModel.features = features
    try:
        yield
    finally:
        PathNetModel.features = original


@contextlib.contextmanager
def seeded_from_frozen(share: float = 0.5):
    """Candidate: ``share`` of each new task's population starts as mutated copies of the frozen paths."""
    original = pathnet_strategy.PathNet._new_tournament

    def new_tournament(self):
        original(self)
        frozen = self.model._frozen_paths
        if frozen:
            tournament = self.tournament
            for i in range(int(len(tournament.population) * share)):
                source = self.model.paths[int(self.rng.integers(len(frozen)))].cpu().numpy()
                tournament.population[i] = mutate(source, self.modules, self.options.rate, self.rng)
            tournament._new_pair()
            self.model.active_path = path_modules(tournament.genotype())

    pathnet_strategy.PathNet._new_tournament = new_tournament
    try:
        yield
    finally:
        pathnet_strategy.PathNet._new_tournament = original


@contextlib.contextmanager
def gated_modules():
    """Candidate: a learned scale per module and task, each new task's starting at 0 on frozen modules
    (1 on the others): a new path starts as if the frozen modules were absent and learns how much
    of them to read, so frozen features cannot slow it down at first."""
    originals = PathNetModel.__init__, PathNetModel.path_logits, PathNetModel.freeze, PathNetModel.reinitialize

    def __init__(self, *args, **kwargs):
        originals[0](self, *args, **kwargs)
        layers, modules = self.frozen.shape
        self.gates = torch.nn.ParameterList(torch.nn.Parameter(torch.ones(layers, modules)) for _ in self.heads)

    def path_logits(self, x, path, task):
        h, gate = x.flatten(1), self.gates[task]
        for layer, (row, modules) in enumerate(zip(self.grid, path)):
            h = sum(gate[layer, m] * row[m](h) for m in modules)
        return self.heads[task](h)

    def freeze(self, genotype, task_ids, classes=None):
        task = self.current
        newly = originals[2](self, genotype, task_ids, classes)
        self.gates[task].requires_grad_(False)
        return [*newly, self.gates[task]]

    def reinitialize(self):
        reset = originals[3](self)
        if self.current < len(self.gates):
            with torch.no_grad():
                self.gates[self.current].copy_((~self.frozen).float())
        return reset

    PathNetModel.__init__, PathNetModel.path_logits, PathNetModel.freeze, PathNetModel.reinitialize = __init__, path_logits, freeze, reinitialize
    try:
        yield
    finally:
        PathNetModel.__init__, PathNetModel.path_logits, PathNetModel.freeze, PathNetModel.reinitialize = originals


CANDIDATES = {
    "T = 10": ({"tournament_batches": 10}, DEFAULT_OPTIMIZER, contextlib.nullcontext),
    "fitness = loss": ({"fitness": "loss"}, DEFAULT_OPTIMIZER, contextlib.nullcontext),
    "SGD at 0.05 (the paper's)": ({}, ("sgd", 0.05), contextlib.nullcontext),
    "modules averaged, not summed": ({}, DEFAULT_OPTIMIZER, averaged_modules),
    "a learned scale per module, 0 on frozen ones at first": ({}, DEFAULT_OPTIMIZER, gated_modules),
    "half the population from frozen paths": ({}, DEFAULT_OPTIMIZER, seeded_from_frozen),
}


def transfer_data() -> dict[str, tuple]:
    """MNIST-5k (the paper's binary MNIST pairs, on the 5,000-image subset) and Fashion-MNIST pairs."""
    from lifelong_streams.fashion_mnist import load_fashion_mnist
    from lifelong_streams.mnist import load_mnist

    data = {"mnist-5k": (*load_mnist(), MNIST_PAIRS)}
    try:
        x, y, n_train = load_fashion_mnist()
        first = np.concatenate([np.flatnonzero(y[:n_train] == c)[:1000] for c in range(10)])
        data["fashion-mnist"] = (x[first], y[first], FMNIST_PAIRS)
    except FileNotFoundError:
        print("fashion-mnist not installed: transfer on MNIST-5k only", file=sys.stderr)
    return data


def transfer(seeds: int, options: PathNetOptions, optimizer: tuple[str, float] = DEFAULT_OPTIMIZER,
             variant: str = "defaults", finetune: bool = True) -> list[dict[str, Any]]:
    rows = []
    for name, (x, y, pairs) in transfer_data().items():
        shape = tuple(x.shape[1:])
        for a, b, target in pairs:
            xa, ya = binary_task(x, y, a)
            xb, yb = binary_task(x, y, b)
            for seed in range(seeds):
                learned = Trainee(seed, shape, options, optimizer)
                learned.train_until(xa, ya, target=2.0, budget=BUDGET_A)  # a fixed budget on A
                learned.end_task()
                after_a = learned.train_until(xb, yb, target, BUDGET_B)
                control = Trainee(seed, shape, options, optimizer).train_until(xb, yb, target, BUDGET_B)
                row = {
                    "variant": variant, "data": name, "a": list(a), "b": list(b), "seed": seed, "target": target,
                    "pathnet_after_a": after_a, "control": control, "speedup": control / after_a,
                    "censored": after_a == BUDGET_B or control == BUDGET_B,
                    "at_first_window": after_a == WINDOW and control == WINDOW,  # a tie that measures nothing
                }
                if finetune:  # the paper's fine-tuning control: one fixed path, A's weights and head go on to B
                    single = dataclasses.replace(options, population=1)
                    tuned = Trainee(seed, shape, single, optimizer)
                    tuned.train_until(xa, ya, target=2.0, budget=BUDGET_A)
                    row["finetune"] = tuned.train_until(xb, yb, target, BUDGET_B)
                    row["finetune_speedup"] = control / row["finetune"]
                    # the same fixed path learning B from scratch: what fine-tuning gains from A alone
                    row["single_path"] = Trainee(seed, shape, single, optimizer).train_until(xb, yb, target, BUDGET_B)
                    row["finetune_vs_single"] = row["single_path"] / row["finetune"]
                rows.append(row)
                print(f"transfer [{variant}] {name} {a}->{b} seed {seed}: after A {after_a}, control {control}, "
                      f"speed-up {control / after_a:.2f}" + (f", fine-tuning {row['finetune_speedup']:.2f}, "
                                                             f"against one path from scratch {row['finetune_vs_single']:.2f}" if finetune else ""), flush=True)
    return rows


def candidates(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for label, (options, optimizer, patch) in CANDIDATES.items():
        with patch():
            rows += transfer(seeds, PathNetOptions(**options), optimizer, variant=label, finetune=False)
    return rows


# -- 5. against replay and EWC ------------------------------------------------------------------------
def inferred(runner: pipeline.Runner, oracle: str, mode: str) -> tuple[float, float]:
    """(share of test samples whose path is picked right, class-IL ACC) with the given oracle and inference mode."""
    model = runner.model
    model.options.oracle, model.options.inference = oracle, mode
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
                        for oracle in ("classifier", "entropy"):
                            for mode in ("sample", "batch"):
                                row[f"picked_{oracle}_{mode}"], row[f"acc_{oracle}_{mode}"] = inferred(runner, oracle, mode)
                    rows.append(row)
                    print(f"compare {name} {scenario}-IL {label} seed {seed}: ACC {summary['acc']:.3f} "
                          f"BWT {summary['bwt']:+.3f} {summary['samples_per_second']:.0f} samples/s", flush=True)
    return rows


# -- 6. tournament cost -------------------------------------------------------------------------------
def cost(repeats: int) -> list[dict[str, Any]]:
    base = [*BENCHMARKS["split-digits"], *PATHNET, "stream.scenario='task'", "learner.epochs=10"]
    variants = {"tournament (P 64, T 50)": [], "fixed path (P 1)": ["strategy.pathnet.population=1"]}
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


def geometric(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def diagonal_columns(rows: list[dict[str, Any]]) -> str:
    """Mean R[i][i] per task and the smallest over seeds and tasks."""
    per_task = np.mean([r["diagonal"] for r in rows], axis=0)
    return f"{' / '.join(f'{v:.3f}' for v in per_task)} | {min(min(r['diagonal']) for r in rows):.3f}"


def render(result: dict[str, Any]) -> str:
    p = result["provenance"]
    lines = ["# PathNet", "", f"`{p['command']}` at commit {p['commit']} — {result['machine']}, torch {p['torch']}, "
             f"load average at start {result['load_average']}, {result['minutes']:.1f} min.", ""]
    if result.get("forgetting"):
        lines += ["## Each task learned, none forgotten (task-IL, defaults)", "",
                  "| benchmark | seeds | R[i][i] per task (mean) | smallest R[i][i] | ACC | BWT | largest change of a finished task's accuracy | outputs bit-identical |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name in BENCHMARKS:
            rows = [r for r in result["forgetting"] if r["benchmark"] == name]
            if rows:
                lines.append(f"| {name} | {len(rows)} | {diagonal_columns(rows)} | {mean_std([r['acc'] for r in rows])} | "
                             f"{mean_std([r['bwt'] for r in rows])} | {max(r['max_accuracy_change'] for r in rows)} | "
                             f"{all(r['outputs_bit_identical'] for r in rows)} ({sum(r['tasks'] for r in rows)} tasks) |")
        lines.append("")
    if result.get("ablation"):
        lines += ["## Why the defaults (task-IL)", "", "| benchmark | variant | R[i][i] per task (mean) | smallest R[i][i] | ACC |",
                  "| --- | --- | --- | --- | --- |"]
        for name in BENCHMARKS:
            for label in ABLATION:
                rows = [r for r in result["ablation"] if r["benchmark"] == name and r["variant"] == label]
                if rows:
                    lines.append(f"| {name} | {label} | {diagonal_columns(rows)} | {mean_std([r['acc'] for r in rows])} |")
        lines.append("")
    if result.get("transfer"):
        lines += ["## Transfer speed-up (the paper's measure, defaults)", "",
                  f"Minibatches of 16 to reach the target training accuracy on B; A trained for {BUDGET_A} minibatches "
                  f"first; budget {BUDGET_B} (censored runs count the budget). Speed-up = control / PathNet after A; "
                  "fine-tuning speed-up = control / one fixed path trained on A, then on B; fine-tuning against one path = "
                  "the same fixed path learning B from scratch / fine-tuning (what A's weights alone are worth).", "",
                  "| data | A → B | target | PathNet after A | control | speed-up (mean ± sd, min–max) | fine-tuning | one path from scratch | "
                  "fine-tuning speed-up | fine-tuning against one path | censored | both at the first window |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        groups: dict[tuple, list] = {}
        for r in result["transfer"]:
            groups.setdefault((r["data"], tuple(r["a"]), tuple(r["b"])), []).append(r)
        for (data, a, b), rows in groups.items():
            s = [r["speedup"] for r in rows]
            lines.append(f"| {data} | {a} → {b} | {rows[0]['target']} | {mean_std([r['pathnet_after_a'] for r in rows])} | "
                         f"{mean_std([r['control'] for r in rows])} | {mean_std(s)} ({min(s):.2f}–{max(s):.2f}) | "
                         f"{mean_std([r['finetune'] for r in rows])} | {mean_std([r['single_path'] for r in rows])} | "
                         f"{mean_std([r['finetune_speedup'] for r in rows])} | {mean_std([r['finetune_vs_single'] for r in rows])} | "
                         f"{sum(r['censored'] for r in rows)}/{len(rows)} | {sum(r['at_first_window'] for r in rows)}/{len(rows)} |")
        for data in sorted({r["data"] for r in result["transfer"]}):
            rows = [r for r in result["transfer"] if r["data"] == data]
            s, f = [r["speedup"] for r in rows], [r["finetune_speedup"] for r in rows]
            one = [r["finetune_vs_single"] for r in rows]
            lines.append(f"| {data} | all pairs | | | | geometric mean {geometric(s):.2f} ({mean_std(s)}) | | | "
                         f"geometric mean {geometric(f):.2f} | geometric mean {geometric(one):.2f} | | |")
        lines += ["", "![speed-up per pair](../../docs/img/pathnet_transfer.png)", ""]
    if result.get("candidates"):
        lines += ["## Candidate causes of the missing transfer", "",
                  "| variant | mnist-5k: geometric mean (min–max) | fashion-mnist: geometric mean (min–max) |", "| --- | --- | --- |"]
        variants = {"defaults": result.get("transfer", [])}
        for r in result["candidates"]:
            variants.setdefault(r["variant"], []).append(r)
        for label, rows in variants.items():
            cells = []
            for data in ("mnist-5k", "fashion-mnist"):
                s = [r["speedup"] for r in rows if r["data"] == data]
                cells.append(f"{geometric(s):.2f} ({min(s):.2f}–{max(s):.2f})" if s else "n/a")
            lines.append(f"| {label} | {' | '.join(cells)} |")
        lines.append("")
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
        lines += ["", "Task-free inference (class-IL): the share of test samples whose path is picked right, and the ACC it gives:", "",
                  "| benchmark | oracle | right path, per sample | ACC, per sample | right path, per batch | ACC, per batch |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name in BENCHMARKS:
            rows = [r for r in result["compare"] if r["benchmark"] == name and "picked_classifier_sample" in r]
            for oracle in ("classifier", "entropy"):
                if rows:
                    lines.append(f"| {name} | {oracle} | {mean_std([r[f'picked_{oracle}_sample'] for r in rows])} | "
                                 f"{mean_std([r[f'acc_{oracle}_sample'] for r in rows])} | {mean_std([r[f'picked_{oracle}_batch'] for r in rows])} | "
                                 f"{mean_std([r[f'acc_{oracle}_batch'] for r in rows])} |")
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

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['data']}\n{tuple(r['a'])}→{tuple(r['b'])}", []).append(r)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for i, (label, members) in enumerate(groups.items()):
        for offset, key, color, name in ((-0.22, "speedup", "tab:blue", "PathNet after A / control"),
                                         (0.0, "finetune_speedup", "tab:orange", "fine-tuning / control"),
                                         (0.22, "finetune_vs_single", "tab:green", "fine-tuning / one path from scratch")):
            values = [r[key] for r in members]
            ax.scatter([i + offset] * len(values), values, color=color, alpha=0.7, s=18, label=name if i == 0 else None)
            ax.hlines(geometric(values), i + offset - 0.1, i + offset + 0.1, color=color)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.axhline(1.18, color="tab:red", linestyle=":", linewidth=1, label="the paper's 1.18")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up (minibatches from scratch / after A)")
    ax.set_title("Transfer: minibatches to the target accuracy on B (dots: seeds, bars: geometric means)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


PARTS = ["forgetting", "ablation", "transfer", "candidates", "compare", "cost"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds for transfer (the pipeline parts use min(seeds, 3))")
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    parser.add_argument("--repeats", type=int, default=5, help="alternated repeats of the cost measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit, source = git_commit(), source_fingerprint()
    started = time.perf_counter()
    command = "OMP_NUM_THREADS=1 python bench/pathnet.py " + " ".join(sys.argv[1:])
    result: dict[str, Any] = {"machine": f"{platform.machine()} {platform.system()}, 2 shared cores", "load_average": load_average()}
    pipeline_seeds = min(args.seeds, 3)
    for part in args.parts:
        if part == "transfer":
            result["transfer"] = transfer(args.seeds, PathNetOptions())
        elif part == "candidates":
            result["candidates"] = candidates(args.seeds)
        elif part == "cost":
            result["cost"] = cost(args.repeats)
        else:
            result[part] = {"forgetting": forgetting, "ablation": ablation, "compare": compare}[part](pipeline_seeds)
    result["minutes"] = (time.perf_counter() - started) / 60
    result["provenance"] = provenance(command, commit, source)  # before the run writes its own files
    if "transfer" in result:
        plot(result["transfer"], IMAGES / "pathnet_transfer.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "pathnet" if set(args.parts) == set(PARTS) else "pathnet_" + "_".join(args.parts)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
