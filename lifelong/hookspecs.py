"""Every hook of lifelong, in two families.

**Registration hooks** are called once, when the plugin host starts, on plugin modules. Each gets a
``register`` callable; a plugin calls it once per component::

    register(name, factory, options=OptionsDataclass, help="one line")

The factory's signature depends on the kind of component (see each hook). ``options`` is a
dataclass whose typed fields and defaults are the component's options schema
(:mod:`lifelong.options`); the factory receives a validated instance of it.

**Lifecycle hooks** are called during one run, on the strategy and tracker *instances* created for
that run (each instance is registered in a run-scoped plugin manager). Strategies never call each
other; they answer these hooks and the kernel combines the answers as each docstring says. The
per-batch hooks (``augment_batch``, ``extra_loss``, ``before_optimizer_step``, ``after_step``) run on
the training thread for every batch: they must not synchronise with the device (no ``.item()``,
``.cpu()``, printing tensors) nor do blocking I/O.

**Order.** Every lifecycle hook calls its implementations in one fixed order: the model's own hooks
(``lifecycle_hooks()``) first, then the strategies in ``learner.strategies`` order, then the
trackers in ``tracking.trackers`` order; ``tryfirst``/``trylast`` move an implementation to the
front or the back (``before_optimizer_step`` masks are ``trylast``). Results that are lists
(``augment_batch``, ``extra_loss``) come in that order.

**The session.** A run is ``validate → open → stream/learn → (checkpoint)* → close | fail``:
``validate`` is called before anything is opened; from ``on_run_start`` on, exactly one of
``on_run_end`` and ``on_run_failed`` follows, for any exception and for SIGTERM/SIGINT. A run
resumed with ``--resume`` is the same session in a new process: ``on_run_start`` is called again,
with ``run.session.resumed`` set, and every component's ``load_state_dict`` then receives the
state its ``state_dict`` gave at the checkpoint (strategies, the boundary detector).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import torch

    from lifelong.run import Run
    from lifelong.types import Batch, Experience, Generation, ModelSpec

hookspec = pluggy.HookspecMarker("lifelong")

Register = Callable[..., None]


class RegistrationSpecs:
    """Called once at start-up on plugin modules."""

    @hookspec
    def register_readers(self, register: Register) -> None:
        """Register stream readers.

        Factory: ``factory(options, context: lifelong.readers.ReaderContext) -> Reader``, where a
        Reader has ``info() -> StreamInfo``, ``__iter__() -> Iterator[Batch]`` (the training stream,
        in order) and ``test_set(experience_id) -> Batch | None`` (held-out data of an experience,
        or None while it is not known yet). Missing files and bad options must raise
        ``lifelong.errors.UserError`` from the factory, before training starts.

        **Position contract** (what makes ``lifelong run --resume`` possible): a resumable reader
        stamps every batch with ``Batch.position``, plain JSON data saying where the stream stands
        right after that batch, and offers ``seek(position)``, called once before ``__iter__``, after
        which the stream yields exactly the batches an uninterrupted run would have yielded after
        that one. A position accounts for every record before it: trained, held out, or sent to the
        dead letters (the kernel saves the dead-letter file's length taken right after the reader
        yielded the batch, and cuts the file back to it on resume, so a reader writes the dead
        letters of the records before a batch before yielding it, and none after). Held-out data
        the reader handed out before the position is kept by the kernel; data it holds back for
        an experience not finished yet must be rebuilt by ``seek``. ``csv`` and ``text`` seek by
        byte offset and line, ``npz`` and the benchmarks by record index. A reader without
        ``seek`` still runs and checkpoints, but ``--resume`` refuses it with exit status 2.

        **Checkpoint, then commit** (readers of a broker): optional ``commit(position)``, called on
        the checkpoint writer's thread once the checkpoint holding ``position`` is durable (offsets
        are committed, records acknowledged, only then); ``close()``, once at the end of the
        session; ``checkpoint_wanted()``, polled on the training thread, True to ask for a
        checkpoint now (a rebalance); ``rebalance_hold()`` and ``release_revocation()``, for
        data-parallel ranks to let revoked partitions go together; ``counts(position)``, what the
        reader counted up to there, shown as the summary's ``reader``. A reader with ``commit``
        needs ``[checkpoint] dir``. The full contract is in :mod:`lifelong.readers`.
        """

    @hookspec
    def register_models(self, register: Register) -> None:
        """Register models and initializers (from scratch, from a backbone, from a generation).

        Factory: ``factory(options, info: StreamInfo) -> torch.nn.Module``; a factory that builds
        other registered models (an initializer, a wrapper) declares a keyword parameter
        ``components`` and receives the run's :class:`lifelong.components.Components`. The module's
        ``forward(x)`` returns logits of shape (N, info.num_classes); in the task-incremental
        scenario (``info.num_tasks > 1``) it is called as ``forward(x, task)`` with a per-sample task
        id tensor and returns the logits of each sample's own head.

        Optional members of the module, each used by the kernel when present:

        - ``prepare(x) -> x'``: a frozen, deterministic input transform (a frozen backbone's
          features: bottleneck caching). The kernel applies it once to every stream batch and
          test set as they arrive, and everything downstream (the step, extra epochs, replay
          memories, strategies, evaluation, served generations) sees and stores prepared inputs;
          ``forward`` takes prepared inputs.
        - ``prepare_host(x) -> x'``: the host-side part of that transform (a text model's
          tokenizer: bytes to token ids), CPU tensor in, CPU tensor out, deterministic and
          thread-safe. The kernel runs it on the reader thread, before a batch is pinned and copied
          to the device, so the training thread never waits for it; held-out sets go through it
          before ``prepare`` too. ``prepare`` then receives its output and must not redo the work,
          yet still accept raw inputs, which it gets wherever ``prepare_host`` was not called
          (served generations, a model wrapping this one): a tokenizer tells token ids (int64) from
          bytes (uint8, or floats when served) by their dtype.
        - ``param_groups(lr) -> list[dict]``: the optimizer's parameter groups (discriminative
          learning rates); by default one group of every parameter that requires a gradient.
        - ``model_spec``: a ModelSpec that rebuilds the module, when that is not simply this
          component with these options (an initializer that continues from a stored generation).
        - ``lifecycle_hooks()``: an object implementing lifecycle hooks for this run (gradual
          unfreezing at boundaries), registered beside the strategies.
        - ``warmup_samples``: how many of the first stream samples the model wants to see before
          the run starts (a decision that depends on the data, such as transfer's ``auto``). The
          kernel reads them ahead, hands them to ``on_run_start`` as ``run.warmup`` (on the CPU,
          through ``prepare_host`` when the model has one, not ``prepare``) and then streams them
          like any other samples. A resumed run has no warm-up.
        - ``continues`` and ``continued_state``: set by initializers that continue from a stored
          generation (``{"ref", "session", "generation"}`` and ``{"strategies": {name: state}}``);
          the kernel records ``continues`` as the first generation's parent and restores the
          strategies' state when ``learner.continue_strategies`` is on and the lists match.

        **Anomaly detectors** (:mod:`lifelong.objective`): a module with ``anomaly_score`` learns
        without labels and is judged by ROC-AUC and PR-AUC instead of accuracy. Its ``forward(x)``
        returns any outputs (a reconstruction); ``sample_loss(x, outputs)`` gives the per-sample
        training loss the kernel minimises (strategies' terms are added as for classifiers);
        ``anomaly_score(x, outputs)`` the per-sample score, higher is more anomalous (with
        ``scores_from_loss = True`` the detector says the score *is* ``sample_loss`` detached, and a
        training step takes the scores from the loss it computed instead of calling it);
        ``sample_weights(x, scores)`` (optional) 1 for a sample to learn from, 0 to leave it out of
        the update and out of every memory (a contamination filter, a calibration hold-out); and a ``threshold`` buffer: a score
        above it flags an anomaly, in the summary and in served generations. It recalibrates the
        threshold itself, in its own ``lifecycle_hooks()``. It is never wrapped for
        ``normalize``: it standardises its inputs itself.
        """

    @hookspec
    def register_strategies(self, register: Register) -> None:
        """Register learning strategies (naive, replay, EWC, …).

        Factory: ``factory(options) -> object``; the object implements any lifecycle hooks below
        with ``@lifelong.hookimpl`` and may offer ``state_dict()`` / ``load_state_dict(state)`` so
        checkpoints and generations carry its state.

        Data-parallel runs (``WORLD_SIZE`` set: ``lifelong run --nproc``, torchrun) accept only
        strategies whose factory declares ``data_parallel``, a short text saying how it trains
        across ranks (shown by ``lifelong plugins``); any other is refused with exit status 2 before
        a rank joins. Under data parallelism every rank runs every hook on its own share of the
        stream, and ``state_dict()`` is taken from every rank into the checkpoint. A strategy that
        must combine what ranks computed does it at a boundary, where every rank calls
        ``on_boundary`` at the same step, with ``run.world.average(tensors, weight)`` (EWC's Fisher).
        """

    @hookspec
    def register_trackers(self, register: Register) -> None:
        """Register trackers that record runs and generations (MLflow, …).

        Factory: ``factory(options) -> object`` implementing lifecycle hooks, typically
        ``on_run_start``, ``on_metrics``, ``on_generation`` and ``on_run_end``. Trackers must not do
        blocking I/O on the training thread: hand work to a thread of their own and finish it in
        ``on_run_end``.
        """

    @hookspec
    def register_boundary_detectors(self, register: Register) -> None:
        """Register boundary detectors that decide where one generation ends.

        Factory: ``factory(options) -> detector`` with ``before_batch(batch) -> bool`` (True: a
        boundary lies before this batch) and optionally ``observe(metrics: dict) -> bool`` (called
        with host-side running metrics every ``learner.log_every`` batches; True: boundary now) and
        ``state_dict()`` / ``load_state_dict(state)`` so checkpoints carry it.
        """


    @hookspec
    def register_commands(self, register: Register) -> None:
        """Register ``lifelong`` subcommands (``lifelong serve``, ``lifelong models`` …).

        ``register(command)`` with a :class:`click.Command` or :class:`click.Group`; its ``name`` is
        the subcommand. The plugin host is built before the command line is dispatched, so
        ``--plugin`` and ``--block`` apply to commands too; a name taken by the kernel (``run``,
        ``plugins``) or by another plugin is an error naming both. Import heavy dependencies inside
        the command's callback, not at module level: ``lifelong --help`` loads every plugin.
        """


class LifecycleSpecs:
    """Called during a run on strategy and tracker instances."""

    @hookspec(firstresult=True)
    def wrap_model(self, model: torch.nn.Module, spec: ModelSpec) -> tuple[torch.nn.Module, ModelSpec] | None:
        """Once, while the run is built (before the optimizer exists): replace the model.

        A strategy that trains a model of its own design (PathNet's module grid) returns the new
        module and the :class:`~lifelong.types.ModelSpec` that rebuilds it, i.e. the name of a
        registered model component and its options; it may keep ``model`` inside as a backbone.
        The first non-None answer wins; strategies that do not build models do not implement it.
        """

    @hookspec
    def validate(self, run: Run) -> None:
        """Once, after every component is built and before anything is opened (trackers, files, devices).

        Raise :class:`lifelong.errors.UserError` (or ValueError) for a combination this component
        cannot run — e.g. PathNet with a strategy it does not compose with — so it exits with status
        2 before a tracker has recorded anything. ``run`` is the typed context of
        :class:`lifelong.run.Run`; its ``optimizer`` is None (it does not exist yet).
        """

    @hookspec
    def on_run_start(self, run: Run) -> None:
        """Once per process, after the model, optimizer and device are ready and before the first batch.

        ``run`` (:class:`lifelong.run.Run`) gives ``model``, ``optimizer``, ``device``, ``info``
        (StreamInfo), ``learner`` (typed kernel options), ``seed``, ``strategies``, ``session`` (its
        ``id`` and whether it was ``resumed``), ``components`` (builds registered models), ``config``
        (the resolved pipeline, to record, not to read) and ``warmup`` (the first stream samples when
        the model asked for them, else None). Strategies keep what they need. On a resume, state is
        loaded with ``load_state_dict`` right after this hook.
        """

    @hookspec
    def augment_batch(self, batch: Batch) -> Batch | None:
        """Per batch, before the forward pass: return extra samples to train on (replay), or None.

        ``batch`` is the stream batch, already on the training device. The kernel concatenates the
        stream batch and every returned batch (in hook order) and trains on the result.
        """

    @hookspec
    def extra_loss(self, batch: Batch, outputs: torch.Tensor, model: torch.nn.Module) -> torch.Tensor | None:
        """Per batch, after the forward pass: return a scalar tensor to add to the loss, or None.

        ``batch``/``outputs`` are the (augmented) training batch and its logits (an anomaly
        detector's: its reconstruction). The kernel sums the objective's loss (cross-entropy, or the
        detector's own ``sample_loss``, weighted by its filter) and all returned terms (EWC, LwF, L2
        anchors) before ``backward``.
        """

    @hookspec
    def before_optimizer_step(self, model: torch.nn.Module, optimizer: Any) -> None:
        """Per batch, after ``backward`` and before ``optimizer.step()``: edit gradients in place.

        Implementations that mask gradients (path freezing) must be ``trylast`` so that they
        see the final gradients after any implementation that rescales or adds to them.
        """

    @hookspec
    def after_step(self, batch: Batch, outputs: torch.Tensor, first_pass: bool) -> None:
        """Per batch the learner applied, after ``optimizer.step()``: observe the stream batch and its
        pre-update logits. A batch the non-finite guard skipped is never observed, so no memory
        stores its samples. On CUDA the call comes up to two steps late (whether the step was applied
        is read from the device without waiting for it, :mod:`lifelong.observation`); every batch is
        observed before ``on_boundary`` and before a checkpoint takes the strategies' state.

        ``batch`` is the stream batch without augmentation; ``outputs`` are its detached logits from
        the forward pass before the update. With an anomaly detector's contamination filter on,
        ``batch.weight`` holds each sample's weight (0: left out): a memory stores
        ``lifelong.objective.kept(batch)``, never a left-out sample. ``first_pass`` is False when the kernel trains on the
        batch again for an extra epoch (``learner.epochs > 1``), so replay stores each sample once.
        """

    @hookspec
    def on_boundary(self, experience: Experience, model: torch.nn.Module) -> None:
        """At every boundary, before evaluation: consolidate (EWC Fisher, LwF teacher, anchors, frozen paths).

        A boundary is wherever the detector puts one: an experience change, a window, a drift.
        ``experience`` describes the span of stream since the previous boundary. Called in the
        order above: the model's own hooks first (gradual unfreezing), then each strategy, which
        consolidates its own state only.
        """

    @hookspec(
        warn_on_impl=DeprecationWarning(
            "on_experience_end is deprecated: it fires at every boundary (windows and drift too); "
            "implement on_boundary, which the kernel calls first with the same arguments"
        )
    )
    def on_experience_end(self, experience: Experience, model: torch.nn.Module) -> None:
        """Deprecated name of ``on_boundary``; still called, right after it, for older plugins."""

    @hookspec
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Every ``learner.log_every`` batches and at boundaries, with host-side running metrics.

        ``step`` counts stream batches. Keys: ``loss``, ``prequential_accuracy``, ``samples_seen``,
        ``prequential_accuracy_recent`` (over the last ``learner.prequential_window`` samples), ``samples_per_second`` (trained samples, every epoch, per second of training), and after a boundary ``eval/acc`` and ``eval/exp_<i>``.
        An anomaly detector's run has ``prequential_roc_auc`` (of the pre-update scores of the
        labelled stream samples, binned: :class:`lifelong.ranking.ScoreHistogram`; NaN until both
        classes were seen) instead of the accuracies, and ``eval/roc_auc``, ``eval/pr_auc`` and
        ``eval/exp_<i>`` (ROC-AUC) after a boundary.
        """

    @hookspec
    def on_generation(self, generation: Generation) -> None:
        """After each boundary's evaluation, with the new generation (CPU copies of its state).

        Trackers log and register it. They must return quickly; writing happens on their own
        thread. They may fill ``generation.records`` (e.g. a registered model version) from there.
        """

    @hookspec
    def on_run_end(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        """Once, after the last generation: finish pending work and return what to add to the summary.

        ``summary`` is the run summary so far (metrics, accuracy matrix, ``heatmap`` path).
        A tracker returns a dict that the kernel stores under ``summary["trackers"][<name>]``; the
        model's own hooks (``lifecycle_hooks()``) under ``summary["model"]``.
        Generation records are read after this hook, so background writers must be drained here.
        """

    @hookspec
    def on_run_failed(self, error: BaseException) -> None:
        """Once, instead of ``on_run_end``, when the run stops on an exception or a signal.

        ``error`` is :class:`lifelong.errors.Interrupted` when SIGTERM or SIGINT stopped the run
        gracefully (the batch finished and a checkpoint was written, when checkpointing is on):
        trackers close with a "killed" status, not a failure. Implementations close what they
        opened and must not raise; the kernel re-raises ``error`` afterwards.
        """
