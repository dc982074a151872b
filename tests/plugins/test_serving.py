"""``lifelong serve`` as a user runs it: real servers on 127.0.0.1, started and stopped by the tests.

Versions are registered cheaply in a temporary sqlite store (tests.fixtures.served_models): each
"iris" version's head is biased so that it predicts one class for every input, so an answer tells
which version scored it. One server follows ``iris@champion`` through the module; the tests move the
alias and wait (bounded) for the server to follow.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import cli
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.served_models import CLASSES, FEATURES, TABULAR, TASKS, mlp_state, register, spec_of

pytestmark = pytest.mark.slow

ROW = dict(zip(FEATURES, [5.1, 3.5, 1.4, 0.2]))
POLL = "0.1"
START_TIMEOUT = 90.0
FOLLOW_TIMEOUT = 30.0


class Served:
    """A ``python -m lifelong.cli serve`` subprocess in its own process group, with a small client."""

    def __init__(self, tmp: Path, uri: str, tracking_uri: str, *extra: str, env: dict | None = None):
        self.port = free_port()
        self.log = tmp / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lifelong.cli", "serve", uri, "--tracking-uri", tracking_uri,
             "--port", str(self.port), "--poll-seconds", POLL, *extra],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            start_new_session=True,
        )

    def request(self, method: str, path: str, body=None, timeout: float = 10.0) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body=None) -> tuple[int, dict]:
        status, data = self.request(method, path, body)
        return status, json.loads(data)

    def wait_for_health(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.request("GET", "/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start (exit status {self.process.poll()}):\n{self.log.read_text()}")
            time.sleep(0.05)

    def wait_until(self, predicate, what: str, timeout: float = FOLLOW_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def version(self) -> str:
        return self.json("GET", "/version")[1].get("version")

    def metrics(self) -> dict[str, float]:
        status, text = self.request("GET", "/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def stop(self) -> int:
        """SIGTERM, then the exit status (a clean stop is 0); SIGKILL to the group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
                pytest.fail(f"server ignored SIGTERM:\n{self.log.read_text()[-3000:]}")
        return self.process.returncode


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """iris v1-v3 (each predicting setosa, versicolor, virginica) with champion on v1; tasks v1."""
    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'store.db'}"
    client = MlflowClient(uri)
    spec = spec_of(TABULAR)
    for index in range(3):
        register(client, "iris", tmp / f"iris-{index + 1}", spec, mlp_state(spec, seed=index, favour=index))
    client.set_registered_model_alias("iris", "champion", "1")
    register(client, "tasks", tmp / "tasks-1", spec_of(TASKS), mlp_state(spec_of(TASKS), seed=0), alias="champion")
    return {"tmp": tmp, "uri": uri, "client": client}


@pytest.fixture(scope="module")
def server(store):
    # NullPool: every store call opens the sqlite file afresh, so a test can take the store away.
    served = Served(store["tmp"], "models:/iris@champion", store["uri"], env={"MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"})
    served.wait_for_health()
    # The port answers while the first version loads (importing MLflow alone takes over a second).
    served.first_ready = served.request("GET", "/ready")[0]
    served.wait_until(lambda: served.request("GET", "/ready")[0] == 200, "/ready")
    yield served
    assert served.stop() == 0, served.log.read_text()[-3000:]
    assert "Traceback" not in served.log.read_text()


def move(store, server, version: str) -> None:
    store["client"].set_registered_model_alias("iris", "champion", version)
    server.wait_until(lambda: server.version() == version, f"the server to follow champion to v{version}")


def test_ready_only_once_a_model_is_loaded(server):
    assert server.first_ready == 503
    assert server.json("GET", "/ready")[1] == {"ready": True, "version": "1"}


