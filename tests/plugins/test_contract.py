"""The input contract of a served generation, on its own and through ``mlflow.pyfunc`` predict.

Every refusal must name what was expected and what came; nothing is ever re-cut to fit (30 rows of
31 values used to give 31 predictions). Through pyfunc, MLflow's signature enforcement runs first:
those tests pin which of its messages a user meets and that the rest reach lifelong's.
"""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from lifelong_mlflow import pyfunc
from lifelong_mlflow.contract import Contract, InputError, signature
from mlflow.exceptions import MlflowException

from lifelong.types import StreamInfo
from tests.fixtures.served_models import CLASSES, FEATURES, IMAGES, TABULAR, TASKS, mlp_state, spec_of

TASKS_NAMED = StreamInfo(
    input_shape=(4,), num_classes=3, scenario="task", num_tasks=3, class_names=CLASSES, feature_names=FEATURES
)
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def refused(contract: Contract, data, task=None) -> str:
    with pytest.raises(InputError) as caught:
        contract.check(data, task)
    return str(caught.value)


# -- arrays -----------------------------------------------------------------------------------------


def test_rows_flat_or_nested_give_the_same_samples():
    contract = Contract(IMAGES)
    x = np.random.default_rng(0).random((5, 64))
    flat, nested = contract.check(x), contract.check(x.reshape(5, 1, 8, 8).tolist())
    assert flat.x.shape == (5, 1, 8, 8) and flat.x.dtype == np.float32 and flat.task is None
    np.testing.assert_array_equal(flat.x, nested.x)


def test_wrong_width_is_refused_never_reshaped():
    contract = Contract(IMAGES)
    message = refused(contract, np.zeros((30, 31)))  # used to give 31 predictions
    assert "each instance must have 64 values (shape (1, 8, 8))" in message
    assert "got 30 instances of 31 values" in message
    assert "instance 1 has 63 values, instance 0 64" in refused(contract, [[0] * 64, [0] * 63])
    assert "one flat list of 64 values" in refused(contract, [0.0] * 64)
    assert "no instances" in refused(contract, [])


def test_bad_values_are_named_by_instance_and_position():
    contract = Contract(IMAGES)
    assert refused(contract, [[0] * 64, [0] * 10 + ["x"] + [0] * 53]) == "instance 1, value (0, 1, 2): 'x' is not a number"
    assert "instance 0, value (0, 7, 7): nan is not a finite float32 number" in refused(contract, [[0] * 63 + [math.nan]])
    assert "1e+39 is not a finite float32 number" in refused(contract, [[0] * 63 + [1e39]])  # inf once float32
    assert "None is not a number" in refused(contract, [[None] * 64])


# -- names ------------------------------------------------------------------------------------------


def test_named_features_are_matched_by_name_not_position():
    contract = Contract(TABULAR)
    shuffled = {k: ROW[k] for k in reversed(FEATURES)}
    by_objects = contract.check([shuffled, ROW])
    by_frame = contract.check(pd.DataFrame([shuffled]))
    expected = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    np.testing.assert_array_equal(by_objects.x, np.repeat(expected, 2, axis=0))
    np.testing.assert_array_equal(by_frame.x, expected)
    np.testing.assert_array_equal(contract.check([[5.1, 3.5, 1.4, 0.2]]).x, expected)  # plain rows: header order


def test_missing_and_extra_names_are_named():
    contract = Contract(TABULAR)
    wrong = {**{k: v for k, v in ROW.items() if k != "petal_width"}, "petal_wdth": 0.2}
    message = refused(contract, [ROW, wrong])
    assert message.startswith("instance 1: features are matched by name")
    assert "missing ['petal_width'] and unknown key ['petal_wdth']" in message
    assert "expected 4 keys ['sepal_length', 'sepal_width', 'petal_length', 'petal_width']" in message
    message = refused(contract, pd.DataFrame([{**ROW, "colour": 1.0}]))
    assert "unknown column ['colour']" in message and "missing" not in message
    assert "instance 0, feature 'sepal_width': 'wide' is not a number" in refused(contract, [{**ROW, "sepal_width": "wide"}])
    assert "instance 0, feature 'sepal_width': [1, 2] is not a number" in refused(contract, [{**ROW, "sepal_width": [1, 2]}])


