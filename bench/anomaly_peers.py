"""The peers of the anomaly benchmark (issue 10): river's HalfSpaceTrees and pyCLAD 0.3.0.

Pure functions over numpy arrays that return plain dicts (lists and floats, JSON-ready), for
bench/anomaly.py to put side by side with lifelong's detectors:

- :func:`half_space_trees`: river ``HalfSpaceTrees`` behind river's ``MinMaxScaler``, test-then-train
  over one stream (``score_one`` then ``learn_one`` per record): prequential ROC-AUC (exact, by
  scikit-learn, over every score; and river's approximate ``metrics.ROCAUC`` for reference), PR-AUC,
  records/s of score + learn.
- :func:`half_space_trees_concepts`: the same model on a concept-incremental scenario: learn each
  concept's training data, then score every concept's test data.
- :func:`pyclad_concepts`: pyCLAD's Naive / Cumulative / Replay strategies with its autoencoder or
  its pyod IsolationForest adapter, run through pyCLAD's own ``ConceptIncrementalScenario`` with its
  ``ConceptMetricCallback(RocAuc())`` and ``TimeEvaluationCallback``.

A concept is ``(train_x, test_x, test_y)`` (numpy; ``test_y`` 1 = anomaly, 0 = normal); a scenario
is a list of concepts. Matrices are ``R[j][i]``: the metric on concept i's test data after learning
concept j. ``avg_*`` is the mean of the last row and ``bwt_*`` the mean over i < T-1 of
R[T-1][i] − R[i][i] (the definitions of lifelong.metrics.acc / bwt, restated here so this file
imports nothing from lifelong). pyCLAD's own summary metrics (its ContinualAverage is the mean of the lower triangle,
its BackwardTransfer the mean of consecutive differences R[j][i] − R[j-1][i]) come alongside
under ``pyclad_metrics``, as pyCLAD computes them.

Throughput: ``records_per_s`` = (records learned + records scored) / (seconds learning + seconds
scoring). For the concept scenarios "records learned" counts each concept's *new* training
records once, so a strategy that refits on a growing buffer (Cumulative, Replay) pays for it in
records/s, as a stream deployment would. Metric computation and the conversion of numpy rows to
river's dict records are outside the timed region. Time it with ``OMP_NUM_THREADS=1``.

pyCLAD 0.3.0 needs ``pytorch-lightning`` for its autoencoder but does not declare it; install
``pip install pyclad==0.3.0 pytorch-lightning`` (see the report in docs/anomaly.md).

    OMP_NUM_THREADS=1 python bench/anomaly_peers.py            # HST on Shuttle + pyCLAD on digits
    OMP_NUM_THREADS=1 python bench/anomaly_peers.py --quick    # fewer strategies, for a smoke run
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

Concept = tuple[np.ndarray, np.ndarray, np.ndarray]

PYCLAD_STRATEGIES = ("naive", "cumulative", "replay", "replay_only")
PYCLAD_MODELS = ("autoencoder", "iforest")


# ---------------------------------------------------------------------------------------------
# shared helpers


def _rows_as_dicts(x: np.ndarray) -> list[dict[int, float]]:
    """river consumes one dict per record; build them once, outside the timed region."""
    x = np.asarray(x, dtype=np.float64)
    return [dict(enumerate(row)) for row in x.tolist()]


def _roc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s))


def _pr(y: np.ndarray, s: np.ndarray) -> float:
    return float(average_precision_score(y, s))


def _last_row_mean(m: list[list[float]]) -> float:
    """Continual average: the mean of the last row (lifelong.metrics.acc's definition)."""
    return float(np.mean(m[-1]))


def _bwt(m: list[list[float]]) -> float | None:
    """Mean over i < T-1 of R[T-1][i] − R[i][i] (lifelong.metrics.bwt's definition; None for T = 1)."""
    t = len(m)
    return float(np.mean([m[-1][i] - m[i][i] for i in range(t - 1)])) if t > 1 else None


def _summary(roc: list[list[float]], pr: list[list[float]]) -> dict[str, Any]:
    return {
        "roc_auc_matrix": roc,
        "pr_auc_matrix": pr,
        "avg_roc_auc": _last_row_mean(roc),
        "bwt_roc_auc": _bwt(roc),
        "avg_pr_auc": _last_row_mean(pr),
        "bwt_pr_auc": _bwt(pr),
    }


def _check_concepts(concepts: Sequence[Concept]) -> None:
    if not concepts:
        raise ValueError("concepts: empty scenario")
    for k, c in enumerate(concepts):
        if len(c) != 3:
            raise ValueError(f"concepts[{k}]: expected (train_x, test_x, test_y), got {len(c)} items")
        train_x, test_x, test_y = c
        if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
            raise ValueError(f"concepts[{k}]: train_x and test_x must be 2-D with the same feature count")
        if len(np.unique(test_y)) != 2:
            raise ValueError(f"concepts[{k}]: test_y needs both normal (0) and anomalous (1) records for ROC-AUC")


# ---------------------------------------------------------------------------------------------
# river HalfSpaceTrees


def _hst_params(n_trees: int, height: int, window_size: int, seed: int) -> dict[str, Any]:
    return {"n_trees": n_trees, "height": height, "window_size": window_size, "seed": seed, "scaler": "MinMaxScaler"}


def _hst_model(seed: int, n_trees: int, height: int, window_size: int):
    from river import anomaly, compose, preprocessing

    # The canonical river recipe (river's HalfSpaceTrees docs): HST assumes features in [0, 1].
    return compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed),
    )


