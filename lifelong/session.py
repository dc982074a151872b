"""Execute a planned run as a session: open → stream/learn → (checkpoint)* → close | fail.

:class:`Runner` owns the loop: reader → learner step → boundary → consolidation → evaluation →
generation → trackers, with checkpoints written off the training thread. Its guarantees:

- From ``on_run_start`` on, exactly one of ``on_run_end`` / ``on_run_failed`` is called, for any
  exception, and for SIGTERM/SIGINT: the first signal finishes the batch in hand, writes a
  checkpoint and closes the trackers (``Interrupted``); a second one exits at once.
- A checkpoint (``[checkpoint] dir``) is taken at the end of a batch: after every generation, every
  ``every_batches`` batches and ``every_seconds`` seconds, when stopped by a signal, and at the
  end. The training thread only copies the state to the CPU; the checkpoint writer thread
  serialises, checksums and fsyncs it. While a write is in flight, a due checkpoint waits for the
  next batch instead of queueing, so at most one copy is ever held.
- A run resumed from a checkpoint continues exactly where it stopped: the reader seeks to the
  position of the last trained batch, and the model, optimizer, strategies, detector, RNGs,
  counters, accuracy matrix, test sets and the dead-letter file are restored. On the CPU the
  result is bit-identical to the uninterrupted run's.
- Memory stays bounded: a generation is handed to trackers and forgotten; only its summary row
  (index, parent, span, records) stays, and, with ``[promotion]`` on, the champion's weights.
- A batch whose loss or gradients are not finite is not applied (:mod:`lifelong.learner`); the
  session lists it (``skipped_batches`` in the summary: step, source and offsets), writes a line for
  its records to the dead letters when it reads the flags (``not_applied`` there), stops the run
  with :class:`lifelong.errors.Diverged` after ``learner.max_nonfinite_batches`` in a row, and
  never makes a generation of weights that are not finite (a BatchNorm's running statistics can
  take an overflow in the forward pass of a batch the guard then skips): the run stops instead.
- With ``[promotion]`` on, every generation is judged by the promotion gate
  (:mod:`lifelong.promotion`) before trackers see it: its verdict is ``generation.promotion``
  and its summary row's ``promotion``.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lifelong import checkpoint, distributed, metrics, report
from lifelong.background import BackgroundWriter
from lifelong.errors import Diverged, Interrupted
from lifelong.learner import Learner, build_optimizer, parameter_groups, prepare
from lifelong.objective import calibrated
from lifelong.plan import Plan, say
from lifelong.promotion import Gate
from lifelong.readers import Fetched, Prefetcher
from lifelong.rng import rng_state, set_rng_state
from lifelong.span import Span
from lifelong.testsets import TestSets
from lifelong.types import Batch, Experience, Generation


def optimizer_state(optimizer: Any) -> dict[str, Any]:
    """The optimizer's state_dict as CPU copies, with string keys (JSON) for its per-parameter state."""
    state = optimizer.state_dict()
    return {"state": {str(k): checkpoint.to_cpu(v) for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def load_optimizer_state(optimizer: Any, saved: dict[str, Any]) -> None:
    optimizer.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]})


MAX_LISTED = 100  # skipped batches listed in the summary (all are counted)
# The clock of training time (samples/s counts its seconds): wall time. A benchmark on a shared
# machine sets time.process_time to count this process's CPU time instead (bench/common.use_clock).
training_clock = time.perf_counter
POLL = 0.2  # seconds a data-parallel rank waits for a partitioned reader's batch before it steps without one
_END = object()  # a rank's stream has ended


def empty_batch(plan: Plan) -> Batch:
    """A batch of no samples shaped like the stream's (a rank's part in a step it has no batch for)."""
    info = plan.info
    dtype = getattr(plan.reader, "x_dtype", None)
    x_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype if dtype is not None else torch.float32
    task = torch.zeros(0, dtype=torch.long) if info.num_tasks > 1 else None
    return Batch(x=torch.zeros((0, *info.input_shape), dtype=x_dtype), y=torch.zeros(0, dtype=torch.long), task=task)


