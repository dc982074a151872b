"""Feature scaling on real tabular data: scikit-learn's breast-cancer set through the csv reader,
with ``stream.normalize = "none"`` and ``"standard"``.

The 569 rows (30 features whose scales differ by up to 10^5: ``mean area`` ~ 650, ``mean
smoothness`` ~ 0.1) are shuffled with each seed, the first 80 % written to ``train.csv`` and the
rest to ``test.csv`` (the header is scikit-learn's feature names, the label column ``label``).
Each run is ``lifelong run`` as a user starts it (a subprocess, the default pipeline with the csv
reader: MLP [256, 256], Adam lr 1e-3, batch 32, replay + EWC, 5 epochs; one experience, so one
generation), and the figure is its held-out accuracy (``acc``) and the prequential accuracy of the
first pass. ``--epochs 1`` is the streaming setting: each row is seen once.

    python bench/normalize.py [--seeds 5] [--epochs 5]

Writes bench/results/normalize.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import git_commit, load_average

RESULTS = Path(__file__).parent / "results"


def write_csv(directory: Path, seed: int) -> tuple[Path, Path]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x, y = data.data[order], data.target[order]
    cut = int(0.8 * len(y))
    paths = []
    for name, rows, labels in (("train.csv", x[:cut], y[:cut]), ("test.csv", x[cut:], y[cut:])):
        lines = [",".join([*data.feature_names, "label"])]
        lines += [",".join([*(repr(float(v)) for v in row), str(int(label))]) for row, label in zip(rows, labels)]
        (directory / name).write_text("\n".join(lines) + "\n")
        paths.append(directory / name)
    return paths[0], paths[1]


def run(directory: Path, train: Path, test: Path, normalize: str, seed: int, epochs: int) -> dict:
    summary = directory / f"summary-{normalize}.json"
    settings = [
        "stream.reader='csv'",
        f"stream.path='{train}'",
        f"stream.test_path='{test}'",
        f"stream.normalize='{normalize}'",
        f"learner.seed={seed}",
        f"learner.epochs={epochs}",
        "learner.progress=false",
        "tracking.trackers=[]",
    ]
    command = [sys.executable, "-m", "lifelong.cli", "run", *[a for s in settings for a in ("--set", s)], "--summary", str(summary)]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(done.stderr)
    result = json.loads(summary.read_text())
    return {"acc": result["acc"], "prequential_accuracy": result["prequential_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="lifelong-normalize-") as tmp:
            directory = Path(tmp)
            train, test = write_csv(directory, seed)
            for normalize in ("none", "standard"):
                rows.append({"seed": seed, "normalize": normalize, **run(directory, train, test, normalize, seed, args.epochs)})
                print(rows[-1], flush=True)
    table = {}
    for normalize in ("none", "standard"):
        accs = [r["acc"] for r in rows if r["normalize"] == normalize]
        preqs = [r["prequential_accuracy"] for r in rows if r["normalize"] == normalize]
        table[normalize] = {
            "acc_mean": statistics.mean(accs),
            "acc_min": min(accs),
            "acc_max": max(accs),
            "prequential_mean": statistics.mean(preqs),
        }
    suffix = "" if args.epochs == 5 else f"_epochs{args.epochs}"
    out = {"epochs": args.epochs, "seeds": args.seeds, "runs": rows, "table": table, "commit": git_commit(), "load": load_average()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"normalize{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        (
            f"Breast cancer (scikit-learn), csv reader, default pipeline, {args.epochs} epoch(s), {args.seeds} seeds "
            f"(commit {out['commit']}):"
        ),
        "",
        "| normalize | held-out acc (mean) | min | max | prequential (mean) |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {k} | {v['acc_mean']:.3f} | {v['acc_min']:.3f} | {v['acc_max']:.3f} | {v['prequential_mean']:.3f} |"
            for k, v in table.items()
        ),
    ]
    (RESULTS / f"normalize{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