def half_space_trees(
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 42,
    *,
    n_trees: int = 10,
    height: int = 8,
    window_size: int = 250,
    return_scores: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Prequential (test-then-train) HalfSpaceTrees over the stream ``x`` in order (timed on ``clock``).

    Each record is scored by the model as it stands (``score_one``), then learned (``learn_one``;
    the pipeline's MinMaxScaler learns here too). Returns ``roc_auc`` (scikit-learn, exact, over all
    scores), ``roc_auc_river`` (river's ``metrics.ROCAUC``, 10 thresholds, updated per record as in
    river's docs), ``pr_auc`` (average precision), ``records_per_s`` (score + learn), ``seconds``,
    ``n``; with ``return_scores`` also ``scores`` (list of floats, one per record, for plots).
    river's defaults for n_trees / height / window_size.
    """
    from river import metrics

    y = np.asarray(y).astype(int)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    records = _rows_as_dicts(x)
    model = _hst_model(seed, n_trees, height, window_size)
    scores = np.empty(len(records))
    score_one, learn_one = model.score_one, model.learn_one
    t0 = clock()
    for k, rec in enumerate(records):
        scores[k] = score_one(rec)
        learn_one(rec)
    seconds = clock() - t0

    river_auc = metrics.ROCAUC()
    for yt, s in zip(y.tolist(), scores.tolist()):
        river_auc.update(bool(yt), s)
    out: dict[str, Any] = {
        "peer": "river.HalfSpaceTrees",
        "n": len(records),
        "anomaly_rate": float(y.mean()),
        "roc_auc": _roc(y, scores),
        "roc_auc_river": float(river_auc.get()),
        "pr_auc": _pr(y, scores),
        "seconds": seconds,
        "records_per_s": len(records) / seconds,
        "params": _hst_params(n_trees, height, window_size, seed),
    }
    if return_scores:
        out["scores"] = scores.tolist()
    return out


def half_space_trees_concepts(
    concepts: Sequence[Concept],
    seed: int = 42,
    *,
    n_trees: int = 10,
    height: int = 8,
    window_size: int = 250,
) -> dict[str, Any]:
    """HalfSpaceTrees (+ MinMaxScaler) on a concept-incremental scenario.

    For each concept j in order: ``learn_one`` on every training record of concept j, then
    ``score_one`` (no learning) on the test data of every concept i → R[j][i]. HST keeps only its
    last full window's mass profile as reference, so it forgets by design.
    """
    _check_concepts(concepts)
    model = _hst_model(seed, n_trees, height, window_size)
    trains = [_rows_as_dicts(c[0]) for c in concepts]
    tests = [(_rows_as_dicts(c[1]), np.asarray(c[2]).astype(int)) for c in concepts]
    roc: list[list[float]] = []
    pr: list[list[float]] = []
    learn_s = score_s = 0.0
    n_learned = n_scored = 0
    for train in trains:
        t0 = time.perf_counter()
        for rec in train:
            model.learn_one(rec)
        learn_s += time.perf_counter() - t0
        n_learned += len(train)
        roc.append([])
        pr.append([])
        for test, ty in tests:
            t0 = time.perf_counter()
            s = np.fromiter((model.score_one(rec) for rec in test), dtype=np.float64, count=len(test))
            score_s += time.perf_counter() - t0
            n_scored += len(test)
            roc[-1].append(_roc(ty, s))
            pr[-1].append(_pr(ty, s))
    return {
        "peer": "river.HalfSpaceTrees",
        **_summary(roc, pr),
        "learn_s": learn_s,
        "score_s": score_s,
        "records_learned": n_learned,
        "records_scored": n_scored,
        "records_per_s": (n_learned + n_scored) / (learn_s + score_s),
        "params": _hst_params(n_trees, height, window_size, seed),
    }


# ---------------------------------------------------------------------------------------------
# pyCLAD 0.3.0


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _pyclad_autoencoder(n_features: int, lr: float | None, epochs: int | None):
    """pyCLAD's ``Autoencoder`` with the network of its own example (examples/autoencoder_example.py
    in pyCLAD 0.3.x): Linear(d,16)-ReLU-Linear(16,8)-ReLU / Linear(8,16)-ReLU-Linear(16,d)-Sigmoid,
    and the class's defaults lr=1e-2, epochs=20, batch 32, threshold 0.5.

    The one change: ``fit`` builds its ``pl.Trainer`` without logger, checkpoints, progress bar or
    model summary, in a temporary root dir. pyCLAD's ``Trainer(max_epochs=...)`` would write
    ./lightning_logs (one version dir + checkpoint per concept) into the working tree and print a
    progress bar; the optimisation itself (Adam, MSE, shuffled batches of 32, max_epochs) is the
    same line for line. Dropping that I/O can only make pyCLAD faster.
    """
    import pytorch_lightning as pl
    import torch
    from pyclad.models.autoencoder.autoencoder import Autoencoder
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class QuietAutoencoder(Autoencoder):
        def fit(self, data: np.ndarray):
            dataset = TensorDataset(torch.Tensor(data))
            dataloader = DataLoader(dataset, batch_size=32, shuffle=True)
            with tempfile.TemporaryDirectory(prefix="pyclad-pl-") as root:
                trainer = pl.Trainer(
                    max_epochs=self.epochs,
                    accelerator="cpu",
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    default_root_dir=root,
                )
                trainer.fit(self.module, dataloader)

    encoder = nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
    decoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, n_features), nn.Sigmoid())
    kwargs: dict[str, Any] = {}
    if lr is not None:
        kwargs["lr"] = lr
    if epochs is not None:
        kwargs["epochs"] = epochs
    return QuietAutoencoder(encoder, decoder, **kwargs)


def _pyclad_model(model: str, n_features: int, seed: int, lr: float | None, epochs: int | None):
    if model == "autoencoder":
        return _pyclad_autoencoder(n_features, lr, epochs)
    if model == "iforest":
        from pyclad.models.adapters.pyod_adapters import IsolationForestAdapter

        # pyod IForest defaults (100 trees, max_samples="auto", contamination 0.1); only the seed set
        return IsolationForestAdapter(random_state=seed)
    raise ValueError(f"model: {model!r} is not one of {PYCLAD_MODELS}")


def _pyclad_strategy(strategy: str, model, buffer_size: int):
    from pyclad.strategies.baselines.cumulative import CumulativeStrategy
    from pyclad.strategies.baselines.naive import NaiveStrategy
    from pyclad.strategies.replay.buffers.adaptive_balanced import AdaptiveBalancedReplayBuffer
    from pyclad.strategies.replay.replay import ReplayEnhancedStrategy, ReplayOnlyStrategy
    from pyclad.strategies.replay.selection.random import RandomSelection

    if strategy == "naive":
        return NaiveStrategy(model)
    if strategy == "cumulative":
        return CumulativeStrategy(model)
    # pyCLAD's examples pair ReplayEnhanced (fit on buffer + new concept, then store a sample) with
    # AdaptiveBalancedReplayBuffer(RandomSelection(), max_size=1000); "replay_only" fits on the
    # buffer alone after adding the new concept's sample to it.
    buffer = AdaptiveBalancedReplayBuffer(selection_method=RandomSelection(), max_size=buffer_size)
    if strategy == "replay":
        return ReplayEnhancedStrategy(model, buffer)
    if strategy == "replay_only":
        return ReplayOnlyStrategy(model, buffer)
    raise ValueError(f"strategy: {strategy!r} is not one of {PYCLAD_STRATEGIES}")


def pyclad_concepts(
    concepts: Sequence[Concept],
    strategy: str = "naive",
    model: str = "autoencoder",
    seed: int = 0,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    buffer_size: int = 1000,
) -> dict[str, Any]:
    """Run pyCLAD 0.3.0's ``ConceptIncrementalScenario`` on ``concepts``.

    ``strategy``: ``naive`` (NaiveStrategy: refit on the new concept), ``cumulative``
    (CumulativeStrategy: refit on all training data so far), ``replay`` (ReplayEnhancedStrategy with
    an AdaptiveBalancedReplayBuffer of ``buffer_size`` random records) or ``replay_only``
    (ReplayOnlyStrategy, same buffer). ``model``: ``autoencoder`` (pyCLAD's, see
    :func:`_pyclad_autoencoder`; its Sigmoid output assumes features in [0, 1]) or ``iforest``
    (pyCLAD's pyod ``IsolationForestAdapter``). ``epochs`` / ``lr`` override the autoencoder's
    defaults (20 / 1e-2) when given.

    The concepts become pyCLAD ``Concept`` objects (train: data only; test: data + labels) in a
    ``ConceptsDataset``; R[j][i] comes from ``ConceptMetricCallback(RocAuc())`` (and a second one
    with average precision for PR-AUC), learn/score seconds from pyCLAD's ``TimeEvaluationCallback``
    (listed first so its clock stops before any metric is computed).
    """
    from pyclad.callbacks.evaluation.concept_metric_evaluation import ConceptMetricCallback
    from pyclad.callbacks.evaluation.time_evaluation import TimeEvaluationCallback
    from pyclad.data.concept import Concept as PCConcept
    from pyclad.data.datasets.concepts_dataset import ConceptsDataset
    from pyclad.metrics.base.base_metric import BaseMetric
    from pyclad.metrics.base.roc_auc import RocAuc
    from pyclad.metrics.continual.average_continual import ContinualAverage
    from pyclad.metrics.continual.backward_transfer import BackwardTransfer
    from pyclad.metrics.continual.forward_transfer import ForwardTransfer
    from pyclad.scenarios.concept_incremental import ConceptIncrementalScenario

    class AveragePrecision(BaseMetric):
        def compute(self, anomaly_scores, y_pred, y_true) -> float:
            return average_precision_score(y_true=y_true, y_score=anomaly_scores)

        def name(self) -> str:
            return "PR-AUC"

    _check_concepts(concepts)
    if strategy not in PYCLAD_STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {PYCLAD_STRATEGIES}")
    import pytorch_lightning  # noqa: F401  (its import sets its loggers to INFO: quiet them after)

    _quiet_lightning()
    # pyCLAD draws from three RNGs: python's random (RandomSelection), torch (init, shuffling), numpy
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)

    names = [f"concept{k}" for k in range(len(concepts))]

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    dataset = ConceptsDataset(
        name="bench",
        train_concepts=[PCConcept(n, data=f32(c[0])) for n, c in zip(names, concepts)],
        test_concepts=[
            PCConcept(n, data=f32(c[1]), labels=np.asarray(c[2]).astype(int)) for n, c in zip(names, concepts)
        ],
    )
    n_features = concepts[0][0].shape[1]
    pc_model = _pyclad_model(model, n_features, seed, lr, epochs)
    pc_strategy = _pyclad_strategy(strategy, pc_model, buffer_size)
    summaries = [ContinualAverage(), BackwardTransfer(), ForwardTransfer()]
    timer = TimeEvaluationCallback()
    roc_cb = ConceptMetricCallback(base_metric=RocAuc(), metrics=summaries)
    pr_cb = ConceptMetricCallback(base_metric=AveragePrecision(), metrics=summaries)
    ConceptIncrementalScenario(dataset, strategy=pc_strategy, callbacks=[timer, roc_cb, pr_cb]).run()

    def matrix(cb) -> tuple[list[list[float]], dict[str, float]]:
        info = next(iter(cb.info().values()))
        m = info["metric_matrix"]
        return [[float(m[j][i]) for i in names] for j in names], {k: float(v) for k, v in info["metrics"].items()}

    roc, roc_pc = matrix(roc_cb)
    pr, pr_pc = matrix(pr_cb)
    t = timer.info()["time_evaluation_callback"]
    n_learned = sum(len(c[0]) for c in concepts)
    n_scored = len(concepts) * sum(len(c[1]) for c in concepts)
    info = pc_model.additional_info()
    return {
        "peer": f"pyclad.{pc_strategy.name()}+{pc_model.name()}",
        "strategy": strategy,
        "model": model,
        **_summary(roc, pr),
        "pyclad_metrics": {"roc_auc": roc_pc, "pr_auc": pr_pc},
        "learn_s": float(t["train_time_total"]),
        "score_s": float(t["eval_time_total"]),
        "records_learned": n_learned,
        "records_scored": n_scored,
        "records_per_s": (n_learned + n_scored) / (t["train_time_total"] + t["eval_time_total"]),
        "params": {
            "seed": seed,
            "buffer_size": buffer_size if strategy.startswith("replay") else None,
            **({k: info[k] for k in ("lr", "epochs", "threshold")} if model == "autoencoder" else {}),
            **(
                {"n_estimators": info["n_estimators"], "max_samples": info["max_samples"]} if model == "iforest" else {}
            ),
        },
    }


# ---------------------------------------------------------------------------------------------
# data for the smoke run


def shuttle() -> tuple[np.ndarray, np.ndarray]:
    """river's bundled Shuttle (ODDS): 49,097 records, 9 features, 3,511 anomalies, in file order."""
    from river import datasets

    xs, ys = [], []
    for x, y in datasets.Shuttle():
        xs.append(list(x.values()))
        ys.append(int(y))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.int64)


def digits_concepts(
    normal: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4, 5), (6, 7)),
    anomalous: Sequence[int] = (8, 9),
    test_fraction: float = 0.3,
    seed: int = 0,
) -> list[Concept]:
    """A concept-incremental scenario over sklearn's digits (for testing the peers only; the
    official builder lives in lifelong's readers). Concept k: training data = a (1 - test_fraction)
    share of the digits of classes ``normal[k]``; test data = the rest of them plus a disjoint
    1/len(normal) share of the ``anomalous`` classes. Pixels scaled to [0, 1] (divided by 16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target
    rng = np.random.default_rng(seed)
    anom = rng.permutation(np.flatnonzero(np.isin(y, anomalous)))
    anom_parts = np.array_split(anom, len(normal))
    out = []
    for k, classes in enumerate(normal):
        idx = rng.permutation(np.flatnonzero(np.isin(y, classes)))
        n_test = round(len(idx) * test_fraction)
        test_norm, train = idx[:n_test], idx[n_test:]
        test = np.concatenate([test_norm, anom_parts[k]])
        test_y = np.concatenate([np.zeros(len(test_norm), int), np.ones(len(anom_parts[k]), int)])
        out.append((x[train], x[test], test_y))
    return out


# ---------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="naive/replay with IsolationForest and a 5-epoch autoencoder")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, help="write all results here")
    args = p.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for one-core timings", file=sys.stderr)
    import torch

    torch.set_num_threads(1)

    results: dict[str, Any] = {}
    x, y = shuttle()
    hst = half_space_trees(x, y, seed=args.seed)
    results["shuttle_hst"] = hst
    print(
        f"Shuttle ({hst['n']} records, {hst['anomaly_rate']:.1%} anomalies), river HalfSpaceTrees + MinMaxScaler, test-then-train:"
    )
    print(
        f"  ROC-AUC {hst['roc_auc']:.4f} (sklearn, exact)  {hst['roc_auc_river']:.4f} (river ROCAUC)  "
        f"PR-AUC {hst['pr_auc']:.4f}  {hst['records_per_s']:,.0f} records/s ({hst['seconds']:.2f} s)"
    )

    concepts = digits_concepts(seed=0)
    print(
        f"\ndigits concepts: normal [0,1],[2,3],[4,5],[6,7]; anomalies 8,9; "
        f"train {[len(c[0]) for c in concepts]}, test {[len(c[1]) for c in concepts]}"
    )
    rows = [("river HST", half_space_trees_concepts(concepts, seed=args.seed))]
    runs = [("naive", "iforest"), ("replay", "iforest"), ("naive", "autoencoder"), ("replay", "autoencoder")]
    if not args.quick:
        runs += [("cumulative", "iforest"), ("cumulative", "autoencoder"), ("replay_only", "autoencoder")]
    for strategy, model in runs:
        epochs = 5 if (args.quick and model == "autoencoder") else None
        r = pyclad_concepts(concepts, strategy, model, seed=args.seed, epochs=epochs)
        rows.append((f"pyCLAD {strategy} {model}", r))
    results["digits"] = {name: r for name, r in rows}

    print(
        f"{'peer':<30} {'avg ROC':>8} {'BWT ROC':>8} {'avg PR':>8} {'BWT PR':>8} {'rec/s':>9} {'learn s':>8} {'score s':>8}"
    )
    for name, r in rows:
        print(
            f"{name:<30} {_fmt(r['avg_roc_auc']):>8} {_fmt(r['bwt_roc_auc']):>8} {_fmt(r['avg_pr_auc']):>8} "
            f"{_fmt(r['bwt_pr_auc']):>8} {r['records_per_s']:>9,.0f} {r['learn_s']:>8.2f} {r['score_s']:>8.2f}"
        )
    for name, r in rows:
        print(f"\n{name}: ROC-AUC matrix R[j][i]")
        for row in r["roc_auc_matrix"]:
            print("  " + " ".join(f"{v:.3f}" for v in row))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
