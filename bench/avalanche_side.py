"""The Avalanche 0.6.0 half of bench/compare_avalanche.py; runs in .venv-avalanche (bench/avalanche_env.sh).

Self-contained for Avalanche's jobs (numpy, torch and Avalanche only; lifelong is imported only
for lifelong's jobs, below). The driver writes the data once as .npz files in the format of lifelong's ``npz`` reader, so both sides read
the very same arrays:

- ``train.npz``: ``x`` (N, 1, H, W) float32, ``y`` int64, ``experience`` int64, in stream order;
- ``test.npz``: the same arrays for the held-out sets, one per experience;
- ``init.npz``: ``p0 … p5``, the initial weights of lifelong's ``mlp`` model for that seed
  (Flatten → Linear 256 → ReLU → Linear 256 → ReLU → Linear classes), in parameter order.

Jobs are JSON objects, one per line on stdin (``--serve``; Avalanche takes ~20 s to import, so
the driver keeps one process and interleaves its jobs with lifelong's) or one given by ``--job``:

    {"data": DIR, "strategy": "naive" | "ewc" | "replay" | "bare", "seed": 0, "epochs": 1,
     "batch_size": 32, "lr": 0.001, "threads": 1, "lambda": 100.0, "memory": 200}

A job with ``"library": "lifelong"`` runs lifelong instead (installed here without dependencies by
avalanche_env.sh), so the two libraries can also be timed on the same torch build.

Each answer is one JSON line: the accuracy matrix (R[j][i], accuracy on experience i after
training on j), ACC, BWT and training samples/s. Only the ``strategy.train(experience)`` calls are
timed; the accuracy matrix is computed after each call, outside the clock, by a plain argmax loop
(the same as lifelong's), so Avalanche's own evaluation never runs: the strategies get an
EvaluationPlugin with no metrics and no loggers and ``eval_every=-1`` (Avalanche at its fastest).
``bare`` is a hand-written PyTorch loop over the same data (the driver also runs it under its own
torch), the floor of the cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def load(data: Path) -> tuple[list, list, list[np.ndarray]]:
    """Per-experience (x, y) tensors for train and test, and the initial weights."""

    def by_experience(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with np.load(path) as f:
            x, y, exp = f["x"], f["y"], f["experience"]
        ids = list(dict.fromkeys(exp.tolist()))
        return [(torch.from_numpy(x[exp == e]).float(), torch.from_numpy(y[exp == e]).long()) for e in ids]

    with np.load(data / "init.npz") as f:
        init = [f[f"p{i}"] for i in range(len(f.files))]
    return by_experience(data / "train.npz"), by_experience(data / "test.npz"), init


def mlp(in_features: int, init: list[np.ndarray]) -> nn.Module:
    """lifelong's ``mlp`` model (hidden [256, 256], relu), loaded with its initial weights."""
    hidden = [init[0].shape[0], init[2].shape[0]]
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden[0]),
        nn.ReLU(),
        nn.Linear(hidden[0], hidden[1]),
        nn.ReLU(),
        nn.Linear(hidden[1], init[4].shape[0]),
    )
    with torch.no_grad():
        for p, value in zip(model.parameters(), init, strict=True):
            p.copy_(torch.from_numpy(value))
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()) for i in range(0, len(y), batch_size))
    return correct / len(y)


def summarize(matrix: list[list[float]]) -> dict:
    """ACC and BWT (Lopez-Paz & Ranzato 2017) of a full T×T accuracy matrix."""
    t = len(matrix)
    acc = sum(matrix[-1]) / t
    bwt = sum(matrix[-1][i] - matrix[i][i] for i in range(t - 1)) / (t - 1) if t > 1 else 0.0
    return {"acc": acc, "bwt": bwt}


