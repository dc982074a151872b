"""A generation rebuilt for inference: the module, its input contract, its forward pass and smoke test.

Shared by the ``mlflow.pyfunc`` model (:class:`lifelong_mlflow.pyfunc.GenerationModel`) and
``lifelong serve``, so both rebuild, check and score a generation the same way. The model is built
by its component name with the plugins installed in this process
(:meth:`lifelong.components.Components.default`), and the weights are read with safetensors: no
unpickling anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.learner import prepare
from lifelong.objective import forward, is_detector
from lifelong.types import ModelSpec
from lifelong_mlflow.contract import Contract, Rows


class SmokeTestFailed(RuntimeError):
    """A loaded generation that does not answer a valid input sanely; it is never served."""


class Scorer:
    """One generation, ready to score checked rows (:meth:`Contract.check`) on ``device``.

    ``components`` (a :class:`lifelong.components.Components`) is built once by a long-lived
    caller (the server) and reused; by default the process's plugins are loaded for this model.
    ``load_state_dict`` is strict, so weights of another architecture fail here, not at serve time.
    """

    def __init__(self, spec: ModelSpec, state: dict[str, torch.Tensor], device: str | torch.device = "cpu", components: Any = None):
        if components is None:
            from lifelong.components import Components

            components = Components.default()
        self.spec = spec
        self.contract = Contract(spec.info)
        model = components.build_generation(spec, "model.json")  # an architecture only: no initializer, no pickle
        model.load_state_dict(state)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # An anomaly detector answers a score per row and its flag at the threshold it was trained with.
        self.detector = is_detector(model)
        self.threshold = float(model.threshold) if self.detector else None

    @classmethod
    def from_files(cls, spec_path: str | Path, weights_path: str | Path, device: str | torch.device = "cpu", components: Any = None) -> Scorer:
        """A scorer from a generation's ``model.json`` and ``weights.safetensors``."""
        from safetensors.torch import load_file

        spec = ModelSpec.from_dict(json.loads(Path(spec_path).read_text()))
        return cls(spec, load_file(str(weights_path)), device, components)

    def outputs(self, rows: Rows) -> np.ndarray:
        """What the batcher computes per row: class probabilities (N, classes), or a detector's scores (N,)."""
        return self.scores(rows) if self.detector else self.probabilities(rows)

    def scores(self, rows: Rows) -> np.ndarray:
        """A detector's anomaly scores (N,) float32 on ``rows``; ``score > threshold`` flags an anomaly."""
        with torch.inference_mode():
            x = torch.from_numpy(rows.x).to(self.device)
            task = None if rows.task is None else torch.from_numpy(rows.task).to(self.device)
            return self.model.anomaly_score(x, forward(self.model, x, task)).float().cpu().numpy()

    def probabilities(self, rows: Rows) -> np.ndarray:
        """Class probabilities (N, num_classes) float32: the softmax of the model's logits on ``rows``."""
        with torch.inference_mode():
            x = torch.from_numpy(rows.x)
            host = getattr(self.model, "prepare_host", None)
            if host is not None:
                x = host(x)  # a text model tokenizes here, before the copy to the device
            x = prepare(self.model, x.to(self.device))
            if rows.task is None:
                logits = self.model(x)
            else:
                logits = self.model(x, torch.from_numpy(rows.task).to(self.device))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def smoke_test(self) -> None:
        """Score a valid all-zeros input; raise :class:`SmokeTestFailed` unless the answer has one
        finite probability row per instance over the generation's classes (and as many class names,
        when it has names), or, for a detector, one finite score per instance."""
        rows = self.contract.zeros(2)
        try:
            probs = self.outputs(rows)
        except Exception as exc:  # any failure of the forward pass is the verdict
            raise SmokeTestFailed(f"the forward pass on a valid all-zeros input failed: {type(exc).__name__}: {exc}") from exc
        expected = (len(rows),) if self.detector else (len(rows), self.contract.num_classes)
        if probs.shape != expected:
            raise SmokeTestFailed(f"the model answered shape {probs.shape} for a valid input, expected {expected}")
        if not np.isfinite(probs).all():
            raise SmokeTestFailed("the model answered non-finite values for a valid all-zeros input")
        names = self.spec.info.class_names
        if not self.detector and names is not None and len(names) != probs.shape[1]:
            raise SmokeTestFailed(f"the model has {probs.shape[1]} outputs per head but {len(names)} class names")
