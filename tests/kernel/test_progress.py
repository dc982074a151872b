"""The run's progress bar: one status style, lines above the bar, and MLflow/alembic logs that do not break it."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from lifelong.progress import NoProgress, Progress, format_status, progress_bar

ARTIFACT_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def plan(progress: bool = True, num_batches: int | None = 40):
    return SimpleNamespace(learner=SimpleNamespace(progress=progress), info=SimpleNamespace(num_batches=num_batches))


def test_the_status_has_one_style_and_leaves_out_what_is_not_known():
    assert format_status({}) == ""
    assert format_status({"loss": 0.41234, "sps": 1830.4}) == "loss 0.412 · 1830 samples/s"
    assert format_status({"loss": 0.41234, "sps": 1830.4, "generations": 4, "eval_acc": 0.9123}) == (
        "loss 0.412 · 1830 samples/s · 4 generations · eval acc 0.912"
    )
    assert format_status({"generations": 1, "eval_acc": 0.5}) == "1 generation · eval acc 0.500"


def test_status_merges_fields_into_the_bar(capsys):
    with progress_bar(plan()) as progress:
        assert isinstance(progress, Progress)
        progress.status(loss=0.5, sps=1000.0)
        progress.status(generations=1, eval_acc=0.75)  # a boundary: training fields are kept
        progress.status(loss=0.25, sps=float("nan"))  # nan: unknown now, the last value stays
        assert progress.text == "loss 0.250 · 1000 samples/s · 1 generation · eval acc 0.750"
        assert progress.bar.postfix == progress.text
        with pytest.raises(TypeError, match="gen"):
            progress.status(gen=5)
        progress.advance(3)
        assert progress.bar.n == 3
    assert "1 generation · eval acc 0.750" in capsys.readouterr().err


def test_a_resumed_run_starts_its_bar_where_it_stopped():
    with progress_bar(plan(num_batches=40), initial=25) as progress:
        progress.advance()
        assert progress.bar.n == 26 and progress.bar.total == 40


def test_without_progress_the_object_does_nothing_but_write(capsys):
    before = [(logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in ("mlflow", "alembic")]
    with progress_bar(plan(progress=False)) as progress:
        assert type(progress) is NoProgress
        progress.advance(5)
        progress.status(loss=0.1, generations=2)
        progress.write("resumed from gen-0002")
        assert [(logging.getLogger(n).handlers, logging.getLogger(n).propagate) for n in ("mlflow", "alembic")] == before
    assert capsys.readouterr().err == "resumed from gen-0002\n"


def test_mlflow_info_is_dropped_and_warnings_are_written_above_the_bar(capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv(ARTIFACT_BARS, raising=False)
    import mlflow  # noqa: F401  (configures MLflow's loggers, as any run that tracks with it has)

    loggers = {name: logging.getLogger(name) for name in ("mlflow", "alembic", "alembic.runtime.migration")}
    before = {name: (list(lg.handlers), lg.propagate, lg.level) for name, lg in loggers.items()}
    capsys.readouterr()
    with progress_bar(plan()) as progress:
        assert os.environ[ARTIFACT_BARS] == "false"
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 451aebb31d03, add metric step")
        logging.getLogger("mlflow.tracking._model_registry.fluent").info("Created version '3' of model 'lifelong'.")
        logging.getLogger("mlflow.tracking.fluent").warning("the tracking server is slow")
        logging.getLogger("alembic").error("migration failed")
        progress.write("a line of our own")
        progress.advance()
    err = capsys.readouterr().err
    assert "Creating initial" not in err and "Running upgrade" not in err and "Created version" not in err
    assert "WARNING mlflow.tracking.fluent: the tracking server is slow\n" in err
    assert "ERROR alembic: migration failed\n" in err and "a line of our own\n" in err
    # restored: MLflow's own handlers print INFO again, and the variable is gone
    assert {name: (list(lg.handlers), lg.propagate, lg.level) for name, lg in loggers.items()} == before
    assert ARTIFACT_BARS not in os.environ
    logging.getLogger("mlflow.store.db.utils").info("after the bar")
    assert "after the bar" in capsys.readouterr().err


def test_a_users_artifact_bar_setting_is_kept(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv(ARTIFACT_BARS, "true")
    with progress_bar(plan()):
        assert os.environ[ARTIFACT_BARS] == "true"
    assert os.environ[ARTIFACT_BARS] == "true"


def test_loggers_are_restored_when_the_run_fails():
    mlflow_logger = logging.getLogger("mlflow")
    before = (list(mlflow_logger.handlers), mlflow_logger.propagate)
    with pytest.raises(RuntimeError):
        with progress_bar(plan()):
            raise RuntimeError("training failed")
    assert (list(mlflow_logger.handlers), mlflow_logger.propagate) == before