def avalanche_strategy(job: dict, model: nn.Module):
    from avalanche.training import EWC, Naive, Replay
    from avalanche.training.plugins import EvaluationPlugin

    common = dict(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=job["lr"]),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=job["batch_size"],
        train_epochs=job["epochs"],
        eval_mb_size=1024,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),  # no metrics, no loggers: nothing but training
        eval_every=-1,
    )
    if job["strategy"] == "naive":
        return Naive(**common)
    if job["strategy"] == "ewc":
        return EWC(ewc_lambda=job["lambda"], mode="separate", **common)
    if job["strategy"] == "replay":
        # ReplayPlugin's defaults: an ExperienceBalancedBuffer filled at experience end, and
        # batches of train_mb_size new + train_mb_size memory samples from the second experience on
        return Replay(mem_size=job["memory"], **common)
    raise ValueError(f"unknown strategy {job['strategy']!r}")


def lifelong_job(job: dict) -> dict:
    """A lifelong run under this venv's torch, if bench/avalanche_env.sh installed lifelong here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_avalanche import lifelong_run
    from lifelong.host import PluginHost

    global _HOST
    _HOST = _HOST or PluginHost()
    return lifelong_run(_HOST, Path(job["data"]), job)


_HOST = None


def run(job: dict) -> dict:
    torch.set_num_threads(job.get("threads", torch.get_num_threads()))
    if job.get("library") == "lifelong":
        return lifelong_job(job)
    torch.manual_seed(job["seed"])
    np.random.seed(job["seed"])
    train, test, init = load(Path(job["data"]))
    model = mlp(int(np.prod(train[0][0].shape[1:])), init)
    matrix: list[list[float]] = []
    seconds = 0.0
    samples = sum(len(y) for _, y in train) * job["epochs"]

    if job["strategy"] == "bare":
        optimizer = torch.optim.Adam(model.parameters(), lr=job["lr"])
        bs = job["batch_size"]
        for x, y in train:
            start = time.perf_counter()
            model.train()
            for _ in range(job["epochs"]):
                for i in torch.randperm(len(y)).split(bs):
                    loss = F.cross_entropy(model(x[i]), y[i])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            seconds += time.perf_counter() - start
            matrix.append([accuracy(model, tx, ty) for tx, ty in test])
    else:
        from avalanche.benchmarks import tensors_benchmark

        benchmark = tensors_benchmark(
            train_tensors=[[x, y] for x, y in train],
            test_tensors=[[x, y] for x, y in test],
            task_labels=[0] * len(train),
        )
        strategy = avalanche_strategy(job, model)
        for experience in benchmark.train_stream:
            start = time.perf_counter()
            strategy.train(experience)
            seconds += time.perf_counter() - start
            matrix.append([accuracy(model, tx, ty) for tx, ty in test])

    return {
        **{k: job[k] for k in job if k != "data"},
        "library": "avalanche" if job["strategy"] != "bare" else "bare-torch",
        "torch": torch.__version__,
        "accuracy_matrix": matrix,
        **summarize(matrix),
        "training_seconds": seconds,
        "samples_per_second": samples / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--serve", action="store_true", help="answer JSON jobs read line by line from stdin")
    group.add_argument("--job", help="one JSON job")
    args = parser.parse_args()
    import avalanche  # noqa: F401  (import cost paid before the first job, not inside it)

    # answers go to the real stdout, one JSON line each; anything a library prints goes to stderr
    answers, sys.stdout = sys.stdout, sys.stderr
    if args.job:
        answers.write(json.dumps(run(json.loads(args.job))) + "\n")
        return
    try:
        import lifelong  # noqa: F401

        has_lifelong = True
    except ImportError:
        has_lifelong = False
    ready = {"ready": True, "avalanche": avalanche.__version__, "torch": torch.__version__, "lifelong": has_lifelong}
    answers.write(json.dumps(ready) + "\n")
    answers.flush()
    for line in sys.stdin:
        if line.strip():
            answers.write(json.dumps(run(json.loads(line))) + "\n")
            answers.flush()


if __name__ == "__main__":
    main()