def test_unnamed_features_take_a_full_width_or_one_column_of_samples():
    contract = Contract(IMAGES)
    x = np.random.default_rng(1).random((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(contract.check(pd.DataFrame(x)).x.reshape(3, -1), x)
    np.testing.assert_array_equal(contract.check(pd.DataFrame({"image": list(x)})).x.reshape(3, -1), x)
    np.testing.assert_array_equal(contract.check([{"image": row.tolist()} for row in x]).x.reshape(3, -1), x)
    message = refused(contract, pd.DataFrame(x[:, :10]))
    assert "this model's features are not named: send 64 columns (taken in order) or one column of whole samples" in message
    assert "got 10 columns" in message


# -- task ids ---------------------------------------------------------------------------------------


def test_task_ids_are_required_checked_and_refused_for_one_head():
    contract = Contract(TASKS)
    x = np.zeros((3, 64))
    assert contract.check({"x": x, "task": [0, 2, 1]}).task.tolist() == [0, 2, 1]
    assert contract.check(x, task=2).task.tolist() == [2, 2, 2]  # one id for the whole request
    assert contract.check(x, task=[1.0, 0.0, 2.0]).task.dtype == np.int64
    assert refused(contract, x) == "this model has 3 task heads: give each instance a 'task' key (0..2)"
    message = refused(contract, x, task=[0, 3, 1])
    assert message == "instance 1: task id 3 is out of range; this model has 3 task heads, valid task ids are 0..2"
    assert "task id -1 is out of range" in refused(contract, x, task=-1)
    assert "task id 1.5 is not an integer (valid task ids: 0..2)" in refused(contract, x, task=[0, 1.5, 1])
    assert "task id 'a' is not an integer" in refused(contract, x, task=["a", 0, 1])
    assert "task id True is not an integer" in refused(contract, x, task=True)
    assert "one id or one per instance (3); got 2 values" in refused(contract, x, task=[0, 1])
    named = Contract(TASKS_NAMED)
    assert named.check([{**ROW, "task": 2}]).task.tolist() == [2]
    assert "instance 1 has no 'task' while others do" in refused(named, [{**ROW, "task": 2}, ROW])
    assert "not both" in refused(named, [{**ROW, "task": 2}], task=1)
    assert refused(Contract(TABULAR), [ROW], task=0) == "this model has a single head: send no 'task' key"
    assert "send no 'task' column" in refused(Contract(TABULAR), pd.DataFrame([{**ROW, "task": 0}]))


def test_labels_are_class_names_when_known():
    assert Contract(TABULAR).labels(np.array([2, 0])).tolist() == ["virginica", "setosa"]
    unnamed = Contract(StreamInfo(input_shape=(4,), num_classes=3))
    assert unnamed.labels(np.array([2, 0])).dtype == np.int64 and unnamed.classes == ["0", "1", "2"]
    # Names that do not line up with the outputs are not trusted.
    assert Contract(StreamInfo(input_shape=(4,), num_classes=3, class_names=["a", "b"])).class_names is None


# -- the MLflow signature ---------------------------------------------------------------------------


def test_signature_describes_the_contract():
    tabular = json.loads(signature(spec_of(TASKS_NAMED)).to_dict()["inputs"])
    assert [(c["name"], c["type"], c["required"]) for c in tabular] == [
        *[(name, "double", True) for name in FEATURES],
        ("task", "long", False),
    ]
    images = signature(spec_of(IMAGES)).to_dict()
    assert json.loads(images["inputs"]) == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}]
    assert json.loads(images["params"]) == [{"name": "probabilities", "default": False, "shape": None, "type": "boolean"}]
    tasks = json.loads(signature(spec_of(TASKS)).to_dict()["inputs"])
    assert [(t["name"], t["tensor-spec"]) for t in tasks] == [
        ("x", {"dtype": "float32", "shape": [-1, 1, 8, 8]}),
        ("task", {"dtype": "int64", "shape": [-1]}),
    ]


# -- through mlflow.pyfunc --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The three kinds of generation saved with pyfunc.save and loaded back with mlflow.pyfunc."""
    root = tmp_path_factory.mktemp("pyfunc")
    models = {}
    for name, info in (("tabular", TABULAR), ("images", IMAGES), ("tasks", TASKS), ("tasks_named", TASKS_NAMED)):
        spec = spec_of(info)
        state = mlp_state(spec, seed=0)
        pyfunc.save(root / name, state, spec, ["lifelong"])
        torch_model = _torch_model(spec, state)
        models[name] = (mlflow.pyfunc.load_model(str(root / name)), torch_model)
    return models


