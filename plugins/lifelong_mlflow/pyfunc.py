"""A generation as an MLflow pyfunc model: safetensors weights plus the spec to rebuild the module.

Each logged generation holds two artifacts, ``weights.safetensors`` (the model's ``state_dict``) and
``model.json`` (:meth:`lifelong.types.ModelSpec.to_dict`), and is saved as *models from code*
(``model_code.py`` is the code file), so loading it runs no unpickling at all: the model is rebuilt
by its component name (:meth:`lifelong.components.Components.default`: the plugins installed in
the serving process) and the weights are read with safetensors.

Two more, optional, artifacts carry what a later run needs to *continue* from the generation as
if it had never stopped: ``strategies.safetensors`` (every tensor of the strategies' state: replay
memory, EWC Fisher and anchors, the LwF teacher …) and ``strategies.json`` (:data:`STRATEGIES_FORMAT`:
the run's strategy names in ``learner.strategies`` order, the nested state with tensors replaced by
references into the safetensors file, and the generation's session and index). Serving never reads
them; the ``mlflow`` initializer (:mod:`lifelong_transfer.initializers`) does.

Every generation carries an MLflow signature (:func:`lifelong_mlflow.contract.signature`): a double
column per feature when the reader named them (a csv header), else a float32 tensor of shape
``(-1, *input_shape)``; a ``task`` input when the model has several heads; and the params switch
``probabilities``. MLflow enforces it before ``predict`` runs; ``predict`` then applies the input
contract of :mod:`lifelong_mlflow.contract` (width, names, task ids, finite numbers), raising
:class:`~lifelong_mlflow.contract.InputError` (a ``ValueError``) instead of reshaping.

Loading needs the ``lifelong`` package and the plugin that registered the model component::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/lifelong@champion")
    labels = model.predict(images)                  # float32 (N, *input_shape)
    labels = model.predict(frame)                   # DataFrame: the named features, plus "task" if multi-head
    labels = model.predict({"x": images, "task": ids})   # multi-head model without feature names
    table = model.predict(images, params={"probabilities": True})

``predict`` returns the predicted class of every row: its **name** (a NumPy ``str`` array) when the
generation knows its class names (``info.class_names``), else its index (``int64``). Names label
the outputs of every head: in the task-incremental scenario readers give the label set of one head,
shared by all heads, so a row's name is read in its own task's head. With
``params={"probabilities": True}`` it returns a pandas DataFrame instead: a ``class`` column (the
same names or indices) and one column of probabilities (softmax of the head's logits) per class,
named by the class names (or ``"0"``, ``"1"`` … when unknown).

An anomaly detector's generation (:mod:`lifelong.objective`) returns a DataFrame with a ``score``
column (its anomaly score) and an ``anomaly`` column (``score > threshold``, the threshold the
generation was trained with and stores in its weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.models import Model

from lifelong.types import ModelSpec
from lifelong_mlflow import contract

if TYPE_CHECKING:  # torch only where tensors are written (save): the outbox writer saves files, never tensors
    import torch

WEIGHTS = "weights.safetensors"
SPEC = "model.json"
STRATEGY_TENSORS = "strategies.safetensors"
STRATEGY_INDEX = "strategies.json"
STRATEGIES_FORMAT = "lifelong-strategies/1"
TASK_COLUMN = contract.TASK
# Referenced by path, never imported here: importing it hands a model to MLflow's loader.
MODEL_CODE = Path(__file__).with_name("model_code.py")


def save(
    path: str | Path,
    state: dict[str, torch.Tensor],
    spec: ModelSpec,
    pip_requirements: list[str],
    mlflow_model: Model | None = None,
    strategy_state: dict[str, Any] | None = None,
    strategies: list[str] | None = None,
    lineage: dict[str, Any] | None = None,
) -> None:
    """Write a generation held in memory as a pyfunc model directory at ``path`` (which must not exist yet).

    ``pip_requirements`` is explicit because inferring requirements costs seconds per model;
    ``mlflow_model`` carries the MLmodel metadata (logged model id, run id) when it is logged.
    The signature is computed from ``spec`` (:func:`lifelong_mlflow.contract.signature`).
    ``strategy_state`` (name -> nested state, CPU tensors), when given, is stored with the run's
    ``strategies`` names and ``lineage`` (``{"session": …, "generation": …}``) in the two optional
    strategy artifacts. The tensors are written to safetensors files, then :func:`save_files` does the rest.
    """
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="lifelong-tensors-") as tmp:
        weights = Path(tmp) / WEIGHTS
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
        strategy_tensors = index = None
        if strategy_state is not None:
            from lifelong.checkpoint import split_tensors

            found: dict[str, torch.Tensor] = {}
            skeleton = split_tensors(strategy_state, "", found)
            index = strategy_index(skeleton, strategies, lineage)
            json.dumps(index, allow_nan=True)  # a state that is not JSON and tensors fails before anything is written
            strategy_tensors = Path(tmp) / STRATEGY_TENSORS
            save_file(found, str(strategy_tensors))
        save_files(path, weights, spec, pip_requirements, mlflow_model, strategy_tensors, index)


def save_files(
    path: str | Path,
    weights: str | Path,
    spec: ModelSpec,
    pip_requirements: list[str],
    mlflow_model: Model | None = None,
    strategy_tensors: str | Path | None = None,
    strategy_index: dict[str, Any] | None = None,
) -> None:
    """Write a generation as a pyfunc model directory at ``path`` from its tensors already in files.

    ``weights`` (the model's ``state_dict``) and ``strategy_tensors`` are safetensors files, stored
    byte for byte as they are; ``strategy_index`` is the content of ``strategies.json``
    (:func:`strategy_index`), given with ``strategy_tensors``. The outbox writer process passes the
    outbox entry's own files, so it never loads a tensor and never imports torch (about 1.5 s of CPU
    at its start, taken from the training process's CPUs); :func:`save` passes the files it just wrote.
    Other arguments as for :func:`save`.
    """
    with tempfile.TemporaryDirectory(prefix="lifelong-pyfunc-") as tmp:
        root = Path(tmp)
        # MLflow names each artifact after its file, so the files are placed under the artifact names.
        artifacts = {"weights": _place(weights, root / WEIGHTS), "spec": str(root / SPEC)}
        (root / SPEC).write_text(json.dumps(spec.to_dict(), indent=2))
        if strategy_tensors is not None:
            (root / STRATEGY_INDEX).write_text(json.dumps(strategy_index, allow_nan=True))
            artifacts["strategies"] = _place(strategy_tensors, root / STRATEGY_TENSORS)
            artifacts["strategies_index"] = str(root / STRATEGY_INDEX)
        # Set on the metadata rather than passed as signature=: MLflow then warns, at every save,
        # that no input example was given (one would cost a model load and a predict per save).
        mlflow_model = mlflow_model if mlflow_model is not None else Model()
        mlflow_model.signature = contract.signature(spec)
        with _no_artifact_progress_bars():
            mlflow.pyfunc.save_model(
                str(path),
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                pip_requirements=pip_requirements,
                mlflow_model=mlflow_model,
            )


def strategy_index(skeleton: Any, strategies: list[str] | None, lineage: dict[str, Any] | None) -> dict[str, Any]:
    """``strategies.json``: the strategies' state with its tensors replaced by references
    (:func:`lifelong.checkpoint.split_tensors`, prefix ``""``) into ``strategies.safetensors``, the
    run's strategy names (``learner.strategies`` order; else the state's own) and the lineage."""
    return {
        "format": STRATEGIES_FORMAT,
        "strategies": list(strategies if strategies is not None else skeleton),
        "state": skeleton,
        **{key: value for key, value in (lineage or {}).items() if key in ("session", "generation")},
    }


def _place(source: str | Path, target: Path) -> str:
    """``source`` at ``target``: a hard link where they share a file system (no bytes copied), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return str(target)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (a generation's weights), read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _no_artifact_progress_bars() -> Iterator[None]:
    """Keep ``save_model`` from drawing a tqdm bar per copied file across the training progress bar.

    The switch is an environment variable, so it is process-wide, but it is only set for the
    milliseconds ``save_model`` takes, and an explicit choice of the user's wins.
    """
    if MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.defined:
        yield
        return
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set("false")
    try:
        yield
    finally:
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.unset()


class GenerationModel(mlflow.pyfunc.PythonModel):
    """Serves one generation; ``model_config={"device": "cuda"}`` at load time moves it to a GPU."""

    # MLflow 3 wraps predict to validate inputs against its type hints and warns when there are none;
    # this switch (the one MLflow's own ChatModel uses) skips both: predict takes arrays, DataFrames
    # and dicts alike, which no single hint describes. The logged signature still applies.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from lifelong_mlflow.serving.scorer import Scorer

        device = (context.model_config or {}).get("device", "cpu")
        # A serving process has no run: the model is rebuilt with the plugins installed here.
        self.scorer = Scorer.from_files(context.artifacts["spec"], context.artifacts["weights"], device)
        self.spec = self.scorer.spec

    def predict(self, context, model_input, params=None):
        """Class names (or indices) per row; a DataFrame of probabilities with ``params={"probabilities": True}``."""
        scorer = self.scorer
        if scorer.detector:
            return score_frame(scorer.scores(scorer.contract.check(model_input)), scorer.threshold)
        probabilities = scorer.probabilities(scorer.contract.check(model_input))
        labels = scorer.contract.labels(probabilities.argmax(axis=1))
        if not (params or {}).get(contract.PROBABILITIES):
            return labels
        return probability_frame(labels, probabilities, scorer.contract.classes)


def score_frame(scores, threshold: float):
    """A detector's answer: a ``score`` column and an ``anomaly`` column (score > the stored threshold)."""
    import pandas as pd

    return pd.DataFrame({"score": scores, "anomaly": scores > threshold})


def probability_frame(labels, probabilities, classes: list[str]):
    """A ``class`` column, then one probability column per class (in head order)."""
    import pandas as pd

    frame = pd.DataFrame(probabilities, columns=classes)
    frame.insert(0, contract.CLASS, labels, allow_duplicates=True)
    return frame
