"""Transfer benchmark: a pretrained EfficientNet-Lite0 against a CNN from scratch on Fashion-MNIST (CPU).

One command (about 20 minutes on one core of the shared 2-core machine)::

    OMP_NUM_THREADS=1 python bench/transfer.py            # --quick: 10 and 100 per class only

Parts, every run a real pipeline (``pipeline.build`` → ``Runner``; naive strategy unless said,
no trackers, seed 0, Adam, lr 1e-3, batch 32, backbone lr × 0.1):

1. **Size sweep.** 10, 100 and 1,000 training images per class (all ten classes in one experience,
   100 test images per class from the official test set): the ``cnn`` from scratch, and
   ``efficientnet-lite0`` at 48×48 px under each strategy and ``auto``; test accuracy and wall time
   (build + stream + training + evaluation). Epochs per size: 30, 5, 1 (the same for every method).
2. **Bottleneck caching.** The feature extractor at 100 per class with ``cache = true`` (prepare
   computes the backbone once per image) and ``cache = false`` (every step runs the frozen backbone):
   wall time, and whether the accuracy is the same.
3. **Resolution.** The feature extractor at 100 per class at 32, 48, 64 and 96 px.
4. **Continual.** Split-Fashion-MNIST class-incremental (5 experiences × 2 classes, 200 images per
   class, 3 epochs), replay (200 samples): the cnn from scratch vs the pretrained feature extractor.

Results: bench/results/transfer.json and .md, plot docs/img/transfer.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, save_figure  # noqa: E402

from lifelong import config, pipeline  # noqa: E402
from lifelong.host import PluginHost  # noqa: E402

RESOLUTION = 48
EPOCHS = {10: 30, 100: 5, 1000: 1}  # 1,000 per class: a single pass, as a true stream
METHODS = ["cnn", "feature-extractor", "fine-tune-top", "fine-tune-all", "auto"]
PARTS = ("sizes", "caching", "resolution", "continual")
BASE = [
    "learner.progress=false",
    "tracking.trackers=[]",
    "learner.strategies=['naive']",
    "learner.seed=0",
    "learner.batch_size=32",
    "learner.lr=0.001",
    "learner.optimizer=adam",
    "learner.eval_batch_size=500",
    "stream.reader=split-fashion-mnist",
    "stream.test_per_class=100",
]


def model_overrides(method: str, resolution: int = RESOLUTION) -> list[str]:
    if method == "cnn":
        return ["model.name=cnn"]
    strategy = method
    return ["model.name=efficientnet-lite0", f"model.resolution={resolution}", f"model.strategy={strategy}"]


def execute(overrides: list[str]) -> tuple[dict, float, object]:
    """One pipeline run in this process; returns the summary, the wall time and the runner."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        started = time.perf_counter()
        raw = config.load(None, [*BASE, *overrides])
        plan = pipeline.build(PluginHost(), raw, Path(tmp) / "dead_letters.jsonl")
        runner = pipeline.Runner(plan)
        summary = runner.execute()
        wall = time.perf_counter() - started
    return summary, wall, runner


def row(method: str, per_class: int, summary: dict, wall: float, runner, **extra) -> dict:
    model = runner.model
    result = {
        "method": method,
        "per_class": per_class,
        "accuracy": summary["acc"],
        "wall_seconds": round(wall, 2),
        "training_seconds": round(summary["training_seconds"], 2),
        "epochs": summary["trained_samples"] // max(summary["samples_seen"], 1),
        **extra,
    }
    decision = getattr(model, "decision", None)
    if decision is not None:
        result["auto"] = {k: v for k, v in decision.items() if k in ("strategy", "similarity", "probe_backbone", "probe_raw", "samples_per_class")}
    print(json.dumps(result), flush=True)
    return result


