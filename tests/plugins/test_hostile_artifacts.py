"""A tampered generation artifact never reaches pickle: its spec may name only an architecture."""

from __future__ import annotations

import json

import mlflow.pyfunc
import pytest
import torch
from safetensors.torch import save_file

from lifelong.components import Components
from lifelong.errors import UserError
from lifelong.types import ModelSpec
from lifelong_mlflow import pyfunc
from lifelong_mlflow.serving.scorer import Scorer
from tests.fixtures.served_models import TABULAR, mlp_state, spec_of


@pytest.fixture
def generation(tmp_path):
    spec = spec_of(TABULAR)
    pyfunc.save(tmp_path / "model", mlp_state(spec, seed=0), spec, ["lifelong"])
    return tmp_path / "model", spec


def tamper(model_dir, spec: dict) -> None:
    (model_dir / "artifacts" / pyfunc.SPEC).write_text(json.dumps(spec))


def test_an_initializer_named_in_model_json_is_refused(generation, tmp_path):
    model_dir, spec = generation
    # a pickle that would run code if torch.load(weights_only=False) ever read it
    torch.save({"weights": torch.zeros(1)}, tmp_path / "evil.pt")
    tamper(
        model_dir,
        {"name": "file", "options": {"path": str(tmp_path / "evil.pt"), "arch": "mlp", "allow_pickle": True}, "info": spec.info.to_dict()},
    )
    with pytest.raises(Exception, match="names the initializer 'file'"):
        mlflow.pyfunc.load_model(str(model_dir))
    with pytest.raises(UserError, match="initializer"):
        Scorer.from_files(model_dir / "artifacts" / pyfunc.SPEC, model_dir / "artifacts" / pyfunc.WEIGHTS)


def test_allow_pickle_anywhere_in_the_spec_is_refused(generation):
    _, spec = generation
    nested = ModelSpec("pathnet", {"backbone": {"name": "mlp", "options": {"allow_pickle": True}}}, spec.info)
    with pytest.raises(UserError, match="allow_pickle"):
        Components.default().build_generation(nested)


def test_an_untampered_generation_still_loads(generation):
    model_dir, _ = generation
    import pandas as pd

    row = pd.DataFrame([{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}])
    assert mlflow.pyfunc.load_model(str(model_dir)).predict(row).shape == (1,)


def test_weights_changed_after_registration_are_refused(tmp_path):
    import hashlib

    from lifelong_mlflow.serving.source import verify_weights

    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(3)}, str(weights))
    recorded = hashlib.sha256(weights.read_bytes()).hexdigest()
    verify_weights(weights, recorded, "v1")  # untouched: fine
    verify_weights(weights, None, "v1")  # no recorded digest (an older version): not checked
    save_file({"w": torch.full((3,), 1e30)}, str(weights))
    with pytest.raises(ValueError, match="do not match the SHA-256 recorded at registration"):
        verify_weights(weights, recorded, "v1")