class Runner:
    """Executes a Plan; one instance per process."""

    def __init__(self, plan: Plan, progress: Any = None):
        self.plan = plan
        self.device = plan.device
        self.model = plan.model.to(self.device)
        snapshot = plan.resume_from
        if snapshot is not None and plan.world is not None:  # this rank's own position, memories, RNGs …
            snapshot.state = {**snapshot.state, **snapshot.state["ranks"][plan.world.rank]}
        if snapshot is not None:
            self.model.load_state_dict(snapshot.model_state)  # before the optimizer: frozen flags decide its groups
        lo = plan.learner
        self.optimizer = build_optimizer(lo.optimizer, parameter_groups(self.model, lo.lr), lo.lr, lo.momentum, lo.weight_decay)
        if snapshot is not None:
            load_optimizer_state(self.optimizer, snapshot.state["optimizer"])
        self.hooks = plan.hooks
        self.learner = Learner(self.model, self.optimizer, self.hooks, self.device, lo.precision)
        self.learner.metrics.recent_samples = lo.prequential_window
        if not self.learner.skips:
            say(
                f"the {lo.optimizer} optimizer has no fused kernels on {self.device}: batches with a non-finite loss "
                "or gradients are counted, but applied"
            )
        self.columns: list[int] = list(plan.info.experiences or [])
        self.test_sets = TestSets(plan.reader, self.model, self.device, lo.eval_batch_size, self.columns, keep=lo.eval_keep)
        # The objective's headline metric (accuracy, or a detector's ROC-AUC) makes the matrix; its other
        # metrics (PR-AUC) are kept beside it, row for row.
        self.objective = self.learner.objective
        self.metric = self.objective.metric
        self.matrix: list[dict[int, float]] = []
        self.initial: dict[int, float] = {}
        self.other_matrices: dict[str, list[dict[int, float]]] = {m: [] for m in self.objective.metrics if m != self.metric}
        self.other_initial: dict[str, dict[int, float]] = {m: {} for m in self.other_matrices}
        self.generations: list[dict[str, Any]] = []  # summary rows only: generations themselves are not kept
        self.last_generation: Generation | None = None  # the newest, until the next boundary (tests, benches)
        self.covered: list[int] = []
        self._streaming: int | None = None  # experience of the batch in hand; None before and after the stream
        self.samples_seen = 0  # stream samples, each counted once
        self.trained_samples = 0  # stream samples × passes over them (learner.epochs), what samples/s counts
        self.train_seconds = 0.0
        self.step = 0
        self.progress = progress
        self.span = Span(keep=lo.epochs > 1)
        self._clock: float | None = None  # start of the current stretch of training time
        self._position: Any = None  # the reader's position after the last trained batch
        self._dead_letter_mark: dict[str, int] | None = None
        self._signal: str | None = None
        self._deadline: float | None = None  # learner.max_seconds, on the monotonic clock
        self._prefetcher: Prefetcher | None = None
        self.quiet_seconds = 0.0  # waits for a source that had nothing to give: not training time
        self._quiet_seen = 0.0  # the prefetcher's quiet seconds already taken off the clock
        self._checkpoint_due = False
        self._last_checkpoint = time.monotonic()
        self.checkpoints_written = 0
        self._checkpointed_step: int | None = None  # step of the newest checkpoint submitted
        # Checkpoint, then commit: a reader that acknowledges records to its source (a broker) is told
        # each position once the checkpoint holding it is durable (see lifelong.readers).
        self._commit = getattr(plan.reader, "commit", None)
        self._wants_checkpoint = getattr(plan.reader, "checkpoint_wanted", None)
        self._rebalance_hold = getattr(plan.reader, "rebalance_hold", None)  # data-parallel ranks only
        self.commit_errors: list[str] = []
        self.checkpoint_path: Path | None = None
        self.world = plan.world  # None in a single process; rank 0 alone evaluates, checkpoints and tracks
        self.lead = plan.lead
        self.writer = BackgroundWriter("lifelong-checkpoint") if plan.checkpoint.dir and self.lead else None
        self.gate = Gate(plan.promotion) if plan.promotion is not None and self.lead else None
        # A data-parallel step shows its batch to the detector before the ranks agree (the detector's vote is
        # part of the agreement) and trains it after: a checkpoint in between holds the detector as it was
        # before that batch, or a resumed run, reading the batch again, would not see its boundary.
        self._detector_ahead: Any = None
        self._window: list[list[Any]] = []  # [step, source, start, stop, samples] of each stream batch since the last read
        self.skipped: list[list[Any]] = []  # the first MAX_LISTED skipped stream batches, as above
        self.skipped_count = 0
        self._skipped_run = 0  # skipped stream batches in a row, as of the last read
        # Data-parallel ranks: an empty batch is a rank's part in a step it has no batch for; a rank other than 0
        # commits its reader's positions (on a thread of its own) once rank 0 made their checkpoint durable.
        self._idle_batch = empty_batch(plan)
        self._durable_step = -1  # rank 0: the step of its newest durable checkpoint
        self._uncommitted: list[tuple[int, Any]] = []  # (step, position) checkpointed, not yet committed
        self.committer = BackgroundWriter("lifelong-commit") if not self.lead and self._commit is not None else None

    # -- evaluation and boundaries ----------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _boundary(self, started: float) -> float:
        """Finish the span: extra epochs, consolidation, evaluation, a new generation. Returns a new clock start."""
        span = self.span
        generator = torch.Generator().manual_seed(self.plan.learner.seed + len(self.generations))
        # Across ranks every rank takes as many steps as the rank with the most batches (a partitioned reader's
        # ranks may have different counts): the others take part in the extra steps with an empty batch.
        steps = self.world.most(len(span.batches)) if self.world is not None else len(span.batches)
        for _ in range(self.plan.learner.epochs - 1):
            order = torch.randperm(len(span.batches), generator=generator).tolist()
            for i in range(steps):
                batch = (span.batches[order[i]] if i < len(order) else self._idle_batch).to(self.device)
                self.trained_samples += self._train(batch, prequential=False)
        experience = span.experience(len(self.generations))
        if self.world is not None:  # the generation covers every rank's samples
            experience.samples = self.world.agree([span.samples])[0]
        self.learner.flush()
        self.hooks.on_boundary(experience=experience, model=self.model)
        self.hooks.on_experience_end(experience=experience, model=self.model)
        self._sync()
        self.train_seconds += training_clock() - started
        if not self.lead:  # rank 0 evaluates and makes the generation; the others go on training
            self.generations.append({"index": len(self.generations)})
            self.span = Span(keep=span.keep)
            return training_clock()

        for exp in span.experience_ids:
            if exp not in self.covered:
                self.covered.append(exp)
        rows = self.test_sets.evaluate(self.columns, self._streaming)
        row = rows[self.metric]
        self.matrix.append(row)
        for name, matrix in self.other_matrices.items():
            matrix.append(rows[name])
        generation = self._generation(experience, row)
        generation.scores = rows
        if self.gate is not None:
            self._judge(generation, row)
        eval_metrics = self._eval_metrics(rows)
        self.hooks.on_metrics(step=self.step, metrics=eval_metrics)
        self.hooks.on_generation(generation=generation)
        self._checkpoint_due = True
        if self.progress is not None:
            key = "acc" if self.metric == "accuracy" else self.metric
            self.progress.status(generations=len(self.generations), **{f"eval_{key}": eval_metrics.get(f"eval/{key}")})
        self.span = Span(keep=span.keep)
        return training_clock()

    def _eval_metrics(self, rows: dict[str, dict[int, float]]) -> dict[str, float]:
        """``eval/acc`` (a detector: ``eval/roc_auc``, ``eval/pr_auc``), the mean over the known sets, and
        ``eval/exp_<i>``, the headline metric per set."""
        out: dict[str, float] = {}
        for name, row in rows.items():
            if row:
                out["eval/acc" if name == "accuracy" else f"eval/{name}"] = sum(row.values()) / len(row)
        out.update({f"eval/exp_{exp}": value for exp, value in rows[self.metric].items()})
        return out

    def _generation(self, experience: Experience, row: dict[int, float]) -> Generation:
        session = self.plan.session
        index = len(self.generations)
        state = checkpoint.to_cpu(self.model.state_dict())
        broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:  # a boundary may synchronise: one check of every weight and buffer
            raise Diverged(
                f"generation {index} would have non-finite weights ({', '.join(broken[:5])}"
                f"{' …' if len(broken) > 5 else ''}), so it is not registered, promoted or served and the run "
                "stops: check the data for values that overflow, lower learner.lr, or lower a strategy's weight"
            )
        generation = Generation(
            index=index,
            parent=index - 1 if index else None,
            experience=experience,
            experiences_covered=list(self.covered),
            accuracy=row,
            model_spec=self.plan.model_spec,
            state=state,
            strategy_state={
                name: checkpoint.to_cpu(s.state_dict()) for name, s in self.plan.strategies.items() if hasattr(s, "state_dict")
            },
            session=session.id,
            continues=session.continues if index == 0 else None,
            metric=self.metric,
        )
        self.generations.append(
            {
                "index": index,
                "parent": generation.parent,
                "continues": generation.continues,
                "session": session.id,
                "experiences": experience.experience_ids,
                "experiences_covered": generation.experiences_covered,
                "samples": experience.samples,
                "offsets": experience.offsets,
                "records": generation.records,  # the same dict trackers fill on their threads
            }
        )
        self.last_generation = generation
        return generation

    def _judge(self, generation: Generation, row: dict[int, float]) -> None:
        """The gate's verdict on ``generation``, scored against the champion on the same held-out sets."""
        gate = self.gate
        compared = [exp for exp in generation.experiences_covered if exp in row]
        missing = gate.missing(compared)
        if missing:  # sets that appeared after the champion was made: score the champion on them now
            gate.champion.scores.update(self._score_with(gate.champion.state, missing, generation.state))
        verdict = gate.judge(row, compared, generation.experience.experience_ids)
        generation.promotion = verdict.to_dict()
        self.generations[-1]["promotion"] = generation.promotion
        if verdict.passed:
            gate.crown(generation.index, generation.state, row)  # shares the CPU copy trackers already have

    def _score_with(self, state: dict[str, torch.Tensor], experiences: list[int], current: dict[str, torch.Tensor]) -> dict[int, float]:
        """Scores of the weights ``state`` on ``experiences``, in the training model, which is then put
        back to ``current`` (its exact weights: a CPU copy taken after its last step).

        Loading the champion into the live model, rather than building a second module, scores
        exactly what the champion was (wrapped models, PathNet's path buffers, transfer heads) at
        the price of two weight copies per boundary that needs it.
        """
        self.model.load_state_dict(state)
        try:
            return self.test_sets.score(experiences)
        finally:
            self.model.load_state_dict(current)

    # -- checkpoints ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """Everything the session needs to go on, as CPU copies: taken on the training thread."""
        plan = self.plan
        # Experiences the stream has passed since the last boundary: a streamed reader that seeks past
        # them does not hand out their held-out sets again, so the checkpoint must carry them.
        self.test_sets.refresh(self.columns, self._streaming)
        return {
            "session": {"id": plan.session.id, "continues": plan.session.continues},
            "config": plan.resolved,
            "model_spec": plan.model_spec.to_dict(),
            "model": checkpoint.to_cpu(self.model.state_dict()),
            "optimizer": optimizer_state(self.optimizer),
            "strategies": {
                name: checkpoint.to_cpu(s.state_dict()) for name, s in plan.strategies.items() if hasattr(s, "state_dict")
            },
            "detector": self._detector_state(),
            "kernel": {
                "step": self.step,
                "samples_seen": self.samples_seen,
                "trained_samples": self.trained_samples,
                "train_seconds": self.train_seconds_now(),
                "quiet_seconds": self.quiet_seconds,
                # copies: the writer thread serialises this while training goes on and appends to them
                "columns": list(self.columns),
                "covered": list(self.covered),
                "matrix": [[[exp, acc] for exp, acc in row.items()] for row in self.matrix],
                "initial": [[exp, acc] for exp, acc in self.initial.items()],
                "other_matrices": {
                    name: [[[exp, v] for exp, v in row.items()] for row in rows] for name, rows in self.other_matrices.items()
                },
                "other_initial": {name: [[exp, v] for exp, v in row.items()] for name, row in self.other_initial.items()},
                "generations": [dict(row, records=dict(row["records"])) for row in self.generations],
                "streaming": self._streaming,
                "window": [list(entry) for entry in self._window],
                "skipped": [list(entry) for entry in self.skipped],
                "skipped_count": self.skipped_count,
                "skipped_run": self._skipped_run,
            },
            "reader": self._position,
            "dead_letters": self._dead_letter_mark or plan.dead_letters.mark(),
            "rng": rng_state(),
            "test_sets": self.test_sets.state(),
            "span": self.span.state(),
            "metrics": self.learner.metrics.state_dict(),
            "promotion": self.gate.state_dict() if self.gate is not None else None,
        }

    def _rank_state(self) -> dict[str, Any]:
        """What is each rank's own in a data-parallel run, under the keys of :meth:`_state` (a resumed rank
        merges its entry over the shared state)."""
        plan = self.plan
        return {
            "strategies": {
                name: checkpoint.to_cpu(s.state_dict()) for name, s in plan.strategies.items() if hasattr(s, "state_dict")
            },
            "detector": self._detector_state(),
            "reader": self._position,
            "dead_letters": self._dead_letter_mark or plan.dead_letters.mark(),
            "rng": rng_state(),
            "span": self.span.state(),
            "metrics": self.learner.metrics.state_dict(),
        }

    def _detector_state(self) -> Any:
        """The boundary detector's state as of the last trained batch (see ``_detector_ahead``)."""
        return self._detector_ahead if self._detector_ahead is not None else self._detector_now()

    def _detector_now(self) -> Any:
        state_dict = getattr(self.plan.detector, "state_dict", None)
        return checkpoint.to_cpu(state_dict()) if state_dict is not None else None

    def _restore(self, snapshot: checkpoint.Snapshot) -> None:
        """The session state of ``snapshot``, after ``on_run_start`` (model and optimizer are loaded already)."""
        state, plan = snapshot.state, self.plan
        for name, strategy in plan.strategies.items():
            if name in state["strategies"] and hasattr(strategy, "load_state_dict"):
                strategy.load_state_dict(state["strategies"][name])
        if state["detector"] is not None and hasattr(plan.detector, "load_state_dict"):
            plan.detector.load_state_dict(state["detector"])
        kernel = state["kernel"]
        self.step = int(kernel["step"])
        self.samples_seen = int(kernel["samples_seen"])
        self.trained_samples = int(kernel["trained_samples"])
        self.train_seconds = float(kernel["train_seconds"])
        self.quiet_seconds = float(kernel.get("quiet_seconds", 0.0))
        self.columns[:] = [int(c) for c in kernel["columns"]]
        self.covered = [int(c) for c in kernel["covered"]]
        self.matrix = [{int(exp): acc for exp, acc in row} for row in kernel["matrix"]]
        self.initial = {int(exp): acc for exp, acc in kernel["initial"]}
        for name, rows in kernel.get("other_matrices", {}).items():
            self.other_matrices[name] = [{int(exp): v for exp, v in row} for row in rows]
        for name, row in kernel.get("other_initial", {}).items():
            self.other_initial[name] = {int(exp): v for exp, v in row}
        self.generations = [dict(row) for row in kernel["generations"]]
        self._streaming = kernel["streaming"]
        self._window = [list(entry) for entry in kernel.get("window", [])]
        self.skipped = [list(entry) for entry in kernel.get("skipped", [])]
        self.skipped_count = int(kernel.get("skipped_count", 0))
        self._skipped_run = int(kernel.get("skipped_run", 0))
        self._position = state["reader"]
        self._dead_letter_mark = state["dead_letters"]
        self.test_sets.restore(state["test_sets"], snapshot.test_set)
        self.span = Span.from_state(state["span"])
        self.learner.metrics.load_state_dict(state["metrics"])
        if self.gate is not None and state.get("promotion") is not None:
            self.gate.load_state_dict(state["promotion"])

    def _maybe_checkpoint(self) -> None:
        """At the end of a batch: write a checkpoint when one is due and the writer is free."""
        if self._checkpoint_ready():
            self._write_checkpoint()

    def _checkpoint_ready(self) -> bool:
        """Whether a checkpoint is due and the writer is free (always False on a rank other than 0)."""
        options = self.plan.checkpoint
        if self.writer is None:
            return False
        if options.every_batches and self.step % options.every_batches == 0:
            self._checkpoint_due = True
        if options.every_seconds and time.monotonic() - self._last_checkpoint >= options.every_seconds:
            self._checkpoint_due = True
        if self._wants_checkpoint is not None and self._wants_checkpoint():
            self._checkpoint_due = True
        return self._checkpoint_due and not self.writer.busy()

    def _idle(self) -> None:
        """While the training thread waits for a batch: serve a reader that asked for a checkpoint.

        A Kafka reader losing partitions in a rebalance waits, inside its poll, until the records it
        handed out are checkpointed and committed; the batches it yielded are trained by now.
        """
        if self.writer is None or self._wants_checkpoint is None or not self._wants_checkpoint() or self.writer.busy():
            return
        if self._checkpointed_step != self.step:
            self._write_checkpoint()
        elif self._position is not None:
            self.writer.submit(self._commit_position, self._position)

    def _write_checkpoint(self, wait: bool = False) -> Path | None:
        """Submit a checkpoint of the state after the last batch to the writer thread; with ``wait``, until it is durable.

        Across ranks every rank calls it at the same step: each hands rank 0 what is its own (reader
        position, strategies' memories, RNGs, running metrics, span), and rank 0 writes them all in
        one checkpoint, as ``ranks``. The others return None.
        """
        options, session = self.plan.checkpoint, self.plan.session
        self.learner.flush()  # the strategies' memories hold every batch trained so far
        ranks = self.world.gather(self._rank_state()) if self.world is not None else None
        if not self.lead:
            self._checkpointed_step = self.step
            if self._commit is not None and self._position is not None:
                self._uncommitted.append((self.step, self._position))
            return None
        directory = Path(options.dir).expanduser()
        state, test_sets = self._state(), self.test_sets.unsaved()
        if ranks is not None:
            state["ranks"] = ranks
        path = directory / checkpoint.step_name(self.step)
        self.writer.submit(self._write_then_commit, directory, self.step, session.id, state, test_sets, options.keep)
        self._checkpointed_step = self.step
        self._checkpoint_due = False
        self._last_checkpoint = time.monotonic()
        self.checkpoints_written += 1
        self.checkpoint_path = path
        if wait:
            self.writer.drain()
        return path

    def _write_then_commit(self, directory: Path, step: int, session: str, state: dict[str, Any], test_sets: Any, keep: int) -> None:
        """On the writer thread: the checkpoint, durable, then the reader's commit of its position."""
        checkpoint.write(directory, step, session, state, test_sets, keep)
        self._durable_step = step  # read by the training thread, which tells the other ranks at the next step
        if state["reader"] is not None:
            self._commit_position(state["reader"])

    def _commit_position(self, position: Any) -> None:
        if self._commit is None:
            return
        try:
            self._commit(position)
        except Exception as exc:  # noqa: BLE001 - the next checkpoint commits again (commits are cumulative)
            message = f"{type(exc).__name__}: {exc}"
            if len(self.commit_errors) < MAX_LISTED:
                self.commit_errors.append(message)
            say(f"the reader could not commit its position (the next checkpoint commits again): {message}")

    # -- signals ----------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._signal is not None:
            say(f"{name} again: aborting at once, without a checkpoint")
            os._exit(128 + signum)
        self._signal = name
        say(f"{name}: finishing the batch, writing a checkpoint, closing the trackers ({name} again aborts at once)")

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _stop_on_signal(self) -> None:
        path = None
        if self.plan.checkpoint.dir:
            if self.writer is not None:
                self.writer.drain()
            path = self._write_checkpoint(wait=True)
            self._commit_ranks()
        raise Interrupted(self._signal or "a signal", str(path) if path else None)

    def _commit_ranks(self) -> None:
        """After the last checkpoint, made durable by rank 0: every other rank commits its position, and waits."""
        if self.world is None:
            return
        durable = self.world.agree([self._durable_step + 1 if self.lead else 0])[0]
        self._commit_durable(durable - 1)
        if self.committer is not None:
            self.committer.close()

    # -- the loop ---------------------------------------------------------------------------------------
    def _log(self, detector: Any) -> bool:
        values = self.learner.metrics.read()
        self._account_skipped(values.pop("skipped_in_window"))
        values["skipped_steps"] = float(values["skipped_steps"])
        values["samples_seen"] = float(self.samples_seen)
        values["samples_per_second"] = self.trained_samples / max(self.train_seconds_now(), 1e-9)
        self.hooks.on_metrics(step=self.step, metrics=values)
        if self.progress is not None:
            self.progress.status(loss=values["loss"], sps=values["samples_per_second"])
        observe = getattr(detector, "observe", None)
        return bool(observe(values)) if observe is not None else False

    def _account_skipped(self, skipped: list[int]) -> None:
        """List the window's skipped stream batches; stop when too many came in a row."""
        window, self._window = self._window, []
        for i in skipped:
            self.skipped_count += 1
            if len(self.skipped) < MAX_LISTED:
                self.skipped.append(window[i][:4])
            step, source, start, stop, *records = window[i]
            self.plan.dead_letters.not_applied_batch(
                step, source, start, stop, records[0] if records else None, f"not applied: stream batch {step} had a non-finite loss or gradients (the learner's guard)"
            )
        for i in range(len(window)):
            self._skipped_run = self._skipped_run + 1 if i in skipped else 0
        limit = self.plan.learner.max_nonfinite_batches
        if limit and self._skipped_run >= limit:
            step, source, start, stop = window[skipped[-1]][:4]
            raise Diverged(
                f"training diverged: {self._skipped_run} stream batches in a row had a non-finite loss or gradients "
                f"and were not applied (the last: stream batch {step}, {source} records {start}-{stop}). Lower "
                "learner.lr, check the data for values that overflow, or raise learner.max_nonfinite_batches"
            )

    def _warmup(self, fetched: Iterator[Fetched]) -> list[Fetched]:
        """The first stream batches holding the model's ``warmup_samples``, read before the run starts."""
        wanted = int(getattr(self.model, "warmup_samples", 0) or 0)
        taken: list[Fetched] = []
        while sum(len(f.batch) for f in taken) < wanted:
            item = next(fetched, None)
            if item is None:
                break
            taken.append(item)
        return taken

    def train_seconds_now(self) -> float:
        return self.train_seconds + (training_clock() - self._clock if self._clock is not None else 0.0)

    def _open(self, fetched: Iterator[Fetched]) -> list[Fetched]:
        """``on_run_start`` and what follows it: restored or continued state, the initial evaluation."""
        plan, snapshot = self.plan, self.plan.resume_from
        warmup = [] if snapshot is not None else self._warmup(fetched)
        run = plan.run_context(self.model, self.optimizer, Batch.concat([f.batch for f in warmup]) if warmup else None)
        self.hooks.on_run_start(run=run)
        if snapshot is not None:
            self._restore(snapshot)
            say(f"resumed session {plan.session.id} from {snapshot.path} (after stream batch {self.step})")
        else:
            for name, state in (plan.continued_strategies or {}).items():
                plan.strategies[name].load_state_dict(state)
            if plan.continued_strategies:
                say(f"continued the state of {sorted(plan.continued_strategies)} from {plan.session.continues['ref']}")
            if not self.lead:
                return warmup
            rows = self.test_sets.evaluate(self.columns, None)
            self.initial = rows[self.metric]
            for name in self.other_initial:
                self.other_initial[name] = rows[name]
            if self.gate is not None and plan.session.continues:
                # The model this run continued from is the champion its first generation must beat.
                self.gate.crown(plan.session.continues.get("ref"), checkpoint.to_cpu(self.model.state_dict()), self.initial)
        return warmup

    def execute(self, heatmap_path: str | Path | None = None) -> dict[str, Any]:
        """Run the session to its end and close it; returns the summary.

        Without ``heatmap_path`` the heatmap lives in a temporary directory only as long as the
        trackers need to log it, and the summary's ``heatmap`` is None.
        """
        plan = self.plan
        wall_start = time.perf_counter()
        snapshot = plan.resume_from
        if snapshot is not None:
            positions = [entry.get("reader") for entry in snapshot.state.get("ranks") or []]
            if positions and callable(getattr(plan.reader, "seek_ranks", None)):  # records may move between ranks
                plan.reader.seek_ranks(snapshot.state["reader"], positions)
            elif snapshot.state["reader"] is not None:  # None: checkpointed before the first batch
                plan.reader.seek(snapshot.state["reader"])
            kernel = snapshot.state["kernel"]  # the skipped batches of steps before its window are accounted for
            window = kernel.get("window") or [[int(kernel["step"]) + 1]]
            plan.dead_letters.restore(snapshot.state["dead_letters"], applied_before=int(window[0][0]))
        stream = Prefetcher(
            plan.reader, pin=self.device.type == "cuda", dead_letters=plan.dead_letters, transform=getattr(self.model, "prepare_host", None)
        )
        previous_handlers = self._install_signal_handlers()
        max_seconds = plan.learner.max_seconds
        self._deadline = time.monotonic() + max_seconds if max_seconds else None
        self._prefetcher = stream
        if self.world is None:
            fetched = stream.fetched(stopping=self._stopping, idle=self._idle)
        else:  # a rank with nothing from a partitioned reader must not hold the others' step
            fetched = stream.fetched(stopping=self._stopping, patience=POLL if getattr(plan.reader, "partitioned", False) else None)
        summary = None
        try:
            warmup = self._open(fetched)
            if self.world is not None:
                self.learner.data_parallel([self.device.index] if self.device.type == "cuda" else None)
            if snapshot is not None:
                set_rng_state(snapshot.state["rng"])  # last: nothing between here and the next batch draws
            if self.world is None:
                self._stream(itertools.chain(warmup, fetched))
            else:
                self._stream_ranks(fetched)
            if self.lead:
                summary = self._summary(time.perf_counter() - wall_start)
                summary = self._close(summary, heatmap_path)
            else:
                summary = self._rank_summary()
        except BaseException as error:
            self.hooks.on_run_failed(error=error)
            if self.writer is not None:
                self.writer.close()
            raise
        finally:
            stream.close()
            self._close_reader()
            plan.dead_letters.close()
            if self.world is not None:
                self.learner.single()
                self.world.close(finished=summary is not None)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        return summary

    def _stopping(self) -> bool:
        """Whether a wait for the next batch should end: a signal came, or ``max_seconds`` passed."""
        return self._signal is not None or (self._deadline is not None and time.monotonic() >= self._deadline)

    def _skip_quiet(self) -> None:
        """Move the training clock past the waits for a quiet source, so samples/s counts training only."""
        quiet = self._prefetcher.quiet_seconds if self._prefetcher is not None else 0.0
        if quiet != self._quiet_seen:
            if self._clock is not None:
                self._clock += quiet - self._quiet_seen
            self.quiet_seconds += quiet - self._quiet_seen
            self._quiet_seen = quiet

    def _close_reader(self) -> None:
        """The reader's ``close()``, once, after its thread stopped and the last commit was made."""
        close = getattr(self.plan.reader, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - the session's result stands; say what failed
            say(f"the reader did not close cleanly: {type(exc).__name__}: {exc}")

    def _stream(self, fetched: Iterator[Fetched]) -> None:
        plan = self.plan
        has_prepare = getattr(self.model, "prepare", None) is not None
        log_every, max_batches, max_records = plan.learner.log_every, plan.learner.max_batches, plan.learner.max_records
        detector = plan.detector
        self._clock = training_clock()
        for item in fetched:
            if (max_batches and self.step >= max_batches) or (max_records and self.samples_seen >= max_records):
                break
            if self._deadline is not None and time.monotonic() >= self._deadline:
                break
            self._skip_quiet()
            batch = item.batch
            self._streaming = batch.experience
            if batch.experience not in self.columns:
                self.columns.append(batch.experience)
            if detector.before_batch(batch) and self.span.count:
                self._clock = self._boundary(self._clock)
            on_device = batch.to(self.device)
            if has_prepare:
                on_device.x = prepare(self.model, on_device.x)
            self.span.add(on_device if has_prepare else batch)  # prepared inputs are what later epochs reuse
            self.learner.step(on_device)
            self.step += 1
            self.samples_seen += len(batch)
            self.trained_samples += len(batch)
            self._position, self._dead_letter_mark = batch.position, item.dead_letters
            self._window.append([self.step, batch.source, batch.start, batch.stop, len(batch)])
            if self.progress is not None:
                self.progress.advance(1)
            if self.step % log_every == 0 and self._log(detector) and self.span.count:
                self._clock = self._boundary(self._clock)
            self._maybe_checkpoint()
            if self._signal is not None:
                self._stop_on_signal()
        self._finish_stream()

    def _finish_stream(self) -> None:
        """After the last batch: a signal that came while waiting, the last span's boundary, the last checkpoint."""
        self._skip_quiet()
        signalled, spans = int(self._signal is not None), self.span.count
        if self.world is not None:
            signalled, spans = self.world.agree([signalled, spans])
        if signalled:  # the signal came while waiting for a batch
            self._signal = self._signal or "a signal on another rank"
            self._stop_on_signal()
        self._streaming = None
        if spans:
            self._clock = self._boundary(self._clock)
        self._log(None)
        self.train_seconds = self.train_seconds_now()
        self._clock = None
        if self.plan.checkpoint.dir:
            if self.writer is not None:
                self.writer.drain()
            self._write_checkpoint(wait=True)
            self._commit_ranks()

    def _train(self, batch: Batch, prequential: bool = True, total: int | None = None) -> int:
        """One optimizer step on ``batch`` (on the device); returns the samples it trained, over every rank.

        Across ranks, ``total`` is the step's samples over all of them (agreed on here when not given);
        a rank whose batch is empty still takes part in the step (:meth:`Learner.shadow`).
        """
        world = self.world
        if world is None:
            self.learner.step(batch, prequential)
            return len(batch)
        if total is None:
            total = world.agree([len(batch)])[0]
        try:
            if len(batch):
                self.learner.step(batch, prequential, scale=world.share(len(batch), total))
            else:
                self.learner.shadow(batch)
        except RuntimeError as exc:  # DDP's gradient all-reduce lost a rank
            if distributed.communication_failed(exc):
                raise distributed.lost(world, exc) from exc
            raise
        return total

    def _stream_ranks(self, fetched: Iterator[Fetched | None]) -> None:
        """The stream loop of a data-parallel rank: every step starts with one agreement of all ranks
        (:mod:`lifelong.distributed`) on whether to stop, checkpoint or end a span, and on how many
        samples the step trains, so that every rank takes every collective decision at the same step.

        A partitioned reader (a broker group) may have nothing for a rank while others have records:
        ``fetched`` then yields None, and the rank takes part in the step with an empty batch. When
        no rank has a batch the step is skipped; the stream ends when every rank's has ended.
        """
        plan, world = self.plan, self.world
        has_prepare = getattr(self.model, "prepare", None) is not None
        log_every, max_batches, max_records = plan.learner.log_every, plan.learner.max_batches, plan.learner.max_records
        detector = plan.detector
        drifted = False  # the running metrics asked for a boundary at the last log
        ended = False  # this rank's share of the stream has ended
        self._clock = training_clock()
        while True:
            if max_batches and self.step >= max_batches or max_records and self.samples_seen >= max_records:
                ended = True
            item = None if ended else next(fetched, _END)
            ended = ended or item is _END
            batch = item.batch if isinstance(item, Fetched) else None
            self._skip_quiet()
            wants = False
            if batch is not None:
                self._detector_ahead = self._detector_now()
                wants = bool(detector.before_batch(batch))
            late = self._deadline is not None and time.monotonic() >= self._deadline
            wanted = self._wants_checkpoint is not None and self._wants_checkpoint()  # a broker's rebalance
            hold = self._rebalance_hold() if self._rebalance_hold is not None else "free"
            has, done, samples, boundary, spans, signalled, stop, due, asked, durable, holding, ready = world.agree([
                int(batch is not None), int(ended), len(batch) if batch is not None else 0, int(wants or drifted),
                self.span.count, int(self._signal is not None), int(late), int(self._checkpoint_ready()), int(wanted),
                self._durable_step + 1 if self.lead else 0, int(hold == "holding"), int(ended or hold != "busy"),
            ])
            self._commit_durable(durable - 1)
            if holding and ready == world.size:  # every rank committed its revocation, or has none to make
                plan.reader.release_revocation()
            if signalled:
                self._signal = self._signal or "a signal on another rank"
                self._stop_on_signal()
            if stop or done == world.size:  # max_seconds, or every rank's share has ended
                break
            self._checkpoint_due = self._checkpoint_due or bool(asked)
            if due:
                self._write_checkpoint()
            if not has:  # no rank has a batch now (a quiet broker): nothing to train
                continue
            if batch is not None:  # after the checkpoint: it holds the session as of the last trained batch
                self._streaming = batch.experience
                if batch.experience not in self.columns:
                    self.columns.append(batch.experience)
            if boundary and spans:
                self._clock = self._boundary(self._clock)
                drifted = False
            on_device = (batch if batch is not None else self._idle_batch).to(self.device)
            if has_prepare:
                on_device.x = prepare(self.model, on_device.x)
            if batch is not None:
                self.span.add(on_device if has_prepare else batch)
            self.trained_samples += self._train(on_device, total=samples)
            self._detector_ahead = None
            self.step += 1
            self.samples_seen += samples
            if batch is not None:
                self._position, self._dead_letter_mark = batch.position, item.dead_letters
            if batch is not None and len(batch):  # the running metrics count the steps that trained samples
                self._window.append([self.step, batch.source, batch.start, batch.stop, len(batch)])
            if self.progress is not None:
                self.progress.advance(1)
            if self.step % log_every == 0 and self._log(detector):
                drifted = True
        self._finish_stream()

    def _commit_durable(self, step: int) -> None:
        """On a rank other than 0: commit (on the commit thread) the newest position whose checkpoint rank 0
        made durable, ``step`` being the step of rank 0's newest durable checkpoint (-1: none yet)."""
        if self.lead or self._commit is None:
            return
        ready = [position for written, position in self._uncommitted if written <= step]
        if ready:
            self._uncommitted = [(written, position) for written, position in self._uncommitted if written > step]
            self.committer.submit(self._commit_position, ready[-1])

    # -- the end ----------------------------------------------------------------------------------------
    def _summary(self, wall: float) -> dict[str, Any]:
        columns = self.columns
        matrix = [[row.get(exp) for exp in columns] for row in self.matrix]
        initial_row = [self.initial.get(exp) for exp in columns]
        final = self.learner.metrics.read()
        aligned = metrics.aligned([row["experiences"] for row in self.generations], columns)
        keys = metrics.names(self.metric)
        summary: dict[str, Any] = {
            "metric": self.metric,
            keys["matrix"]: matrix,
            "experiences": columns,
            keys["initial"]: initial_row,
            **metrics.summarize(matrix, initial_row, aligned, self.metric),
        }
        for name, rows in self.other_matrices.items():
            summary[f"{name}_matrix"] = [[row.get(exp) for exp in columns] for row in rows]
            summary[f"initial_{name}"] = [self.other_initial[name].get(exp) for exp in columns]
            summary[f"avg_{name}"] = metrics.acc(summary[f"{name}_matrix"])
        if self.metric == "accuracy":
            summary["prequential_accuracy"] = final["prequential_accuracy"] if self.samples_seen else None
            summary["prequential_accuracy_recent"] = final["prequential_accuracy_recent"] if self.samples_seen else None
        else:
            auc = final[keys["prequential"]]
            summary[keys["prequential"]] = None if auc != auc else auc  # NaN: no labelled stream sample of each class
            summary.update(self._at_threshold())
        summary.update({
            "samples_seen": self.samples_seen,
            "trained_samples": self.trained_samples,
            "samples_per_second": self.trained_samples / self.train_seconds if self.train_seconds else 0.0,
            "training_seconds": self.train_seconds,
            "quiet_seconds": self.quiet_seconds,
            "wall_seconds": wall,
            "device": str(self.device),
            "ranks": self.world.size if self.world is not None else 1,
            "session": self.plan.session.id,
            "resumed_from": str(self.plan.resume_from.path) if self.plan.resume_from is not None else None,
            "continues": self.plan.session.continues,
            "generations": self.generations,
            "champion": self._champion(),
            "skipped_batches": {
                "count": self.skipped_count,
                "steps": final["skipped_steps"],  # every skipped update, extra epochs included
                "listed": [dict(zip(("step", "source", "start", "stop"), entry)) for entry in self.skipped],
            },
            "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
            "dead_letters": self.plan.dead_letters.summary(),
            "reader": self._reader_counts(),
            "config": self.plan.resolved,
        })
        if self.commit_errors:
            summary["commit_errors"] = self.commit_errors
        return summary

    def _rank_summary(self) -> dict[str, Any]:
        """What a rank other than 0 returns: rank 0's summary has the run's results."""
        return {"rank": self.world.rank, "ranks": self.world.size, "steps": self.step, "session": self.plan.session.id}

    def _at_threshold(self) -> dict[str, Any]:
        """A detector's threshold and its precision, recall, F1 and false-alarm rate on every held-out set together."""
        sets = [self.test_sets[exp] for exp in self.test_sets]
        stats = self.objective.at_threshold(self.model, sets, self.device, self.plan.learner.eval_batch_size)
        return {
            "threshold": calibrated(stats["threshold"]),
            **{k: stats[k] for k in ("precision", "recall", "f1", "false_alarm_rate")},
            "test_counts": {"anomalies": stats["anomalies"], "normals": stats["normals"]},
        }

    def _reader_counts(self) -> dict[str, int] | None:
        """What the reader counted (unlabeled records, held out, …) as of the last trained batch."""
        counts = getattr(self.plan.reader, "counts", None)
        return dict(counts(self._position)) if counts is not None else None

    def _champion(self) -> dict[str, Any] | None:
        """With the gate on: the champion's label and how many generations passed; else None."""
        if self.gate is None:
            return None
        passed = [row["index"] for row in self.generations if (row.get("promotion") or {}).get("passed")]
        label = self.gate.champion.label if self.gate.champion is not None else None
        return {"champion": label, "passed": passed, "judged": len(self.generations)}

    def _close(self, summary: dict[str, Any], heatmap_path: str | Path | None) -> dict[str, Any]:
        """Draw the heatmap, let trackers finish, and merge what they report into the summary."""
        with tempfile.TemporaryDirectory(prefix="lifelong-") as tmp:
            path = Path(heatmap_path) if heatmap_path is not None else Path(tmp) / "accuracy_matrix.png"
            summary["heatmap"] = str(report.heatmap(summary, path)) if summary[metrics.names(self.metric)["matrix"]] else None
            errors = [f"checkpoint: {e}" for e in self.writer.close()] if self.writer is not None else []
            summary["trackers"] = {}
            # Called one by one (in hook order) so each result stays attached to its tracker's name;
            # what the model's own hooks report goes under "model".
            for impl in reversed(self.hooks.on_run_end.get_hookimpls()):
                result = impl.function(summary=summary)
                if result:
                    kind, name = impl.plugin_name.split(":", 1)
                    if kind == "model":
                        summary["model"] = result
                    else:
                        summary["trackers"][name] = result
            if heatmap_path is None:
                summary["heatmap"] = None
        summary["generations"] = [
            {**{k: v for k, v in row.items() if k != "records"}, **row["records"]} for row in self.generations
        ]
        if errors:
            summary["errors"] = errors
        return summary