def test_predictions_are_class_names(server):
    shuffled = {k: ROW[k] for k in reversed(FEATURES)}
    status, body = server.json("POST", "/predict", {"instances": [ROW, shuffled]})
    assert status == 200, body
    assert body == {"predictions": ["setosa", "setosa"], "version": "1", "classes": CLASSES}
    status, body = server.json("POST", "/predict?probabilities=true", {"instances": [list(ROW.values())]})
    assert status == 200 and body["predictions"] == ["setosa"]
    assert len(body["probabilities"][0]) == 3 and abs(sum(body["probabilities"][0]) - 1) < 1e-5
    assert "probabilities" in server.json("POST", "/predict", {"instances": [ROW], "probabilities": True})[1]
    status, version = server.json("GET", "/version")
    assert status == 200
    assert version["name"] == "iris" and version["alias"] == "champion" and version["model_uri"] == "models:/iris/1"
    assert version["input"]["feature_names"] == FEATURES and version["classes"] == CLASSES


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"instances": [[5.1, 3.5, 1.4]]}, ("each instance must have the 4 features ['sepal_length', 'sepal_width', "
                                            "'petal_length', 'petal_width']; got 1 instance of 3 values")),
        ({"instances": [{**{k: v for k, v in ROW.items() if k != "petal_width"}, "petal_wdth": 0.2}]},
         "missing ['petal_width'] and unknown key ['petal_wdth']"),
        ({"instances": [{**ROW, "colour": 1.0}]}, "unknown key ['colour']"),
        ({"instances": [ROW], "task": 1}, "this model has a single head: send no 'task' key"),
        ({"instances": [{**ROW, "petal_width": "wide"}]}, "instance 0, feature 'petal_width': 'wide' is not a number"),
        ({"instances": []}, '"instances" must be a non-empty list'),
        ({"rows": [ROW]}, 'expected a JSON object {"instances": [...]}'),
        (b'{"instances": [[1, 2', "the body is not JSON"),
    ],
    ids=["width", "names", "extra", "task", "value", "empty", "key", "json"],
)
def test_bad_input_is_a_400_naming_what_was_expected(server, body, expected):
    status, answer = server.json("POST", "/predict", body)
    assert status == 400
    assert list(answer) == ["error"] and expected in answer["error"]


@pytest.fixture(scope="module")
def tasks_server(store):
    served = Served(store["tmp"], "models:/tasks@champion", store["uri"], "--max-wait-ms", "5")
    served.wait_for_health()
    served.wait_until(lambda: served.request("GET", "/ready")[0] == 200, "/ready")
    yield served
    assert served.stop() == 0, served.log.read_text()[-3000:]


def test_task_ids_are_checked(tasks_server):
    zeros = [[0.0] * 64] * 2
    status, body = tasks_server.json("POST", "/predict", {"instances": zeros, "task": [0, 2]})
    assert status == 200 and set(body["predictions"]) <= {"even", "odd"}
    status, body = tasks_server.json("POST", "/predict", {"instances": zeros, "task": [0, 3]})
    assert status == 400
    assert body["error"] == "instance 1: task id 3 is out of range; this model has 3 task heads, valid task ids are 0..2"
    status, body = tasks_server.json("POST", "/predict", {"instances": zeros})
    assert status == 400 and "this model has 3 task heads: give each instance a 'task' key (0..2)" in body["error"]
    status, body = tasks_server.json("POST", "/predict", {"instances": [{"x": z, "task": 1} for z in zeros]})
    assert status == 200, body


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(tasks_server):
    """64 requests of 1-3 different instances each, 16 at a time: every answer is its own rows' scores."""
    import numpy as np
    import torch
    from lifelong_models.mlp import MLP, MLPOptions

    spec = spec_of(TASKS)
    model = MLP(MLPOptions(hidden=spec.options["hidden"]), spec.info)
    model.load_state_dict(mlp_state(spec, seed=0))
    rng = np.random.default_rng(0)
    requests = []
    for i in range(64):
        x = rng.random((1 + i % 3, 64), dtype=np.float32)
        task = rng.integers(0, 3, len(x))
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x).view(-1, 1, 8, 8), torch.from_numpy(task)), 1).numpy()
        requests.append(({"instances": x.tolist(), "task": task.tolist(), "probabilities": True}, expected))
    before = tasks_server.metrics()
    answers: list = [None] * len(requests)

    def send(indices) -> None:
        for i in indices:
            answers[i] = tasks_server.json("POST", "/predict", requests[i][0])

    threads = [threading.Thread(target=send, args=(range(k, len(requests), 16),)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for (status, body), (_, expected) in zip(answers, requests):
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["probabilities"]), expected, rtol=1e-4, atol=1e-6)
    after = tasks_server.metrics()
    passes = after["lifelong_serve_batch_requests_count"] - before["lifelong_serve_batch_requests_count"]
    scored = after["lifelong_serve_batch_requests_sum"] - before["lifelong_serve_batch_requests_sum"]
    assert scored == len(requests)
    assert passes < len(requests)  # some forward passes scored several requests


