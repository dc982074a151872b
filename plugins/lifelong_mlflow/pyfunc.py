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

Loading needs the ``lifelong`` package and the plugin that registered the model component::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/lifelong@latest")
    classes = model.predict(images)          # (N, *input_shape) or (N, prod(input_shape))
    classes = model.predict(frame)           # DataFrame: feature columns, plus "task" if multi-head

``predict`` returns the predicted class index of every row as a NumPy ``int64`` array (indices
within the sample's head in the task-incremental scenario).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.models import Model

from lifelong.learner import prepare
from lifelong.types import ModelSpec

WEIGHTS = "weights.safetensors"
SPEC = "model.json"
STRATEGY_TENSORS = "strategies.safetensors"
STRATEGY_INDEX = "strategies.json"
STRATEGIES_FORMAT = "lifelong-strategies/1"
TASK_COLUMN = "task"
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
    """Write a generation as a pyfunc model directory at ``path`` (which must not exist yet).

    ``pip_requirements`` is explicit because inferring requirements costs seconds per model;
    ``mlflow_model`` carries the MLmodel metadata (logged model id, run id) when it is logged.
    ``strategy_state`` (name -> nested state, CPU tensors), when given, is stored with the run's
    ``strategies`` names and ``lineage`` (``{"session": …, "generation": …}``) in the two optional
    strategy artifacts.
    """
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="lifelong-pyfunc-") as tmp:
        weights, spec_file = Path(tmp) / WEIGHTS, Path(tmp) / SPEC
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
        spec_file.write_text(json.dumps(spec.to_dict(), indent=2))
        artifacts = {"weights": str(weights), "spec": str(spec_file)}
        if strategy_state is not None:
            artifacts.update(_write_strategies(Path(tmp), strategy_state, strategies, lineage))
        with _no_artifact_progress_bars():
            mlflow.pyfunc.save_model(
                str(path),
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                pip_requirements=pip_requirements,
                mlflow_model=mlflow_model,
            )


def _write_strategies(
    root: Path, strategy_state: dict[str, Any], strategies: list[str] | None, lineage: dict[str, Any] | None
) -> dict[str, str]:
    """The two strategy artifacts under ``root``; the JSON is encoded first, so a state that is not
    JSON and tensors fails before anything is written."""
    from safetensors.torch import save_file

    from lifelong.checkpoint import split_tensors

    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(strategy_state, "", tensors)
    index = {
        "format": STRATEGIES_FORMAT,
        "strategies": list(strategies if strategies is not None else strategy_state),
        "state": skeleton,
        **{key: value for key, value in (lineage or {}).items() if key in ("session", "generation")},
    }
    text = json.dumps(index, allow_nan=True)
    save_file(tensors, str(root / STRATEGY_TENSORS))
    (root / STRATEGY_INDEX).write_text(text)
    return {"strategies": str(root / STRATEGY_TENSORS), "strategies_index": str(root / STRATEGY_INDEX)}


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
    # this switch (the one MLflow's own ChatModel uses) skips both: predict takes arrays and
    # DataFrames alike, with an optional task column, which no single hint describes.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from safetensors.torch import load_file

        from lifelong.components import Components

        with open(context.artifacts["spec"]) as handle:
            self.spec = ModelSpec.from_dict(json.load(handle))
        # A serving process has no run: the model is rebuilt with the plugins installed here.
        model = Components.default().build_model(self.spec, "model.json")
        model.load_state_dict(load_file(context.artifacts["weights"]))
        self.device = torch.device((context.model_config or {}).get("device", "cpu"))
        self.model = model.to(self.device).eval()

    def predict(self, context, model_input, params=None):
        features, task = _split_input(model_input)
        info = self.spec.info
        x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32)).reshape(-1, *info.input_shape)
        if info.num_tasks > 1 and task is None:
            raise ValueError(f"this model has {info.num_tasks} task heads: give a {TASK_COLUMN!r} column or key")
        with torch.no_grad():
            x = prepare(self.model, x.to(self.device))
            if task is None:
                logits = self.model(x)
            else:
                logits = self.model(x, torch.from_numpy(np.array(task, dtype=np.int64)).to(self.device))
        return logits.argmax(dim=1).cpu().numpy()


def _split_input(model_input: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and optional task ids from an array, a DataFrame or a ``{"x", "task"}`` dict."""
    if isinstance(model_input, dict):
        task = model_input.get(TASK_COLUMN)
        return np.asarray(model_input["x"]), None if task is None else np.asarray(task)
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        task = None
        if TASK_COLUMN in columns:
            task = model_input[TASK_COLUMN].to_numpy()
            model_input = model_input.drop(columns=[TASK_COLUMN])
        if len(model_input.columns) == 1 and model_input.dtypes.iloc[0].kind == "O":
            # One column whose cells are whole samples (lists or arrays), as JSON serving sends them.
            return np.stack([np.asarray(v, dtype=np.float32) for v in model_input.iloc[:, 0]]), task
        return model_input.to_numpy(dtype=np.float32), task
    return np.asarray(model_input), None
