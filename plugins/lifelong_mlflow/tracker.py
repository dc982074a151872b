"""The MLflow tracker: one MLflow run per pipeline run, every generation a registered model version.

What lands in MLflow:

- **run** (in ``experiment``, named ``run_name``): the resolved pipeline flattened into params
  (``learner.lr``, ``model.hidden`` …; values as JSON text, cut to MLflow's 6,000 characters) and in
  full as ``config.json``; tags ``lifelong.session`` (the session id), ``lifelong.plugin.<name>``
  (plugin versions), ``lifelong.device``, ``lifelong.scenario``, ``lifelong.model``, ``lifelong.seed``
  and, when the model continued from an earlier one, ``lifelong.continues``.
- **one run per session**: the run is looked up by its session tag before one is created, so a
  process that resumes a session (``run.session.resumed``) continues its run (status back to
  RUNNING, params not logged again, ``lifelong.resumed_step`` set). If that search itself fails
  (the store is down), nothing is created: a second run of the session would be worse than none.
- **metrics**: whatever ``on_metrics`` reports (loss, prequential accuracy, throughput,
  ``eval/…`` at boundaries) at step = stream batch, batched every ``flush_seconds`` and at every
  boundary; NaN and infinite values are skipped (they would break MLflow's charts). Each
  generation's row of the accuracy matrix as ``gen_acc/exp_<i>`` at step = generation index; at the
  end the summary (``acc``, ``bwt``, ``fwt``, ``forgetting`` …), ``summary.json`` and the
  accuracy-matrix heatmap.
- **generations**: each one a logged model ``generation-<index>`` (pyfunc with the strategies'
  state, see :mod:`lifelong_mlflow.pyfunc`) and, unless ``registered_model`` is empty, a new version
  of that registered model, both tagged ``lifelong.session``, ``lifelong.generation``,
  ``lifelong.parent`` (the parent generation's index in the session; for the first generation of a
  session that continued from an earlier model, that model's reference: ``models:/NAME/VERSION`` or
  a checkpoint path; else ``none``), ``lifelong.parent_session`` and ``lifelong.parent_generation``
  (when known), ``lifelong.experiences`` (the span's experience ids),
  ``lifelong.experiences_covered``, ``lifelong.samples``, ``lifelong.offsets`` and
  ``lifelong.acc.exp_<i>``. ``alias`` then points at it; MLflow reserves ``latest`` as its built-in
  alias of the newest version, so ``models:/<name>@latest`` needs no move. ``generation.records``
  gets ``run_id``, ``registered_model``, ``version``, ``model_uri``, ``model_id`` and, on the first
  generation of a continued session, ``continues`` (filled in when the run ends).
- **promotion** (with ``[promotion]`` on, :mod:`lifelong.promotion`): each version is also tagged
  with the gate's verdict and gets the alias ``challenger``; ``champion`` moves to it only when it
  passed, unless a person moved ``champion`` by hand after this run's last move (see
  :meth:`lifelong_mlflow.recorder.Recorder._promote`). ``alias`` may not be ``champion`` or
  ``challenger`` then (refused by ``validate``).
- **nothing twice**: every generation is looked up by its session and index before it is logged
  (:mod:`lifelong_mlflow.recorder`), so one registered by an earlier process of the session, or by
  an attempt whose answer a dying server never sent, is reused with its records.

**Off the training path: a durable outbox and a writer process.** After the preflight the training
process makes no MLflow call at all. The tracker appends entries to a durable outbox
(:mod:`lifelong_mlflow.outbox`): run start (only when the preflight could not make the run),
metric batches, each generation (its CPU state as safetensors), the run's end or failure. The
training thread only puts them on a queue: one thread of this process writes them to disk (piece
by piece, so it hardly holds the GIL) and fsyncs each. A writer *process*
(:mod:`lifelong_mlflow.outbox_writer`, started in ``on_run_start``) applies them to MLflow in
order, with retries and backoff, in its own interpreter: it never takes the training interpreter's
GIL, and an outage of the store only makes the outbox grow. Why not a thread: on one, logging a
generation cost training 50-85 % of its speed while it ran (the GIL), and a stuck HTTP call could
hold a boundary. The outbox lies in ``outbox`` when set; else in ``<checkpoint dir>/outbox`` when
``[checkpoint] dir`` is set (a ``--resume`` finds it there); else beside a sqlite store
(``<file>.outbox``); else in ``$XDG_CACHE_HOME/lifelong/outbox/<hash of the tracking URI>``.
Whatever a run could not send stays there and is sent by the next run of the tracker that uses the
same outbox (its writer drains other sessions' leftovers too), or by ``lifelong models drain``.

**Preflight.** ``on_run_start`` waits, before the first batch, for the store to answer and the run
to be created (or found) with its params and ``config.json``, for at most ``preflight_seconds``
(its requests time out after 5 s and are retried once; a fresh sqlite store gets its schema first,
under a file lock, and a half-migrated one is refused with the commands that repair it:
:mod:`lifelong_mlflow.store`). It runs in this process, before training, while the writer process
starts. If it fails, ``on_unreachable`` decides: ``"fail"`` (the default) raises
:class:`lifelong.errors.UserError`: exit status 2, nothing trained, the run (if it was created)
marked FAILED; a wrong URI or a server not started yet is the usual cause, and training for hours
into an outbox nobody drains would hide it. ``"outbox"`` trains and queues everything, the run's
creation included, for when the store answers; ``"continue"`` trains without recording anything.

**Never hanging on the store.** The training thread never waits on MLflow. It waits only for the
local disk: at most ``max_pending_generations`` generations (each holds CPU copies of the model
and the strategies' state) may wait to be written to the outbox; at that many a boundary waits for
one (back-pressure from a slow disk, not from MLflow), at most ``drain_seconds``; the total wait is
``backpressure_seconds`` in the result. At the end ``on_run_end`` waits for the writer to apply
everything for at most ``drain_seconds``; what is not applied by then stays in the outbox.

**The result says whether everything was recorded.** Besides ``run_id``, ``message`` and
``errors``, ``on_run_end`` returns ``complete`` (true only when the run exists, every generation
handed to the tracker was registered, and the run was closed FINISHED), ``unrecorded`` (the
indices of the generations that were not), ``outbox`` (its directory) and ``outbox_left`` (the
entries still in it). A run that was not closed stays RUNNING in MLflow, and the message says so.
A run stopped by SIGTERM/SIGINT (:class:`lifelong.errors.Interrupted`) ends KILLED with
``lifelong.stopped_by`` = the signal; any other error ends it FAILED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow

import lifelong
from lifelong import hookimpl
from lifelong.background import BackgroundWriter
from lifelong.checkpoint import split_tensors
from lifelong.errors import UserError
from lifelong.plan import say
from lifelong.run import Run
from lifelong.types import Generation
from lifelong_mlflow import outbox, registry, store
from lifelong_mlflow.options import MLflowOptions
from lifelong_mlflow.recorder import (  # noqa: F401 - re-exported: the names tests and other modules use
    MAX_TAG_LENGTH,
    SUMMARY_METRICS,
    Recorder,
    _text,
    describe_failure,
    flatten,
    generation_tags,
    mlflow_key,
    strategy_error,
    tag_filter,
    ui_hint,
)

WRITER_RESPAWNS = 3  # a writer process that died (a bug, the OOM killer) is started again this often
POLL_SECONDS = 0.05


class MLflowTracker(Recorder):
    """Tracker instance for one run; see the module docstring. Construction contacts nothing.

    It is a :class:`~lifelong_mlflow.recorder.Recorder` for its preflight only (creating or finding
    the run in this process, before training); everything after goes through the outbox.
    """

    def __init__(self, options: MLflowOptions):
        requirements = [
            f"lifelong=={lifelong.__version__}",
            f"mlflow=={mlflow.__version__}",
            "torch",  # the serving side picks its own build (CPU or CUDA); any torch >= 2.4 loads the weights
            "safetensors",
            "numpy",
            "pandas",
            *options.pip_requirements,
        ]
        super().__init__(options, requirements, [], None)
        self.log_seconds: list[float] = []  # the writer's time to log and register each generation
        self.log_intervals: list[tuple[float, float]] = []  # when (time.time()) the writer wrote each one
        self._appender: BackgroundWriter | None = None
        self._box: outbox.SessionBox | None = None
        self._append_lock: outbox.Lock | None = None
        self._process: subprocess.Popen | None = None
        self._respawns = 0
        self._seq = 0  # the next entry's number (used on the appender thread only)
        self._mine: dict[int, tuple[str, int | None]] = {}  # entries this process appended: seq -> (kind, index)
        self._terminal: int | None = None  # the seq of this process's end or fail entry
        self._pending: list[tuple[str, float, int, int]] = []
        self._last_flush = 0.0
        self._step = 0
        # Each generation's records dict (the kernel's own, filled from the writer's journal), by index.
        self._given_records: dict[int, dict[str, Any]] = {}
        self._resumed = False
        # Back-pressure: one permit per generation waiting to be written to the outbox.
        self._slots = threading.BoundedSemaphore(options.max_pending_generations)
        self.backpressure_seconds = 0.0
        # What was recorded: the generations handed over, those the writer applied, the status the run
        # was closed with; why tracking stopped early (a failed preflight going on, an abandoned appender).
        self._started = False
        self._given: list[int] = []
        self._recorded: set[int] = set()
        self._status: str | None = None
        self._offline: str | None = None
        self._left: str | None = None  # what the end's drain left in the outbox, said in the message
        self._left_count = 0
        self._errors: list[str] = []

    # -- training thread --------------------------------------------------------------------------
    @hookimpl
    def validate(self, run: Run) -> None:
        if run.promotion is not None and self.options.alias in (registry.CHAMPION, registry.CHALLENGER):
            raise ValueError(
                f"tracking.mlflow.alias = {self.options.alias!r} would move with every generation, but with "
                f"[promotion] on the gate moves {registry.CHALLENGER!r} to every version and {registry.CHAMPION!r} "
                "only to those that pass: set alias to 'latest' (or another name)"
            )

    @hookimpl
    def on_run_start(self, run: Run) -> None:
        self._started = True
        self._last_flush = time.monotonic()
        session = run.session
        self._session, self._resumed, self._strategies = session.id, session.resumed, run.strategies
        # Resolved once, so the run, its models and the printed hint all name the same store even if the
        # process's global tracking URI changes later.
        self._tracking_uri = self.options.tracking_uri or mlflow.get_tracking_uri()
        self._client = None
        tags = {f"lifelong.plugin.{name}": version or "unknown" for name, version in run.plugin_versions.items()}
        tags.update(
            {
                "lifelong.session": session.id,
                "lifelong.device": str(run.device),
                "lifelong.scenario": run.info.scenario,
                "lifelong.model": run.model_spec.name,
                "lifelong.seed": str(run.seed),
            }
        )
        if session.continues:
            tags["lifelong.continues"] = str(session.continues.get("ref"))
        config = json.loads(json.dumps(run.config, default=str))  # a private copy, plain data
        # The outbox and the writer process first: the writer imports MLflow while the preflight runs.
        box_problem = self._open_outbox(self._outbox_root(run))
        problem = self._preflight(config, tags, session.id, session.resumed, session.step) or box_problem
        if problem is None:
            self._write_state()
            self._command("go")
            return
        self._errors.append(problem)
        mode = self.options.on_unreachable
        if mode == "outbox" and box_problem is None:
            self._write_state()
            start = {"config": config, "tags": tags, "session": session.id, "resumed": session.resumed, "step": session.step}
            self._append("start", start)
            self._command("go")
            say(
                f"mlflow: {problem}; training, and keeping what it records in the outbox {self._box.dir} until the "
                "store answers (tracking.mlflow.on_unreachable = outbox)"
            )
            return
        self._close_outbox()
        if mode != "fail":
            self._offline = problem  # nothing more is sent to MLflow in this run
            say(f"mlflow: {problem}; training without recording it (tracking.mlflow.on_unreachable = {mode})")
            return
        self._started = False
        raise UserError(
            f"tracking.mlflow: {problem}. Nothing was trained. To train now and record once the store answers, set "
            'tracking.mlflow.on_unreachable = "outbox"; to train without recording, set '
            'tracking.mlflow.on_unreachable = "continue"'
        )

    def _outbox_root(self, run: Run) -> Path:
        """Where the outbox lies: the option, else beside the checkpoints, a sqlite store, or in the user's cache."""
        if self.options.outbox:
            return Path(self.options.outbox).expanduser()
        checkpoints = run.checkpoint_dir
        if checkpoints:
            return Path(checkpoints).expanduser() / "outbox"
        db = store.sqlite_path(self._tracking_uri)
        if db is not None:
            return db.with_name(db.name + ".outbox")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "lifelong" / "outbox" / hashlib.sha256(self._tracking_uri.encode()).hexdigest()[:16]

    def _open_outbox(self, root: Path) -> str | None:
        """Create this session's outbox, take it, start the writer process; why it could not, or None."""
        box = outbox.SessionBox(root, self._session)
        try:
            box.create()
            lock = outbox.Lock(box.dir / outbox.APPEND_LOCK)
            if not lock.acquire(0):
                return f"another process is running session {self._session} with the outbox {box.dir}"
            box.clean()
            # An earlier process of this session left its start, end or failure unsent: this process supersedes them.
            box.drop(("start", *outbox.TERMINAL))
            self._seq = box.next_seq()
        except OSError as exc:
            return f"cannot use the outbox {root} ({exc.strerror or exc}); set tracking.mlflow.outbox to a writable directory"
        self._box, self._append_lock = box, lock
        self._spawn()
        return None

    def _spawn(self) -> None:
        box = self._box
        command = [sys.executable, "-m", "lifelong_mlflow.outbox_writer", str(box.root), "--session", self._session]
        command += ["--parent", str(os.getpid()), "--wait-go"]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")  # the writer does no math worth a second core
        # A process group of its own: a Ctrl-C or a signal to the run's process group is the training
        # process's. Not a session of its own: where the kernel's autogroup scheduling is on (as on this
        # project's machines) each session is weighed as one group, and the writer's nice would rank it
        # only against itself, not against training (measured: 50 % of a shared CPU instead of 10 %; see
        # lifelong_mlflow.outbox_writer). Python 3.10 has no process_group: a session of its own there.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        with open(box.dir / outbox.LOG, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                cwd=os.getcwd(),
                env=env,
                **group,
            )

    def _command(self, word: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            process.stdin.write(f"{word}\n".encode())
            process.stdin.flush()

    def _write_state(self) -> None:
        """What the writer needs to apply this session's entries, and the run the preflight made."""
        state = self._box.read_state()
        state.update(
            {
                "format": outbox.FORMAT,
                "session": self._session,
                "tracking_uri": self._tracking_uri,
                "options": {
                    "experiment": self.options.experiment,
                    "registered_model": self.options.registered_model,
                    "alias": self.options.alias,
                    "run_name": self.options.run_name,
                },
                "requirements": self.requirements,
                "strategies": self._strategies,
            }
        )
        if self._run_id is not None:
            state.update(self.run_state())
        self._box.write_state(state)
        if self._appender is None:
            self._appender = BackgroundWriter("lifelong-mlflow-outbox")

    def _close_outbox(self) -> None:
        """Stop the writer and give the outbox back (removed when nothing is in it)."""
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            if self._terminal is not None and self._terminal in self._journaled():
                # Done: it exits at once; waiting for that keeps it from racing the removal below.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=5)
            self._process = None
        if self._box is not None:
            with contextlib.suppress(OSError):
                self._box.remove_if_done()
        if self._append_lock is not None:
            self._append_lock.release()
            self._append_lock = None

    def _preflight(self, config: dict[str, Any], tags: dict[str, str], session: str, resumed: bool, step: int) -> str | None:
        """Before the first batch: reach the store, create (or find) the run and write its params, in
        ``preflight_seconds``; why it failed, or None.

        A local sqlite store is prepared first under its lock (:func:`lifelong_mlflow.store.prepare`):
        a fresh one gets its schema, a half-migrated one is refused with its repair. The calls run on a
        thread of their own so the wait is bounded even when a request hangs.
        """
        uri, seconds = self._tracking_uri, self.options.preflight_seconds
        worker = BackgroundWriter("lifelong-mlflow-preflight")
        try:
            with store.bounded(store.HTTP_DEFAULTS):
                store.prepare(uri)
                worker.submit(self._start, config, tags, session, resumed, step)
                done = worker.wait(seconds)
                if done and worker.errors and self._run_id is not None and self.options.on_unreachable != "outbox":
                    # created, then a write failed: say so on the run (with "outbox" the writer finishes it)
                    worker.submit(self._fail, describe_failure(UserError(_last_line(worker.errors[-1]))))
                    worker.wait(seconds)
        except store.StoreError as exc:
            worker.close(0)
            return str(exc)
        if not done:
            worker.abandon()  # its daemon thread ends when the request does; it never holds the process
            self._run_id = None
            return (
                f"the MLflow store at {uri} did not answer within {seconds:g} s (tracking.mlflow.preflight_seconds); "
                "check that it is up and not overloaded"
            )
        errors = worker.close(seconds)
        if errors:
            self._run_id = None  # a half-made run is finished by the writer from its start entry, or marked FAILED
            return store.describe_error(_last_line(errors[0]), uri, _REMEDY)
        return None

    @hookimpl
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if not self._live():
            return
        now = int(time.time() * 1000)
        self._step = step
        self._pending.extend((key, value, now, step) for key, value in metrics.items())
        if time.monotonic() - self._last_flush >= self.options.flush_seconds:
            self._flush()

    @hookimpl
    def on_generation(self, generation: Generation) -> None:
        continues = getattr(generation, "continues", None)
        if continues:
            generation.records["continues"] = dict(continues)
        self._given.append(generation.index)
        if not self._live():
            return
        # The metrics reported so far go in the generation's entry (one entry, one set of fsyncs, per boundary).
        metrics, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        # Not the generation: its weights need not outlive the outbox write.
        self._given_records[generation.index] = generation.records
        if not self._slots.acquire(blocking=False):
            waited = time.perf_counter()
            free = self._slots.acquire(timeout=self.options.drain_seconds)
            self.backpressure_seconds += time.perf_counter() - waited
            if not free:  # the disk took no generation for drain_seconds: stop waiting for it
                self._appender.abandon()
                self._offline = (
                    f"the outbox {self._box.dir} took no generation for {self.options.drain_seconds:g} s "
                    "(tracking.mlflow.drain_seconds), so the run stopped recording"
                )
                say(f"mlflow: {self._offline}; training goes on")
                return
        self._appender.submit(self._append_generation, generation, metrics)

    @hookimpl
    def on_run_end(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        if not self._started:
            return None
        deadline = time.monotonic() + self.options.drain_seconds
        if self._live():
            self._flush()
            plain = json.loads(json.dumps(summary, default=str))
            plain["_step"] = self._step
            heatmap = summary.get("heatmap")
            files = {"accuracy_matrix.png": heatmap} if heatmap and Path(heatmap).is_file() else {}
            # The heatmap file is deleted once this hook returns: it is copied into the entry before that.
            self._appender.submit(self._append_end, plain, files)
        self._finish_outbox(deadline)
        return self._report(self._errors)

    @hookimpl
    def on_run_failed(self, error: BaseException) -> None:  # KILLED for Interrupted, else FAILED
        if not self._started:
            return
        if self._live():
            self._flush()
            self._appender.submit(self._append_terminal, "fail", {"error": describe_failure(error)})
        self._finish_outbox(time.monotonic() + self.options.drain_seconds)
        self._started = False

    def _live(self) -> bool:
        """Whether entries are still appended (not after a failed preflight going on, or an abandoned appender)."""
        return self._appender is not None and self._offline is None and not self._appender.abandoned

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._appender.submit(self._append, "metrics", {"metrics": batch})
        self._last_flush = time.monotonic()

    # -- the appender thread: local disk only ------------------------------------------------------
    def _append(self, kind: str, data: dict[str, Any], tensors=None, files=None, index: int | None = None) -> int:
        seq = self._seq
        self._box.append(seq, kind, data, tensors, files)
        self._mine[seq] = (kind, index)
        self._seq += 1
        return seq

    def _append_generation(self, generation: Generation, metrics: list | None = None) -> None:
        try:
            tensors = {"weights": generation.state}
            skeleton = None
            if generation.strategy_state:
                found: dict[str, Any] = {}
                try:
                    skeleton = split_tensors(generation.strategy_state, "", found)
                    json.dumps(skeleton, allow_nan=True)  # JSON and tensors, or not stored (the generation still is)
                    tensors["strategies"] = found
                except (TypeError, ValueError) as exc:
                    skeleton = None
                    self._errors.append(strategy_error(generation.index, exc))
            data = {
                "index": generation.index,
                "tags": generation_tags(generation, getattr(generation, "session", None) or self._session),
                "accuracy": {str(k): v for k, v in generation.accuracy.items()},
                "spec": generation.model_spec.to_dict(),
                "promotion": generation.promotion,
                "continues": getattr(generation, "continues", None),
                "strategy_skeleton": skeleton,
                "metrics": metrics or [],
            }
            self._append("generation", data, tensors, index=generation.index)
        finally:
            self._slots.release()

    def _append_end(self, summary: dict[str, Any], files: dict[str, str]) -> None:
        data = {"summary": summary, "heatmap": next(iter(files), None), "logging_errors": len(self._errors)}
        self._append_terminal("end", data, files)

    def _append_terminal(self, kind: str, data: dict[str, Any], files=None) -> None:
        self._terminal = self._append(kind, data, files=files)

    # -- the end: wait for the writer, read what it did ---------------------------------------------
    def _finish_outbox(self, deadline: float) -> None:
        """Wait (until ``deadline``) for the outbox write, then for the writer to apply this process's entries."""
        self._command("ended")  # training is over: the writer stops yielding the CPU to it (outbox_writer, "Priority")
        appender, self._appender = self._appender, None
        if appender is not None:
            errors = appender.close(max(0.0, deadline - time.monotonic()))
            self._errors.extend(f"outbox: {_last_line(e)}" for e in errors if e)
            if appender.abandoned and self._offline is None:
                self._offline = (
                    f"the outbox {self._box.dir} was not written within {self.options.drain_seconds:g} s "
                    "(tracking.mlflow.drain_seconds)"
                )
        if self._box is None:
            return
        while self._process is not None and time.monotonic() < deadline:
            if self._terminal is not None and self._terminal in self._journaled():
                break
            if not self._mine and not self._box.entries():
                break
            if self._process.poll() is not None:  # died: a bug or the OOM killer; its journal tells what it did
                if self._respawns >= WRITER_RESPAWNS:
                    self._errors.append(f"the outbox writer exited with status {self._process.returncode}; see {self._box.dir / outbox.LOG}")
                    break
                self._respawns += 1
                self._spawn()
                self._command("go")
                self._command("ended")
            time.sleep(POLL_SECONDS)
        self._read_journal()
        # An entry stays on disk for a moment after its journal line (the writer removes it next): not left.
        journaled = self._journaled()
        waiting = [e for e in self._box.entries() if e.seq not in journaled]
        left = [e for e in waiting if e.seq in self._mine]
        self._left_count = len(waiting)
        if left:
            word = "entry" if len(left) == 1 else "entries"
            self._left = (
                f"MLflow did not finish within {self.options.drain_seconds:g} s (tracking.mlflow.drain_seconds): "
                f"{len(left)} {word} left in the outbox {self._box.dir}, sent by the next run that uses it "
                f"(or: lifelong models drain {self._box.root})"
            )
            pending_error = self._writer_error()
            if pending_error:
                self._errors.append(pending_error)
        self._command("stop")
        self._close_outbox()

    def _journaled(self) -> set[int]:
        return {int(line["seq"]) for line in self._box.journal()}

    def _read_journal(self) -> None:
        for line in self._box.journal():
            seq = int(line["seq"])
            if seq not in self._mine:
                continue
            kind, index = self._mine[seq]
            result = line.get("result") or {}
            if not line.get("ok"):
                what = f"generation {index}" if kind == "generation" else f"the {kind} entry"
                self._errors.append(f"{what} was given up after retries: {_last_line(line.get('error', ''))}")
                continue
            if kind == "start" and result.get("run_id"):
                self._run_id, self._experiment_id = result["run_id"], result.get("experiment_id")
            elif kind == "generation" and index is not None:
                self._given_records.setdefault(index, {}).update(result.get("records") or {})
                self._recorded.add(index)
                if result.get("seconds") is not None:
                    self.log_seconds.append(float(result["seconds"]))
                    at = float(line.get("at", 0.0))
                    self.log_intervals.append((at - float(result["seconds"]), at))
            elif kind in outbox.TERMINAL:
                self._status = result.get("status")
                self._run_id = self._run_id or result.get("run_id")
        if self._run_id is None:  # made by an earlier process of the session (its start was applied then)
            self._run_id = self._box.read_state().get("run_id")

    def _writer_error(self) -> str | None:
        """The last failure the writer logged, to say why entries are left."""
        try:
            lines = (self._box.dir / outbox.LOG).read_text().splitlines()
        except OSError:
            return None
        failed = [line for line in lines if "failed, retrying" in line]
        return f"outbox writer: {failed[-1].split('] ', 1)[-1]}" if failed else None

    # -- result -----------------------------------------------------------------------------------
    def _report(self, errors: list[str]) -> dict[str, Any]:
        """``on_run_end``'s result: where the run is, whether every generation was recorded, and what failed.

        ``complete`` is true only when the run exists, every generation handed over was registered
        and the run was closed; ``unrecorded`` lists the generations that were not.
        """
        versions = sorted(
            r["version"] for i, r in self._given_records.items() if i in self._recorded and r.get("version") is not None
        )
        unrecorded = [index for index in self._given if index not in self._recorded]
        complete = (
            self._run_id is not None
            and self._status == "FINISHED"
            and not unrecorded
            and self._offline is None
            and self._left is None
        )
        result: dict[str, Any] = {
            "run_id": self._run_id,
            "experiment_id": self._experiment_id,
            "tracking_uri": self._tracking_uri,
            "registered_model": self.options.registered_model or None,
            "backpressure_seconds": round(self.backpressure_seconds, 6),
            "complete": complete,
            "unrecorded": unrecorded,
            "outbox": str(self._box.dir) if self._box is not None else None,
            "outbox_left": self._left_count,
        }
        if self._run_id is None and (self._offline or self._box is None or not self._left):
            first = self._offline or (_last_line(errors[0]) if errors else "unknown error")
            result["message"] = f"MLflow logging failed, nothing was recorded: {first}"
        else:
            parts = []
            if self._offline:
                parts.append(self._offline)
            if self._left:
                parts.append(self._left)
            if unrecorded:
                parts.append(f"generation(s) {_spans(unrecorded)} not recorded")
            if self._run_id is None:
                parts.append("the MLflow run is not created yet")
            elif self._status is None:
                parts.append("the run was not closed (MLflow shows it RUNNING)")
            elif self._status != "FINISHED":
                parts.append(f"the run was closed as {self._status}")
            if versions:
                span = f"v{versions[0]}" if len(versions) == 1 else f"v{versions[0]}-v{versions[-1]}"
                parts.append(f"registered {self.options.registered_model!r} {span}")
            if self._run_id is not None:
                parts.append(ui_hint(self._tracking_uri, self._experiment_id, self._run_id))
            if errors:
                parts.append(f"{len(errors)} MLflow call(s) failed (see trackers.mlflow.errors in the summary)")
            result["message"] = "; ".join(parts)
        if errors:
            result["errors"] = errors
        return result


_REMEDY = "start it, or set tracking.mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a store that is up"


def _last_line(text: str) -> str:
    """The exception line of a traceback (or the text's last line)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _spans(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2, 5"``."""
    parts, run = [], [indices[0]]
    for index in indices[1:]:
        if index == run[-1] + 1:
            run.append(index)
        else:
            parts.append(run)
            run = [index]
    parts.append(run)
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)
