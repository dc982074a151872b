"""Is BWT(ROC-AUC) ≥ −0.02 reachable on the concept scenarios? Scores that forget nothing, side by side.

Issue 10 asks lifelong's autoencoder + replay for BWT(ROC-AUC) ≥ −0.02 on the concept-incremental
scenarios; on Fashion-MNIST it measures −0.035 (bench/anomaly.py). This script asks whether any
score that learns an accumulating normal can do better there. It trains the same ``autoencoder``
(hidden [128], latent 16, lr 0.003, batch 32, the scenario's epochs) concept after concept with
replay from a uniform reservoir of every training sample seen (``--memory``), in a plain loop (the
kernel's replay step: each batch joined by as many replayed samples), and after each concept
scores every concept's test data three ways:

- ``reconstruction``: the detector's own score (the reconstruction error);
- ``latent kNN``: distance from the latent code to its ``k``-th nearest code among the reservoir's
  samples (MemStream's score);
- ``input kNN``: the same in standardised input space: no learned representation at all. The
  reservoir holds samples of every concept seen, so nothing of the old normal is forgotten; what
  remains of the BWT is the anomalies growing closer to the normal as it grows.

    OMP_NUM_THREADS=1 python bench/anomaly_bwt_bound.py                   # Fashion-MNIST, seeds 0-2
    OMP_NUM_THREADS=1 python bench/anomaly_bwt_bound.py --scenario digits

Writes ``bench/results/anomaly_bwt_bound_<scenario>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anomaly  # noqa: E402
from common import git_commit, provenance, source_fingerprint  # noqa: E402

from lifelong.metrics import acc, bwt  # noqa: E402
from lifelong.types import StreamInfo  # noqa: E402
from lifelong_anomaly.autoencoder import Autoencoder, AutoencoderOptions  # noqa: E402

SCORES = ("reconstruction", "latent kNN", "input kNN")
BATCH = 32


class Reservoir:
    """A uniform sample of every row offered (Vitter's algorithm R)."""

    def __init__(self, size: int, features: int, rng: np.random.Generator):
        self.rows = torch.zeros(0, features)
        self.size, self.seen, self.rng = size, 0, rng

    def offer(self, x: torch.Tensor) -> None:
        for row in x:
            if len(self.rows) < self.size:
                self.rows = torch.cat([self.rows, row[None]])
            else:
                slot = self.rng.integers(0, self.seen + 1)
                if slot < self.size:
                    self.rows[slot] = row
            self.seen += 1


@torch.no_grad()
def score(model: Autoencoder, memory: torch.Tensor, x: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    model.eval()
    encoder = model.network[0]
    z_memory, z_x = model.standardise(memory), model.standardise(x)
    kth = lambda a, b: torch.cdist(a, b).topk(k, largest=False).values[:, -1].numpy()  # noqa: E731
    out = {
        "reconstruction": model.anomaly_score(x, model(x)).numpy(),
        "latent kNN": kth(encoder(z_x), encoder(z_memory)),
        "input kNN": kth(z_x, z_memory),
    }
    model.train()
    return out


def run(scenario: str, seed: int, memory_size: int, k: int) -> dict[str, list[list[float]]]:
    torch.manual_seed(seed)
    concepts = anomaly.peer_concepts(anomaly.SCENARIOS[scenario], 0.0)
    epochs = anomaly.SCENARIOS[scenario]["epochs"]
    features = concepts[0][0].shape[1]
    model = Autoencoder(AutoencoderOptions(hidden=[128], latent=16), StreamInfo(input_shape=(features,), num_classes=2))
    optimizer = torch.optim.Adam(model.parameters(), 0.003)
    memory = Reservoir(memory_size, features, np.random.default_rng(seed))
    matrices: dict[str, list[list[float]]] = {name: [] for name in SCORES}
    for train, _, _ in concepts:
        train = torch.from_numpy(train)
        for epoch in range(epochs):
            for index in torch.randperm(len(train)).split(BATCH):
                x = train[index]
                if epoch == 0:
                    model.scaler.update(x)  # the stream's first pass, as the detector's hooks do
                batch = x if not len(memory.rows) else torch.cat([x, memory.rows[torch.randint(len(memory.rows), (BATCH,))]])
                loss = model.sample_loss(batch, model(batch)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if epoch == 0:
                    memory.offer(x)
        for name in SCORES:
            matrices[name].append([])
        for _, test_x, test_y in concepts:
            scores = score(model, memory.rows, torch.from_numpy(test_x), k)
            for name in SCORES:
                matrices[name][-1].append(float(roc_auc_score(test_y, scores[name])))
    return matrices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="fashion-mnist", choices=sorted(anomaly.SCENARIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--memory", type=int, default=1000, help="reservoir size (replay and the kNN reference)")
    parser.add_argument("-k", type=int, default=5, help="the kNN scores' neighbour")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 python bench/anomaly_bwt_bound.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commit, source = git_commit(), source_fingerprint()
    runs = {seed: run(args.scenario, seed, args.memory, args.k) for seed in args.seeds}
    lines = [f"# BWT(ROC-AUC) of three scores on {args.scenario} concepts, replay from a reservoir of {args.memory}", "",
             f"`{command.strip()}` at commit `{commit}`, k = {args.k}.", "",
             "| score | avg ROC-AUC per seed | BWT per seed |", "| --- | --- | --- |"]
    for name in SCORES:
        matrices = [runs[seed][name] for seed in args.seeds]
        lines.append(f"| {name} | {' '.join(f'{acc(m):.3f}' for m in matrices)} | {' '.join(f'{bwt(m):+.3f}' for m in matrices)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = anomaly.RESULTS / f"anomaly_bwt_bound_{args.scenario}"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "provenance": provenance(command, commit, source)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