def test_prometheus_metrics_parse(server):
    server.json("POST", "/predict", {"instances": [ROW]})
    samples = server.metrics()
    assert samples["lifelong_serve_model_version"] == float(server.version())
    assert samples["lifelong_serve_ready"] == 1
    assert samples["lifelong_serve_requests_total{endpoint=/predict,status=200}"] >= 1
    assert samples["lifelong_serve_requests_total{endpoint=/predict,status=400}"] >= 1
    assert samples["lifelong_serve_errors_total{endpoint=/predict,kind=input}"] >= 1
    assert samples["lifelong_serve_predictions_total{class=setosa}"] >= 1
    assert samples["lifelong_serve_request_seconds_count{endpoint=/predict}"] >= 2
    assert samples["lifelong_serve_batch_rows_count"] >= 1
    assert samples["lifelong_serve_model_info{alias=champion,name=iris,version=1}"] == 1
    assert samples["lifelong_serve_reload_failures_total{stage=load}"] == 0


def test_hot_swap_under_load_fails_no_request(store, server):
    """At least 2,000 requests over 16 connections while champion moves v1 -> v2 -> v3."""
    move(store, server, "1")
    expected = {"1": "setosa", "2": "versicolor", "3": "virginica"}
    lock = threading.Lock()
    answers: dict[str, int] = {}
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        body = json.dumps({"instances": [ROW]})
        try:
            while not done.is_set():
                try:
                    connection.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                    response = connection.getresponse()
                    answer = json.loads(response.read())
                    ok = response.status == 200 and answer["predictions"] == [expected[answer["version"]]]
                    outcome = answer["version"] if ok else f"{response.status}: {answer}"
                except Exception as exc:  # a dropped connection is a failed request too
                    outcome = f"{type(exc).__name__}: {exc}"
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                with lock:
                    count[0] += 1
                    if outcome in expected:
                        answers[outcome] = answers.get(outcome, 0) + 1
                    else:
                        failures.append(outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    try:
        server.wait_until(lambda: count[0] >= 300, "300 requests")
        store["client"].set_registered_model_alias("iris", "champion", "2")
        server.wait_until(lambda: "2" in answers, "answers from v2")
        store["client"].set_registered_model_alias("iris", "champion", "3")
        server.wait_until(lambda: "3" in answers and count[0] >= 2000, "answers from v3 and 2,000 requests")
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=15)
    assert not failures, failures[:5]
    assert set(answers) == {"1", "2", "3"} and sum(answers.values()) >= 2000
    assert server.metrics()["lifelong_serve_reloads_total"] >= 2


def test_a_bad_version_is_never_swapped_in(store, server):
    move(store, server, "3")
    client, tmp = store["client"], store["tmp"]
    spec = spec_of(TABULAR)
    corrupt = register(client, "iris", tmp / "iris-corrupt", spec, mlp_state(spec, seed=7))
    (tmp / "iris-corrupt" / "artifacts" / "weights.safetensors").write_bytes(b"\x00not safetensors")
    wrong_shapes = register(client, "iris", tmp / "iris-wide", spec, mlp_state(spec_of(TABULAR, hidden=[32]), seed=7))
    nan = mlp_state(spec, seed=7)
    nan["head.linear.bias"][:] = float("nan")
    not_finite = register(client, "iris", tmp / "iris-nan", spec, nan)
    before = server.metrics()
    for version, stage in ((corrupt, "load"), (wrong_shapes, "load"), (not_finite, "smoke")):
        key = f"lifelong_serve_reload_failures_total{{stage={stage}}}"
        seen = server.metrics()[key]
        client.set_registered_model_alias("iris", "champion", version)
        server.wait_until(lambda key=key, seen=seen: server.metrics()[key] > seen, f"v{version} to be refused ({stage})")
        status, body = server.json("POST", "/predict", {"instances": [ROW]})
        assert status == 200 and body["version"] == "3" and body["predictions"] == ["virginica"]
    after = server.metrics()
    assert after["lifelong_serve_reload_attempts_total"] == before["lifelong_serve_reload_attempts_total"] + 3
    time.sleep(10 * float(POLL))  # ten polls on the same refused version: not tried again
    assert server.metrics()["lifelong_serve_reload_attempts_total"] == after["lifelong_serve_reload_attempts_total"]
    assert server.version() == "3"
    log = server.log.read_text()
    assert f"version {corrupt} could not be loaded; still serving version 3" in log
    assert f"version {not_finite} failed its smoke test; still serving version 3" in log


def test_rollback_to_an_older_version_is_followed(store, server):
    move(store, server, "1")
    status, body = server.json("POST", "/predict", {"instances": [ROW]})
    assert status == 200 and body == {"predictions": ["setosa"], "version": "1", "classes": CLASSES}


