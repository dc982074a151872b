"""What every reconstruction detector shares: the detector protocol, the threshold and its options.

A detector (:class:`Detector`) is a model component whose ``forward(x)`` reconstructs the
standardised input through its ``network`` (an autoencoder: :mod:`lifelong_anomaly.autoencoder`,
:mod:`lifelong_anomaly.sequence`), and which follows the kernel's detector protocol:

- ``sample_loss(x, outputs)``: per-sample mean squared error between the reconstruction and the
  standardised (clean) input, differentiable; the kernel trains on its mean.
- ``anomaly_score(x, outputs)``: the same error, detached: the score, higher = more anomalous.
- ``sample_weights(scores)``: with ``filter`` > 0, ``1`` for a score at or below the filter's
  level and ``0`` above it (a NaN score too), so samples that already look anomalous stay out of
  the update and out of replay and EWC memories (MemStream's memory-poisoning defence, Bhatia et
  al., WWW 2022). The level (``filter_threshold``) is the ``1 - filter`` quantile of the scores
  each calibration computes anyway: ``filter`` is the share of anomalies the training stream is
  expected to hold. It is not the alarm threshold, whose false-alarm target (1 %) is usually far
  below the contamination: a filter at the alarm threshold keeps 1 % of the normal data out of
  learning at every step, and on a drifting stream it keeps out exactly the new normal the model
  should learn (measured on Shuttle, 7 % anomalies: prequential ROC-AUC 0.72 with the filter at
  the 1 % alarm threshold, 0.83 without a filter, 0.996 with ``filter = 0.1``; bench/anomaly.py).
  Setting ``filter`` equal to ``false_alarm_rate`` (quantile thresholds) gives the filter at the
  alarm threshold. While the level is not calibrated yet every sample is kept. Without
  the filter: None (all kept). With the filter on, the alarm threshold is calibrated on the
  scores at or below the filter's level only (what the filter takes for normal), as pyod's
  ``contamination``: otherwise the anomalies among the calibration scores lift the quantile, and
  the false-alarm rate on normal data lands below its target.
- ``threshold``: a 0-d float32 buffer, ``lifelong.objective.NOT_CALIBRATED`` (the float32 maximum:
  buffers of a generation must be finite) until the first calibration; flag = score > threshold.

**Standardisation.** Scores live in standardised feature space: the detector holds a
:class:`lifelong.scaling.Standardize` (``scaler``) whose running per-feature (per element)
mean and variance are updated from each *stream* batch once, after its optimizer step, in the
``after_step`` hook (``first_pass`` only; never from replayed samples or extra epochs), and frozen
into every generation with the other buffers. They count every stream sample, the filtered ones
included (Standardize's update takes no weights). A reader's ``normalize = "standard"`` is not
needed for a detector.

**Denoising.** ``noise`` adds Gaussian noise of that standard deviation to the standardised input
in training mode only; the loss still compares with the clean input. Scores in eval mode (held-out
sets, serving, calibration) see the clean input; the training scores the kernel hands to
``sample_weights`` (the contamination filter) come from the noisy one, so they run a little
higher and the filter leaves out slightly more than the threshold's rate.

**Threshold** (:mod:`lifelong_anomaly.thresholds`). ``after_step`` records the stream batch's
inputs in a buffer of ``recent`` samples on the training device (device-side, no host
synchronisation). At every boundary (``on_boundary``, before evaluation, so the generation
carries it) the threshold is recalibrated on the host from the **calibration scores**: the
scores the new generation gives, in eval mode, to recorded stream samples. Which ones is
``calibration``:

- ``span`` (the default): the buffer is a ring of the newest ``recent`` samples, and the
  calibration samples are those of the generation's own span (recorded since the previous
  boundary, at most ``recent``; when the span holds fewer than the method needs, the newest ones
  before it fill up to that minimum). The threshold is the newest normal's: right for a normal
  that drifts away, where old data will not come back.
- ``stream``: the buffer is a reservoir (Vitter's algorithm R, :func:`reservoir_slots`), a
  uniform sample of every stream sample recorded so far, all rescored. The threshold is for every
  normal seen: right when the old normal stays normal, as continual learning assumes and as a
  concept-incremental evaluation measures (the final generation on every experience's test data).
  The model scores the concepts it learned long ago a little higher than its newest, so a span's
  threshold flags more of them. Measured: ``test_stream_calibration_keeps_the_false_alarm_rate_on_every_normal_seen``
  (two Gaussian concepts, no replay, target 2 %): 35.6 % of both concepts' held-out data flagged
  with ``span``, 1.7 % with ``stream``; bench/anomaly.py's digits scenario (target 1 %): 5.3 % with
  ``span``, 1.9 % with ``stream`` (seed 0).

Why rescore rather than keep the scores seen while training (test-then-train): after an abrupt
change of normal (a new concept, an experience boundary) the model's first scores on the new
data are high until it adapts, and those are what lands above a 1 % quantile. Measured (dense
autoencoder, hidden [32], latent 4, three 10-dimensional Gaussian concepts of 4,000 samples whose
means jump from 0 to 4 to -4, a boundary after each, seeds 0 and 1; the false-alarm rate on
20,000 held-out samples of the last concept): for a 1 % target, the quantile of the last 5,000
test-then-train scores gave 0.00 % (its threshold is the adaptation transient's), the rescored
span 0.99-1.25 %; for 5 %: 0.00 % and 5.23-5.35 %.
The price: the rescored samples were trained on (once each, in a stream), so their scores are
slightly optimistic, and a high-capacity model trained for several epochs flags more than the
target on new data; and the ring stores ``recent`` inputs (module **State**).

**Calibration hold-out** (``holdout``, off by default). For that case: a share of the stream's
samples is never trained on and never stored by a memory (weight 0 from ``sample_weights``), and
only those are recorded and rescored, so the threshold is a quantile of scores of data the model
has not learned (split-conformal calibration). Which samples: a fixed hash of their values (the
fractional part of a scaled random projection), so the same sample is held out in every epoch
and in every rebuilt generation, with no state and no host synchronisation. Measured
(``test_the_hold_out_keeps_the_false_alarm_rate_on_target_where_training_samples_run_low``: 600
samples, 60 epochs, a wide autoencoder, target 5 %): 73 % of unseen normal samples flagged when
calibrated on training samples, 3.7 % with a 20 % hold-out. Not the default because a hash of
the values holds out every copy of a value: on Shuttle, whose records repeat, it held out whole
clusters of normal records, and the prequential ROC-AUC fell from 0.99 to 0.89.

- ``quantile``: the ``1 - false_alarm_rate`` quantile of the calibration scores (at least
  ``1 / false_alarm_rate`` of them, else the threshold stays as it was: not calibrated at first). Training
  anomalies count too: with contamination above the target rate, the false-alarm rate on
  normal data lands below the target.
- ``spot``: SPOT for the target ``risk``, fitted on the calibration scores (at least
  ``5 / (1 - spot_level)`` of them: five peaks over the ``spot_level`` quantile). With
  ``spot_update = "refit"`` (the default) every boundary makes a fresh SPOT calibration: the
  GPD tail extrapolates to risks far below ``1 / recent``, from the current model's scores.
  With ``spot_update = "stream"`` the first successful fit is then updated at each boundary with
  the calibration scores of the span, SPOT keeping ``t``, its counts and peaks across
  boundaries, as in the paper; but a detector's scores are not stationary (the model learns;
  each generation scores differently), and a streamed SPOT keeps the tail of earlier
  generations' scores. Measured (dense autoencoder, hidden [32], latent 4, on 10-dimensional
  correlated Gaussian data, batches of 32, a boundary every 200 batches for 10 boundaries,
  ``recent = 5000``; false-alarm rate on 200,000 held-out normal samples after each boundary):
  risk 0.01 (``spot_level = 0.9``) gave 0.86-1.22 % with refit and 0.27-0.49 % with stream
  after the first boundary; risk 0.001 (``spot_level = 0.98``) gave 0.065-0.171 % with refit
  and 0.009-0.022 % with stream.

**State.** Everything lives in buffers, so ``state_dict`` alone rebuilds it (generations, MLflow,
serving, checkpoints and ``--resume``, bit for bit): ``threshold``; the ring (``recent_inputs``,
float32, ``recent`` × the input's elements: **every generation carries these training samples**,
5,000 × 784 × 4 bytes = 15.7 MB for 28×28 images, so lower ``recent`` for wide inputs, or where
training data must not travel with the model; ``recent_total``: samples ever recorded, whose
remainder modulo ``recent`` is the next slot; ``recent_mark``: the total at the last
calibration); with SPOT, its state (``spot_peaks``: the kept excesses, oldest first, the first
``spot_kept`` entries, then ``spot_t``, ``spot_z``, ``spot_n``, ``spot_count``, ``spot_gamma``,
``spot_sigma``, ``spot_method``: 0 not fitted, 1 Grimshaw, 2 moments, 3 exponential); and the
scaler's statistics (``scaler.input_*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lifelong import hookimpl, resources
from lifelong.objective import NOT_CALIBRATED, calibrated
from lifelong.scaling import Standardize
from lifelong.types import Batch
from lifelong_anomaly.thresholds import MAX_PEAKS, METHODS, MIN_PEAKS, QuantileThreshold, Spot

HOLDOUT_SEED = 20170813  # the calibration hold-out's projection (any fixed value: it only has to stay fixed)
HOLDOUT_SCALE = 7919.0  # spreads the projection's fractional part over [0, 1)
MAX_RECENT = 10_000_000  # ring buffer samples (their size is checked against memory by the model)
CHUNK = 4096  # samples per forward pass when rescoring the ring at a boundary
MAX_SPOT_PEAKS = 1_000_000  # SPOT peaks kept (8 MB of float64; each boundary refits on all of them)
SPOT_SCALARS = ("t", "z", "n", "count", "gamma", "sigma")


@dataclass
class DetectorOptions:
    """Options every detector shares: denoising, the threshold and the contamination filter."""

    noise: float = field(default=0.0, metadata={"help": "std of the Gaussian noise added to the standardised input in training (denoising autoencoder); 0: none"})
    threshold: Literal["quantile", "spot"] = field(default="quantile", metadata={"help": "how the anomaly threshold is recalibrated at each boundary: quantile (of the scores the new generation gives its span's training samples, for false_alarm_rate) or spot (peaks-over-threshold, for risk)"})
    false_alarm_rate: float = field(default=0.01, metadata={"help": "quantile: target share of normal samples flagged; the threshold is the 1 - false_alarm_rate quantile of the span's training samples' scores"})
    risk: float = field(default=1e-3, metadata={"help": "spot: target probability that a normal score exceeds the threshold (q in Siffer et al. 2017); below 1 - spot_level"})
    spot_level: float = field(default=0.98, metadata={"help": "spot: quantile of the calibration scores taken as the initial threshold t; the excesses over it are fitted by a Generalized Pareto distribution"})
    spot_update: Literal["refit", "stream"] = field(default="refit", metadata={"help": "spot: refit = a fresh SPOT calibration on the scores of the span's training samples at every boundary; stream = the paper's streaming update with them, its counts and peaks kept across boundaries"})
    spot_peaks: int = field(default=MAX_PEAKS, metadata={"help": "spot: newest peaks (excesses over t) kept for the fit; bounds memory and the refit time"})
    recent: int = field(default=5000, metadata={"help": "stream samples kept on the device (part of every generation) and rescored at each boundary to calibrate the threshold: the newest ones (calibration = span), or a uniform sample of all (calibration = stream)"})
    calibration: Literal["span", "stream"] = field(default="span", metadata={"help": "which samples calibrate the threshold: span = those since the previous boundary (a normal that drifts away: flag against the newest one); stream = a uniform sample of every stream sample so far (a normal that accumulates, as in continual learning: the old normal stays normal)"})
    holdout: float = field(default=0.0, metadata={"help": "share of stream samples never trained on nor stored in a memory, chosen by a fixed hash of their values (the same samples in every epoch), on which the threshold and the filter's level are calibrated: split-conformal calibration on data the model has not learned, for many epochs over small spans. A hash of the values holds out every copy of a value: on data with many duplicates (Shuttle) it holds out whole clusters of normal records. 0: calibrate on rescored training samples"})
    filter: float = field(default=0.0, metadata={"help": "contamination filter: the share of anomalies expected in the training stream (e.g. 0.1); samples scoring above the 1 - filter quantile of the last calibration's scores stay out of the update and out of replay/EWC memories. 0: off; equal to false_alarm_rate (with threshold = quantile): the alarm threshold itself"})

    def check(self) -> None:
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a standard deviation >= 0, got {self.noise}")
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"holdout must lie in [0, 0.5): the share of stream samples kept for calibration, e.g. 0.1; got {self.holdout}")
        if not 0.0 <= self.filter < 0.5:
            raise ValueError(f"filter must lie in [0, 0.5): the share of anomalies expected in training data, e.g. 0.1; 0 turns it off; got {self.filter}")
        if self.filter and self.recent * self.filter < 1:
            raise ValueError(f"recent = {self.recent} samples cannot calibrate filter = {self.filter:g}: raise recent to at least {math.ceil(1 / self.filter)}")
        if not 0.0 < self.false_alarm_rate < 0.5:
            raise ValueError(f"false_alarm_rate must lie in (0, 0.5), e.g. 0.01 for 1 %, got {self.false_alarm_rate}")
        if not 0.0 < self.spot_level < 1.0:
            raise ValueError(f"spot_level must lie in (0, 1), e.g. 0.98, got {self.spot_level}")
        if not 0.0 < self.risk < 1.0 - self.spot_level:
            raise ValueError(
                f"risk must lie in (0, 1 - spot_level) = (0, {1.0 - self.spot_level:g}), got {self.risk}: SPOT's threshold "
                "extrapolates the tail beyond the spot_level quantile, so its risk must be rarer than that quantile's exceedances"
            )
        if not MIN_PEAKS <= self.spot_peaks <= MAX_SPOT_PEAKS:
            raise ValueError(f"spot_peaks must lie in [{MIN_PEAKS}, {MAX_SPOT_PEAKS:,}], got {self.spot_peaks}")
        if not 1 <= self.recent <= MAX_RECENT:
            raise ValueError(f"recent must lie in [1, {MAX_RECENT:,}] samples, got {self.recent}")
        if self.threshold == "quantile" and self.recent * self.false_alarm_rate < 1:
            raise ValueError(
                f"recent = {self.recent} samples cannot calibrate false_alarm_rate = {self.false_alarm_rate:g}: the quantile needs "
                f"at least {math.ceil(1 / self.false_alarm_rate)} (one expected false alarm); raise recent"
            )
        if self.threshold == "spot" and self.recent * (1.0 - self.spot_level) < MIN_PEAKS:
            raise ValueError(
                f"recent = {self.recent} samples hold fewer than {MIN_PEAKS} peaks over the spot_level = {self.spot_level:g} "
                f"quantile, too few for SPOT's fit; raise recent to at least {math.ceil(MIN_PEAKS / (1.0 - self.spot_level))}"
            )


class Detector(nn.Module):
    """A reconstruction detector: subclasses set ``network`` (standardised (N, *shape) in, same shape out).

    ``shape`` is the per-sample shape the network and the scaler work on; inputs of any shape
    with that many elements per sample are reshaped to it. See the module docstring.
    """

    def __init__(self, options: DetectorOptions, shape: tuple[int, ...]):
        super().__init__()
        self.options = options
        self.shape = tuple(int(d) for d in shape)
        self.scaler = Standardize(nn.Identity(), self.shape)
        self.register_buffer("threshold", torch.tensor(NOT_CALIBRATED, dtype=torch.float32))
        # the contamination filter's own level: the 1 - filter quantile of the last calibration's scores
        self.register_buffer("filter_threshold", torch.tensor(NOT_CALIBRATED, dtype=torch.float32))
        resources.require(
            options.recent * resources.elements(self.shape) * resources.FLOAT_BYTES,
            f"the detector's ring of its {options.recent:,} newest samples of {resources.elements(self.shape):,} values",
            "model.recent",
        )
        # one spare row past the ring takes the writes of samples that are not recorded (no host sync)
        self.register_buffer("recent_inputs", torch.zeros(options.recent + 1, *self.shape, dtype=torch.float32))
        # the calibration hold-out's hash: a fixed random projection (the same in every process and generation)
        key = torch.randn(resources.elements(self.shape), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
        self.register_buffer("holdout_key", key, persistent=False)
        self.register_buffer("recent_total", torch.zeros((), dtype=torch.int64))
        self.register_buffer("recent_mark", torch.zeros((), dtype=torch.int64))
        if options.threshold == "spot":
            self.register_buffer("spot_peaks", torch.zeros(options.spot_peaks, dtype=torch.float64))
            self.register_buffer("spot_kept", torch.zeros((), dtype=torch.int64))
            self.register_buffer("spot_method", torch.zeros((), dtype=torch.int64))
            for name in SPOT_SCALARS:
                self.register_buffer(f"spot_{name}", torch.zeros((), dtype=torch.float64))
        self.network: nn.Module = nn.Identity()  # set by the subclass

    # -- the detector protocol -------------------------------------------------------------
    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` reshaped to (N, *shape) and standardised with the running statistics, in the network's dtype."""
        z = self.scaler.scale(x.reshape(x.shape[0], *self.shape))
        dtype = next(self.network.parameters()).dtype
        return z if z.dtype == dtype else z.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of the standardised ``x`` (noisy input in training mode when ``noise`` > 0)."""
        z = self.standardise(x)
        if self.training and self.options.noise > 0:
            z = z + self.options.noise * torch.randn_like(z)
        return self.network(z)

    def sample_loss(self, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared reconstruction error against the clean standardised ``x``: shape (N,)."""
        target = self.standardise(x)
        return (outputs.flatten(1) - target.flatten(1)).square().mean(dim=1)

    def anomaly_score(self, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """The reconstruction error, detached: shape (N,), higher = more anomalous."""
        return self.sample_loss(x, outputs.detach()).detach()

    # The score is the loss detached: a training step takes the scores from the loss it computed
    # (lifelong.objective), instead of standardising the batch and taking the error a second time.
    scores_from_loss = True

    def sample_weights(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor | None:
        """0.0 for a sample held out for calibration or (with ``filter``) scoring above filter_threshold,
        else 1.0 (device-side); None when neither applies."""
        weights = (scores <= self.filter_threshold).to(torch.float32) if self.options.filter else None
        held = self.held_out(x)
        if held is not None:
            kept = (~held).to(torch.float32)
            weights = kept if weights is None else weights * kept
        return weights

    def held_out(self, x: torch.Tensor) -> torch.Tensor | None:
        """Which samples of ``x`` (raw inputs) belong to the calibration hold-out; None without one.

        A fixed hash of the values (the fractional part of a scaled random projection), so a sample is
        held out, or not, every time it is seen: in every epoch, and never stored by a memory.
        """
        if not self.options.holdout:
            return None
        flat = x.reshape(x.shape[0], -1).to(self.holdout_key.dtype)
        return torch.frac((flat @ self.holdout_key).abs() * HOLDOUT_SCALE + 0.5) < self.options.holdout

    def lifecycle_hooks(self) -> DetectorHooks:
        return DetectorHooks(self)

    # -- recording and calibration ----------------------------------------------------------
    @torch.no_grad()
    def record(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Write the samples ``x`` (those where ``mask`` is True, when given) into the ring buffer, in order.

        Device-side only, no host synchronisation: every sample gets a slot, those not recorded the
        spare row past the ring, and the count grows by a device-side sum.
        """
        ring, size = self.recent_inputs, self.options.recent
        n = x.shape[0]
        if n == 0:
            return
        if mask is None:
            mask = torch.ones(n, dtype=torch.bool, device=ring.device)
        taken = mask.to(torch.int64)
        order = torch.cumsum(taken, 0) - taken  # each recorded sample's rank among this batch's recorded ones
        if self.options.calibration == "stream":
            slots = torch.where(mask, reservoir_slots(self.recent_total + order, size), torch.full_like(order, size))
        else:
            rank_from_end = taken.sum() - 1 - order
            # a batch recording more than the ring holds keeps its newest `size` (older ones would be overwritten)
            record = mask & (rank_from_end < size)
            slots = torch.where(record, (self.recent_total + order) % size, torch.full_like(order, size))
        ring.index_copy_(0, slots, x.detach().reshape(n, *self.shape).to(ring.dtype))
        self.recent_total.add_(taken.sum())

    def recorded(self, count: int | None = None) -> torch.Tensor:
        """The samples held (synchronises): with ``calibration = "span"`` the newest ``count`` (default:
        all the ring holds), oldest first; with ``"stream"`` the reservoir, in slot order (the first
        ``count``)."""
        total, size = int(self.recent_total), self.options.recent
        held = min(total, size)
        if self.options.calibration == "stream":
            return self.recent_inputs[: held if count is None else min(count, held)]
        count = held if count is None else min(count, held)
        slots = (torch.arange(total - count, total, device=self.recent_inputs.device)) % size
        return self.recent_inputs.index_select(0, slots)

    def minimum_calibration(self) -> int:
        """Calibration scores the threshold method needs at least (module docstring)."""
        options = self.options
        if options.threshold == "quantile":
            return QuantileThreshold(options.false_alarm_rate).minimum_scores()
        return math.ceil(MIN_PEAKS / (1.0 - options.spot_level) - 1e-9)

    @torch.no_grad()
    def calibration_scores(self) -> np.ndarray:
        """Eval-mode scores of the calibration samples (the span's, oldest first, or the whole reservoir), as float64
        (module docstring; synchronises)."""
        if self.options.calibration == "stream":
            samples = self.recorded()
        else:
            since = int(self.recent_total) - int(self.recent_mark)
            samples = self.recorded(max(since, self.minimum_calibration()))
        training = self.training
        self.eval()
        try:
            out = [self.anomaly_score(chunk, self(chunk)) for chunk in samples.split(CHUNK)]
        finally:
            self.train(training)
        return torch.cat(out).cpu().to(torch.float64).numpy() if out else np.zeros(0)

    @torch.no_grad()
    def calibrate(self) -> bool:
        """Recalibrate ``threshold`` from the calibration scores (module docstring); True when it was set.

        Called at every boundary; synchronises with the device.
        """
        scores = self.calibration_scores()
        self.recent_mark.copy_(self.recent_total)
        if self.options.filter:
            level = QuantileThreshold(self.options.filter)
            if level.fit(scores):
                self.filter_threshold.fill_(min(level.value, NOT_CALIBRATED))
                # the alarm threshold is calibrated on what the filter takes for normal, as pyod's
                # `contamination`: a share of anomalies in the calibration scores would lift it above
                # the normal scores' quantile, and the false-alarm rate would land below its target
                scores = scores[scores <= level.value]
        if self.options.threshold == "quantile":
            quantile = QuantileThreshold(self.options.false_alarm_rate)
            if not quantile.fit(scores):
                return False
            value = quantile.value
        else:
            spot = self.spot()
            if self.options.spot_update == "stream" and spot.fitted:
                spot.update(scores)
            else:
                spot = Spot(self.options.risk, self.options.spot_level, self.options.spot_peaks)
                if not spot.fit(scores):
                    return False
            self._store_spot(spot)
            value = spot.z
        self.threshold.fill_(min(value, NOT_CALIBRATED))
        return True

    def spot(self) -> Spot:
        """SPOT as stored in the buffers (a new, unfitted one before the first fit)."""
        options = self.options
        spot = Spot(options.risk, options.spot_level, options.spot_peaks)
        state: dict[str, Any] = {name: float(getattr(self, f"spot_{name}")) for name in SPOT_SCALARS}
        kept = int(self.spot_kept)
        state.update(
            risk=options.risk,
            level=options.spot_level,
            max_peaks=options.spot_peaks,
            method=METHODS[int(self.spot_method)],
            peaks=self.spot_peaks[:kept].cpu().numpy(),
        )
        if state["method"] == "none":
            return spot
        spot.load_state_dict(state)
        return spot

    def _store_spot(self, spot: Spot) -> None:
        kept = spot.peaks.size
        self.spot_peaks.zero_()
        self.spot_peaks[:kept] = torch.from_numpy(spot.peaks).to(self.spot_peaks.device)
        self.spot_kept.fill_(kept)
        self.spot_method.fill_(METHODS.index(spot.method))
        for name in SPOT_SCALARS:
            getattr(self, f"spot_{name}").fill_(getattr(spot, name))

    def report(self) -> dict[str, Any]:
        """The threshold and how it was set, as plain JSON data (None for +inf; synchronises)."""
        value = float(self.threshold)
        out: dict[str, Any] = {
            "threshold": calibrated(value),
            "method": self.options.threshold,
            "samples_recorded": int(self.recent_total),
            "filter": self.options.filter,
        }
        if self.options.threshold == "quantile":
            out["false_alarm_rate"] = self.options.false_alarm_rate
        else:
            spot = self.spot()
            out["risk"] = self.options.risk
            out["spot"] = {
                "fit": spot.method,
                "t": spot.t if spot.fitted else None,
                "gamma": spot.gamma,
                "sigma": spot.sigma,
                "n": spot.n,
                "peaks": spot.count,
            }
        return out


def reservoir_slots(index: torch.Tensor, size: int) -> torch.Tensor:
    """Where the samples of global indices ``index`` (0, 1, …: the order they were recorded in) go
    in a reservoir of ``size`` slots, ``size`` meaning nowhere (Vitter's algorithm R: the first
    ``size`` samples fill it in order, then sample ``t`` replaces a uniform slot of ``[0, t]`` when
    that slot is below ``size``, so the reservoir holds a uniform sample of every sample so far).

    The draw is a fixed hash of ``t`` (SplitMix64's finaliser constants in int64 arithmetic: the
    multiplications wrap, the shifts are arithmetic), not the random generator: device-side, no
    host synchronisation, and the same slots after ``--resume`` or in a rebuilt generation without
    any RNG state (uniformity: ``test_the_stream_reservoir_holds_a_uniform_sample…``). Two samples
    of one batch drawing the same slot: ``index_copy_`` keeps one of them, on the CPU the later.
    """
    z = index * -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
    z = (z ^ (z >> 30)) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * -7723592293110705685  # 0x94D049BB133111EB
    z = z ^ (z >> 31)
    draw = torch.where(index < size, index, torch.remainder(z, index + 1))  # the first `size` fill it in order
    return torch.where(draw < size, draw, torch.full_like(draw, size))


class DetectorHooks:
    """The detector's lifecycle hooks: record the samples and feed the scaler per batch, recalibrate at boundaries."""

    def __init__(self, model: Detector):
        self.model = model

    @hookimpl
    def after_step(self, batch: Batch, outputs: torch.Tensor, first_pass: bool) -> None:
        if not first_pass:  # each stream sample once, not again in extra epochs
            return
        model = self.model
        x = batch.x.reshape(batch.x.shape[0], *model.shape)
        model.record(x, model.held_out(batch.x))  # with a hold-out, only its samples calibrate
        model.scaler.update(x)

    @hookimpl
    def on_boundary(self, experience: Any, model: nn.Module) -> None:
        self.model.calibrate()

    @hookimpl
    def on_run_end(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"anomaly": self.model.report()}