def _torch_model(spec, state):
    from lifelong_models.mlp import MLP, MLPOptions

    model = MLP(MLPOptions(hidden=spec.options["hidden"]), spec.info)
    model.load_state_dict(state)
    return model.eval()


def test_pyfunc_predicts_class_names_and_probabilities(served):
    model, reference = served["tabular"]
    frame = pd.DataFrame([ROW, {k: v * 2 for k, v in ROW.items()}])
    with torch.no_grad():
        logits = reference(torch.tensor(frame[FEATURES].to_numpy(), dtype=torch.float32))
    expected = np.array(CLASSES)[logits.argmax(1).numpy()]
    predicted = model.predict(frame[list(reversed(FEATURES))])  # by name, any order
    assert predicted.dtype.kind == "U"
    np.testing.assert_array_equal(predicted, expected)
    table = model.predict(frame, params={"probabilities": True})
    assert list(table.columns) == ["class", *CLASSES]
    np.testing.assert_array_equal(table["class"], expected)
    np.testing.assert_allclose(table[CLASSES].to_numpy(), torch.softmax(logits, 1).numpy(), rtol=1e-5)
    images, reference = served["images"]
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = np.array(IMAGES.class_names)[reference(torch.from_numpy(x)).argmax(1).numpy()]
    np.testing.assert_array_equal(images.predict(x), expected)
    np.testing.assert_array_equal(images.predict(pd.DataFrame({"image": list(x.reshape(6, -1))})), expected)


def test_pyfunc_wrong_inputs_get_clear_errors(served, caplog):
    tabular, _ = served["tabular"]
    # MLflow's signature check runs first and names the missing column itself.
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['petal_width'\]"):
        tabular.predict(pd.DataFrame([ROW]).drop(columns=["petal_width"]))
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['sepal_length'.*Note that there were extra inputs"):
        tabular.predict(np.zeros((2, 4)))  # plain rows carry no names: send a DataFrame
    # An extra column is dropped by MLflow with a warning (lifelong serve refuses it: see test_serving).
    assert len(tabular.predict(pd.DataFrame([{**ROW, "colour": 1.0}]))) == 1
    assert "Found extra inputs in the model input that are not defined in the model signature" in caplog.text
    images, _ = served["images"]
    with pytest.raises(MlflowException, match=r"Shape of input \(30, 31\) does not match expected shape \(-1, 1, 8, 8\)"):
        images.predict(np.zeros((30, 31), dtype=np.float32))
    with pytest.raises(MlflowException, match="dtype of input float64 does not match expected dtype float32"):
        images.predict(np.zeros((2, 1, 8, 8)))
    # What MLflow lets through reaches lifelong's own checks.
    with pytest.raises(InputError, match=r"instance 1, value \(0, 0, 3\): nan is not a finite float32 number"):
        images.predict(np.pad(np.full((1, 1, 1, 1), np.nan, dtype=np.float32), ((1, 0), (0, 0), (0, 7), (3, 4))))
    tasks, _ = served["tasks"]
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    with pytest.raises(InputError, match=r"instance 2: task id 5 is out of range; this model has 3 task heads, valid task ids are 0\.\.2"):
        tasks.predict({"x": x, "task": np.array([0, 1, 5])})
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['x', 'task'\]"):
        tasks.predict(x)
    named, _ = served["tasks_named"]
    with pytest.raises(InputError, match=r"this model has 3 task heads: give each instance a 'task' column \(0\.\.2\)"):
        named.predict(pd.DataFrame([ROW]))
    with pytest.raises(InputError, match="task id 3 is out of range"):
        named.predict(pd.DataFrame([{**ROW, "task": 3}]))


def test_pyfunc_task_models_predict_per_head(served):
    tasks, reference = served["tasks"]
    x = np.random.default_rng(2).random((6, 1, 8, 8), dtype=np.float32)
    task = np.arange(6) % 3
    with torch.no_grad():
        indices = reference(torch.from_numpy(x), torch.from_numpy(task)).argmax(1).numpy()
    expected = np.array(TASKS.class_names)[indices]  # every head shares the names of one head
    np.testing.assert_array_equal(tasks.predict({"x": x, "task": task}), expected)
    np.testing.assert_array_equal(tasks.predict(pd.DataFrame({"x": list(x.reshape(6, -1)), "task": task})), expected)