def test_an_unreachable_store_is_counted_not_fatal(store, server):
    database = Path(store["uri"][len("sqlite:///"):])
    seen = server.metrics()["lifelong_serve_poll_failures_total"]
    away = database.with_suffix(".away")
    database.rename(away)
    database.mkdir()  # sqlite cannot open a directory: every poll fails
    try:
        server.wait_until(lambda: server.metrics()["lifelong_serve_poll_failures_total"] > seen, "a failed poll")
        status, body = server.json("POST", "/predict", {"instances": [ROW]})
        assert status == 200 and body["version"] == "1"
    finally:
        database.rmdir()
        away.rename(database)
    move(store, server, "2")  # and it follows the alias again once the store is back
    log = server.log.read_text()
    assert "polling models:/iris@champion failed (still serving version 1" in log
    assert "models:/iris@champion answers again" in log


def test_start_up_failures_exit_2_with_one_paragraph(store, tmp_path):
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lifelong.cli", "serve", *args, "--port", str(free_port())],
            check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    result = serve("models:/iris@nope", "--tracking-uri", store["uri"])
    assert result.returncode == 2
    assert "error: cannot serve models:/iris@nope from the MLflow store" in result.stderr
    assert "the registered model 'iris' has no alias 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
    result = serve("runs:/abc/model", "--tracking-uri", store["uri"])
    assert result.returncode == 2 and "give a registered model as models:/NAME@ALIAS" in result.stderr
    result = serve("models:/iris@champion", "--tracking-uri", f"sqlite:///{tmp_path / 'typo.db'}")
    assert result.returncode == 2 and "no MLflow store at" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_train_gate_serve_promote_and_roll_back_end_to_end(tmp_path):
    """The README's walk-through: a gated run, the server on its champion, a manual promote and a rollback."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ["learner.progress=false", "learner.strategies=['naive']", "promotion.max_forgetting=0.05"]
    trained = cli(
        "run", *[a for s in [*settings, f"tracking.mlflow.tracking_uri='{uri}'"] for a in ("--set", s)],
        "--summary", str(tmp_path / "summary.json"), cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["champion"]["passed"] == [0]  # naive forgets
    served = Served(tmp_path, "models:/lifelong@champion", uri)
    try:
        served.wait_for_health()
        served.wait_until(lambda: served.request("GET", "/ready")[0] == 200, "/ready")
        status, answer = served.json("POST", "/predict", {"instances": [[0.0] * 64]})
        assert status == 200 and answer["version"] == "1" and answer["predictions"][0] in answer["classes"]
        moved = cli("models", "promote", "lifelong", "3", "--reason", "checked by hand", "--tracking-uri", uri)
        assert moved.returncode == 0 and "failed the promotion gate" in moved.stderr, moved.stderr
        served.wait_until(lambda: served.version() == "3", "the server to follow the promotion to v3")
        back = cli("models", "rollback", "lifelong", "--reason", "v3 misbehaves", "--tracking-uri", uri)
        assert back.returncode == 0 and "champion: v3 -> v1" in back.stdout, back.stdout + back.stderr
        served.wait_until(lambda: served.version() == "1", "the server to follow the rollback to v1")
    finally:
        assert served.stop() == 0


def test_a_detector_answers_scores_and_flags_at_its_stored_threshold(tmp_path):
    """An anomaly detector's generation: each row's score and its flag at the threshold stored in its weights."""
    import torch
    from lifelong_anomaly.autoencoder import Autoencoder, AutoencoderOptions

    from lifelong.types import ModelSpec, StreamInfo

    info = StreamInfo(input_shape=(4,), num_classes=2, class_names=["normal", "anomaly"], labels=False)
    options = AutoencoderOptions(hidden=[8], latent=2, recent=100)
    torch.manual_seed(0)
    model = Autoencoder(options, info).eval()
    rows = torch.randn(6, 4)
    rows[5] *= 50.0  # far out
    with torch.no_grad():
        scores = model.anomaly_score(rows, model(rows))
    threshold = float(scores[:5].max()) + 1e-3
    model.threshold.fill_(threshold)
    spec = ModelSpec("autoencoder", {k: v for k, v in vars(options).items()}, info)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    register(MlflowClient(uri), "detector", tmp_path / "detector-1", spec, model.state_dict(), alias="champion")
    served = Served(tmp_path, "models:/detector@champion", uri)
    try:
        served.wait_for_health()
        served.wait_until(lambda: served.request("GET", "/ready")[0] == 200, "/ready")
        status, body = served.json("POST", "/predict", {"instances": rows.tolist()})
        assert status == 200, body
        assert body["anomaly"] == [False] * 5 + [True]
        assert body["threshold"] == pytest.approx(threshold)
        assert body["scores"] == pytest.approx(scores.tolist(), rel=1e-5)
    finally:
        assert served.stop() == 0, served.log.read_text()[-3000:]
