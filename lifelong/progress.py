"""The progress bar of a run (tqdm on stderr), and what keeps it in one piece.

``with progress_bar(plan, initial=0) as progress:`` yields the object the training loop calls:

- ``advance(n=1)``: n more batches done;
- ``status(loss=…, sps=…, generations=…, eval_acc=…)``: merge what is known into the one status
  line, always in the same style: ``loss 0.412 · 1830 samples/s · 4 generations · eval acc 0.912``
  (a field not known yet is left out);
- ``write(message)``: print a line above the bar without breaking it.

The bar counts ``plan.info.num_batches`` batches and starts at ``initial`` (a resumed run's batches
already done). With ``learner.progress = false`` the object is a :class:`NoProgress`: ``advance``
and ``status`` do nothing and ``write`` prints the line to stderr, so the loop never checks.

While the bar is shown, records of the ``mlflow`` and ``alembic`` loggers (and their children) are
printed above the bar through ``write`` at WARNING and above; lower ones (alembic's migration
notes, "Created version …") are dropped. MLflow's own event prints ("Successfully registered
model …") are silenced and its artifact progress bars are off
(``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``, unless the user has set it). MLflow is imported
here only if it is installed, so its own logging set-up runs before this takes the loggers over;
everything is restored when the bar closes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from typing import Any, Iterator

ROUTED_LOGGERS = ("mlflow", "alembic")
ARTIFACT_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
FIELDS = ("loss", "sps", "generations", "eval_acc", "eval_roc_auc")


def format_status(fields: dict[str, Any]) -> str:
    """The status line of ``fields`` (any of :data:`FIELDS`); fields absent or None are left out."""
    parts = []
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.3f}")
    if fields.get("sps") is not None:
        parts.append(f"{fields['sps']:.0f} samples/s")
    if fields.get("generations") is not None:
        n = int(fields["generations"])
        parts.append(f"{n} generation{'' if n == 1 else 's'}")
    if fields.get("eval_acc") is not None:
        parts.append(f"eval acc {fields['eval_acc']:.3f}")
    if fields.get("eval_roc_auc") is not None:  # an anomaly detector's run
        parts.append(f"eval ROC-AUC {fields['eval_roc_auc']:.3f}")
    return " · ".join(parts)


def _merge(kept: dict[str, Any], fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"status() got unknown fields {unknown} (known: {', '.join(FIELDS)})")
    for name, value in fields.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # unknown now (no batch trained since the last read): keep what was shown
        kept[name] = value


class NoProgress:
    """What ``progress_bar`` yields when ``learner.progress = false``: no bar, same methods."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def advance(self, n: int = 1) -> None:
        pass

    def status(self, **fields: Any) -> None:
        _merge(self.fields, fields)

    @property
    def text(self) -> str:
        return format_status(self.fields)

    def write(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


class Progress(NoProgress):
    """The run's tqdm bar, with one status style and a way to print above it."""

    def __init__(self, bar: Any):
        super().__init__()
        self.bar = bar

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def status(self, **fields: Any) -> None:
        _merge(self.fields, fields)
        self.bar.set_postfix_str(self.text)

    def write(self, message: str) -> None:
        self.bar.write(message, file=self.bar.fp)


class _WriteHandler(logging.Handler):
    """Prints log records above the bar, WARNING and above."""

    def __init__(self, write):
        super().__init__(logging.WARNING)
        self._write = write
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's artifact bars off (unless the user set them) and its event prints silenced."""
    try:
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR  # runs MLflow's logging set-up
        from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

        name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    except Exception:  # noqa: BLE001 - MLflow absent (or broken): nothing of it to quiet
        yield
        return
    set_here = name not in os.environ
    if set_here:
        os.environ[name] = "false"
    enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = enabled
        if set_here:
            os.environ.pop(name, None)


@contextlib.contextmanager
def route_logs(write) -> Iterator[None]:
    """Records of ``mlflow``/``alembic`` and their children go to ``write`` (WARNING and above) only."""
    handler = _WriteHandler(write)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for root in ROUTED_LOGGERS:
        logger = logging.getLogger(root)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
        children = [
            logging.getLogger(name)
            for name in list(logging.Logger.manager.loggerDict)
            if name.startswith(root + ".")
        ]
        for child in children:  # a child with its own handlers or cut off from its parent would bypass the bar
            if child.handlers or not child.propagate:
                saved.append((child, list(child.handlers), child.propagate))
                child.handlers = []
                child.propagate = True
    try:
        yield
    finally:
        for logger, handlers, propagate in reversed(saved):
            logger.handlers = handlers
            logger.propagate = propagate


@contextlib.contextmanager
def progress_bar(plan: Any, initial: int = 0) -> Iterator[NoProgress]:
    """The run's progress (see the module docstring); ``initial``: batches already done (resume)."""
    if not plan.learner.progress:
        yield NoProgress()
        return
    from tqdm import tqdm

    with _quiet_mlflow():
        bar = tqdm(
            total=plan.info.num_batches,
            initial=initial,
            unit="batch",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        progress = Progress(bar)
        try:
            with route_logs(progress.write):
                yield progress
        finally:
            bar.close()