def size_sweep(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        for method in METHODS:
            common = ["stream.experiences=1", f"stream.train_per_class={n}", f"learner.epochs={EPOCHS[n]}"]
            summary, wall, runner = execute([*common, *model_overrides(method)])
            rows.append(row(method, n, summary, wall, runner))
    return rows


def caching() -> list[dict]:
    rows, heads = [], []
    for cache in (True, False):
        overrides = ["stream.experiences=1", "stream.train_per_class=100", f"learner.epochs={EPOCHS[100]}",
                     *model_overrides("feature-extractor"), f"model.cache={str(cache).lower()}"]
        summary, wall, runner = execute(overrides)
        heads.append(runner.model.head.linear.weight.detach().clone())
        rows.append(row("feature-extractor", 100, summary, wall, runner, cache=cache))
    # The same math either way; only float rounding of batched convolutions may differ.
    rows[1]["head_max_abs_diff"] = float((heads[0] - heads[1]).abs().max())
    return rows


def resolutions() -> list[dict]:
    rows = []
    for res in (32, 48, 64, 96):
        overrides = ["stream.experiences=1", "stream.train_per_class=100", f"learner.epochs={EPOCHS[100]}",
                     *model_overrides("feature-extractor", res)]
        summary, wall, runner = execute(overrides)
        rows.append(row("feature-extractor", 100, summary, wall, runner, resolution=res))
    return rows


def continual() -> list[dict]:
    rows = []
    for method in ("cnn", "mlp", "feature-extractor"):
        overrides = ["stream.experiences=5", "stream.scenario=class", "stream.train_per_class=200", "learner.epochs=3",
                     "learner.strategies=['replay']", "strategy.replay.memory=200",
                     *(["model.name=mlp"] if method == "mlp" else model_overrides(method))]
        summary, wall, runner = execute(overrides)
        rows.append(row(method, 200, summary, wall, runner, bwt=summary["bwt"], forgetting=summary["forgetting"],
                        matrix=summary["accuracy_matrix"], replay=summary["config"]["strategy"]["replay"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 100 only, no resolution sweep")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset; the others are kept from the last results")
    args = parser.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: run with OMP_NUM_THREADS=1 (the figures in bench/results are one-thread figures)", file=sys.stderr)
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    started = time.perf_counter()
    name = "transfer_quick" if args.quick else "transfer"
    out = ROOT / "bench" / "results"
    results: dict = {}
    if set(parts) != set(PARTS) and (out / f"{name}.json").exists():
        results = json.loads((out / f"{name}.json").read_text())  # re-running some parts keeps the others
        results["rerun"] = {"parts": parts, "load_average_start": load_average()}
    else:
        results["load_average_start"] = load_average()
    results.update({"resolution": RESOLUTION, "epochs": EPOCHS, "threads": torch.get_num_threads()})
    if "sizes" in parts:
        results["sizes"] = size_sweep([10, 100] if args.quick else [10, 100, 1000])
    if "caching" in parts:
        results["caching"] = caching()
    if "resolution" in parts and not args.quick:
        results["resolution_sweep"] = resolutions()
    if "continual" in parts:
        results["continual"] = continual()
    if "rerun" in results:
        results["rerun"].update(load_average_end=load_average(), seconds=round(time.perf_counter() - started, 1))
    else:
        results["load_average_end"] = load_average()
        results["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(report(results))
    plot(results, ROOT / "docs" / "img" / f"{name}.png")
    print(f"done in {time.perf_counter() - started:.0f} s: bench/results/{name}.md")


def _by(rows: list[dict], method: str, n: int) -> dict | None:
    return next((r for r in rows if r["method"] == method and r["per_class"] == n), None)


def report(results: dict) -> str:
    lines = [
        "# Transfer: pretrained EfficientNet-Lite0 vs a CNN from scratch (Fashion-MNIST, CPU)",
        "",
        "`OMP_NUM_THREADS=1 python bench/transfer.py` — one torch thread on the shared 2-core machine "
        f"(load average {results['load_average_start']} at the start, {results['load_average_end']} at the end: "
        "other jobs shared the cores, so wall times carry some noise); "
        f"{results['total_seconds']:.0f} s in all. EfficientNet-Lite0 at {results['resolution']}×{results['resolution']} px, "
        "Adam, lr 1e-3 (backbone × 0.1), batch 32, seed 0, one seed. Test: 100 official test images per class. "
        "Accuracy is on all ten classes (one experience); wall = build + stream + training + evaluation.",
        "",
    ]
    sizes = results.get("sizes", [])
    ns = sorted({r["per_class"] for r in sizes})
    if sizes:
        lines += ["## Accuracy and wall time by training-set size", ""]
        head = "| method | " + " | ".join(f"{n}/class acc | {n}/class wall s" for n in ns) + " |"
        lines += [head, "|" + " --- |" * (1 + 2 * len(ns))]
        for method in METHODS:
            cells = []
            for n in ns:
                r = _by(sizes, method, n)
                pick = f" ({r['auto']['strategy']})" if r and r.get("auto") else ""
                cells += [f"{r['accuracy']:.3f}{pick}" if r else "", f"{r['wall_seconds']:.1f}" if r else ""]
            name = "cnn (from scratch)" if method == "cnn" else f"efficientnet-lite0 {method}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Epochs: " + ", ".join(f"{n}/class: {results['epochs'][str(n)] if str(n) in results['epochs'] else results['epochs'][n]}" for n in ns) + "."]
        autos = [r for r in sizes if r.get("auto")]
        if autos:
            lines += ["", "What auto measured (ridge linear probes, 5-fold, on its warm-up window):", "",
                      "| per class | picked | samples/class (estimate) | probe backbone | probe raw | similarity |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for r in autos:
                a = r["auto"]
                lines.append(f"| {r['per_class']} | {a['strategy']} | {a['samples_per_class']:.0f} | {a['probe_backbone']:.3f} | "
                             f"{a['probe_raw']:.3f} | {a['similarity']:+.3f} |")
        cnn, fe = _by(sizes, "cnn", 10), _by(sizes, "feature-extractor", 10)
        if cnn and fe:
            lines += ["", f"**Goal (10 images per class): the pretrained feature extractor {fe['accuracy']:.3f} vs the CNN from "
                      f"scratch {cnn['accuracy']:.3f}: {100 * (fe['accuracy'] - cnn['accuracy']):+.1f} points.**"]
    if results.get("caching"):
        on = next(r for r in results["caching"] if r["cache"])
        off = next(r for r in results["caching"] if not r["cache"])
        lines += ["", "## Bottleneck caching (feature extractor, 100/class, "
                  f"{on['epochs']} epochs)", "",
                  "| prepare | accuracy | wall s | training s |", "| --- | --- | --- | --- |",
                  f"| cached (backbone once per image) | {on['accuracy']:.3f} | {on['wall_seconds']:.1f} | {on['training_seconds']:.1f} |",
                  f"| not cached (backbone every step) | {off['accuracy']:.3f} | {off['wall_seconds']:.1f} | {off['training_seconds']:.1f} |",
                  "", f"Caching: {off['wall_seconds'] / on['wall_seconds']:.1f}x faster wall time, accuracy "
                  f"{'identical' if on['accuracy'] == off['accuracy'] else 'differs by %.3f' % abs(on['accuracy'] - off['accuracy'])}; "
                  f"largest difference between the two trained heads' weights: {off.get('head_max_abs_diff', float('nan')):.2e}."]
    if results.get("resolution_sweep"):
        lines += ["", "## Resolution (feature extractor, 100/class)", "", "| px | accuracy | wall s |", "| --- | --- | --- |"]
        for r in results["resolution_sweep"]:
            lines.append(f"| {r['resolution']} | {r['accuracy']:.3f} | {r['wall_seconds']:.1f} |")
    if results.get("continual"):
        lines += ["", "## Continual: Split-Fashion-MNIST, class-incremental, replay (200), 200/class, 3 epochs", "",
                  "| model | ACC | BWT | forgetting | wall s |", "| --- | --- | --- | --- | --- |"]
        for r in results["continual"]:
            name = {"cnn": "cnn (from scratch)", "mlp": "mlp [256, 256] (from scratch)"}.get(r["method"], "efficientnet-lite0 feature-extractor")
            lines.append(f"| {name} | {r['accuracy']:.3f} | {r['bwt']:+.3f} | {r['forgetting']:.3f} | {r['wall_seconds']:.1f} |")
        replay = results["continual"][0].get("replay")
        if replay:
            lines += ["", "Replay options (the strategy plugin's defaults when this part ran): "
                      + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in replay.items()) + "."]
            rerun = results.get("rerun")
            if rerun and "continual" in rerun["parts"]:
                lines += [f"This part was re-run on its own ({rerun['seconds']:.0f} s, load average {rerun['load_average_start']})."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results.get("sizes", [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method in METHODS:
        rows = sorted((r for r in sizes if r["method"] == method), key=lambda r: r["per_class"])
        if not rows:
            continue
        label = "cnn (scratch)" if method == "cnn" else method
        style = "--" if method == "cnn" else "-"
        axes[0].plot([r["per_class"] for r in rows], [r["accuracy"] for r in rows], style, marker="o", label=label)
        axes[1].plot([r["per_class"] for r in rows], [r["wall_seconds"] for r in rows], style, marker="o", label=label)
    for ax, title, ylabel in ((axes[0], "test accuracy", "accuracy"), (axes[1], "wall time", "seconds")):
        ax.set_xscale("log")
        ax.set_xlabel("training images per class")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    sweep = results.get("resolution_sweep", [])
    if sweep:
        ax = axes[2]
        ax.plot([r["wall_seconds"] for r in sweep], [r["accuracy"] for r in sweep], marker="o")
        for r in sweep:
            ax.annotate(f"{r['resolution']} px", (r["wall_seconds"], r["accuracy"]), textcoords="offset points", xytext=(4, -10))
        caching = results.get("caching", [])
        for r in caching:
            ax.scatter([r["wall_seconds"]], [r["accuracy"]], marker="s" if r["cache"] else "x", color="black",
                       label=f"48 px, {'cached' if r['cache'] else 'not cached'}")
        ax.set_xlabel("wall seconds")
        ax.set_ylabel("accuracy")
        ax.set_title("feature extractor, 100/class: resolution and caching")
        ax.grid(alpha=0.3)
        if caching:
            ax.legend(fontsize=8)
    else:
        axes[2].axis("off")
    fig.suptitle(f"Fashion-MNIST: EfficientNet-Lite0 ({results['resolution']} px) vs CNN from scratch, one CPU thread")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
