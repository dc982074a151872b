"""Anomaly thresholds from a detector's scores: a quantile for a target false-alarm rate, and SPOT.

Both are pure numpy and work on the host; a detector calls them at a boundary (where a host
synchronisation is allowed), from the scores its new generation gives the samples it recorded
(:mod:`lifelong_anomaly.detector`).

**Quantile** (:class:`QuantileThreshold`): the ``1 - false_alarm_rate`` empirical quantile
(numpy's default linear interpolation) of the scores, so that about ``false_alarm_rate`` of
scores from the same distribution lie above it. It needs at least ``1 / false_alarm_rate``
finite scores (one expected exceedance); with fewer it keeps its previous value.

**SPOT** (:class:`Spot`, streaming peaks-over-threshold; Siffer, Fouque, Termier and Largouët,
"Anomaly Detection in Streams with Extreme Value Theory", KDD 2017). Calibration: the initial
threshold ``t`` is the ``level`` empirical quantile of the calibration scores (default 0.98), the
*peaks* are the excesses ``Y = X - t`` of the scores above it, and a Generalized Pareto
distribution (shape γ, scale σ) is fitted to them by maximum likelihood with **Grimshaw's
procedure** (as in the paper: the likelihood equations reduce to one equation in ``x = γ/σ``,
whose roots lie in ``(-1/Y_max, 0)`` and ``(0, 2(Ȳ-Y_min)/Y_min²)``; every root, and the
exponential solution γ = 0, σ = Ȳ, is a candidate, and the one of highest likelihood wins).
Roots are found by scanning each interval on a grid (geometric spacing toward its ends, from
``|x|·Y_max = 1e-8``) for sign changes and refining each by bisection, instead of the paper's
reference implementation's L-BFGS-B from a few starting points. That implementation also starts
the positive interval at ``2(Ȳ-Y_min)/(Ȳ·Y_min)``, which lies above the root when the smallest
peak is tiny (a heavy tail sampled densely just above t: measured on a Pareto tail with γ = 0.5,
it returned the exponential fit instead); this one scans the whole interval. When Grimshaw cannot run (fewer than two
distinct peaks, or bounds that are not finite) or returns a non-finite fit, the **method of
moments** is used instead (γ = ½(1 - Ȳ²/s²), σ = ½·Ȳ·(1 + Ȳ²/s²)); with zero variance, the
exponential fit (γ = 0, σ = Ȳ). :attr:`Spot.method` says which one fitted.

The alarm threshold for a target risk ``q`` (the probability that a normal score exceeds it) is

    z_q = t + (σ/γ)·((q·n/N_t)^(-γ) - 1)        (γ ≠ 0)
    z_q = t - σ·ln(q·n/N_t)                     (γ = 0)

with ``n`` the scores counted so far and ``N_t`` the peaks among them. ``risk`` must lie below
``1 - level`` (the exceedance rate of ``t``), or ``z_q`` would fall below ``t``, outside the tail
the fit describes.

**Streaming update** (:meth:`Spot.update`), vectorised: every score of one call is compared with
the ``z_q`` in force when the call starts. A score above it is an anomaly (returned as an alarm;
not counted in ``n``, not a peak: anomalies do not move the threshold); a score in ``(t, z_q]``
is a new peak (counted in ``n`` and ``N_t``); any other finite score only counts in ``n``; a NaN
score is ignored. The GPD is refitted **once per call**, after all its peaks are added, and
``z_q`` recomputed (with the new ``n`` even when no peak came); the paper refits and recomputes
after every single peak, so within one call a peak does not yet raise the threshold for the
scores after it. A detector calls it once per boundary with the scores recorded since the
previous one.

**Bounded memory:** only the newest ``max_peaks`` peaks (default 10,000) are kept for the fit;
``n`` and ``N_t`` keep counting every score and peak, so ``N_t/n`` stays the exceedance rate of
``t`` over the whole stream, while the shape of the tail follows the recent peaks.

>>> spot = Spot(risk=1e-3, level=0.98)
>>> spot.fit(np.random.default_rng(0).exponential(size=20_000))
True
>>> round(spot.z, 1), spot.method           # the exact 1e-3 risk quantile of Exp(1) is ln(1000) ≈ 6.9
(6.9, 'grimshaw')
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_PEAKS = 10_000  # peaks SPOT keeps for its fit (the newest); see the module docstring
MIN_PEAKS = 5  # fewer peaks over t than this: SPOT does not calibrate (a GPD fit would be noise)
GRID = 256  # points scanned per Grimshaw interval for sign changes of the likelihood equation
NEAR_ZERO = 1e-8  # Grimshaw's intervals are scanned from |x|·Y_max = 1e-8 (x = 0 is the trivial root)
BISECTIONS = 80  # halvings of each bracketing interval (far below float64 resolution)
METHODS = ("none", "grimshaw", "moments", "exponential")  # how the GPD was fitted; index = stored code


def finite(scores: Any) -> np.ndarray:
    """``scores`` as a flat float64 array without NaN or infinite values."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


class QuantileThreshold:
    """The ``1 - false_alarm_rate`` quantile of the scores it is fitted to (module docstring).

    >>> threshold = QuantileThreshold(0.1)
    >>> threshold.fit(np.arange(1.0, 101.0)), round(threshold.value, 6)
    (True, 90.1)
    """

    def __init__(self, false_alarm_rate: float = 0.01):
        if not 0.0 < false_alarm_rate < 1.0:
            raise ValueError(f"false_alarm_rate must lie in (0, 1), got {false_alarm_rate}")
        self.false_alarm_rate = float(false_alarm_rate)
        self.value = math.inf  # +inf: not calibrated, nothing is flagged

    def minimum_scores(self) -> int:
        """Scores needed for one expected exceedance: ``ceil(1 / false_alarm_rate)``."""
        return math.ceil(1.0 / self.false_alarm_rate - 1e-9)

    def fit(self, scores: Any) -> bool:
        """Set :attr:`value` from ``scores`` (non-finite ones are ignored); False, and no change, when too few."""
        values = finite(scores)
        if values.size < self.minimum_scores():
            return False
        self.value = float(np.quantile(values, 1.0 - self.false_alarm_rate))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"false_alarm_rate": self.false_alarm_rate, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.false_alarm_rate = float(state["false_alarm_rate"])
        self.value = float(state["value"])


def gpd_log_likelihood(peaks: np.ndarray, gamma: float, sigma: float) -> float:
    """Log-likelihood of the excesses ``peaks`` under GPD(γ, σ); -inf outside the support."""
    n = peaks.size
    if not sigma > 0:
        return -math.inf
    if gamma == 0.0:
        return -n * math.log(sigma) - float(peaks.sum()) / sigma
    z = 1.0 + gamma * peaks / sigma
    if np.any(z <= 0):
        return -math.inf
    return -n * math.log(sigma) - (1.0 + 1.0 / gamma) * float(np.log(z).sum())


def _grimshaw_equation(peaks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``u(x)·v(x) - 1`` for each x: u = mean(1/(1+xY)), v = 1 + mean(log(1+xY)); roots give the MLE."""
    s = 1.0 + np.multiply.outer(x, peaks)  # (len(x), len(peaks))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.mean(1.0 / s, axis=1)
        v = 1.0 + np.mean(np.log(s), axis=1)
    return u * v - 1.0


def _roots(peaks: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Roots of the Grimshaw equation bracketed by sign changes between neighbouring grid points."""
    values = _grimshaw_equation(peaks, grid)
    ok = np.isfinite(values)
    change = ok[:-1] & ok[1:] & (np.sign(values[:-1]) * np.sign(values[1:]) < 0)
    lo, hi = grid[:-1][change], grid[1:][change]
    if lo.size == 0:
        return lo
    f_lo = _grimshaw_equation(peaks, lo)
    for _ in range(BISECTIONS):  # all brackets at once
        mid = 0.5 * (lo + hi)
        f_mid = _grimshaw_equation(peaks, mid)
        left = np.sign(f_mid) == np.sign(f_lo)
        lo = np.where(left, mid, lo)
        f_lo = np.where(left, f_mid, f_lo)
        hi = np.where(left, hi, mid)
    return 0.5 * (lo + hi)


def grimshaw(peaks: np.ndarray) -> tuple[float, float] | None:
    """Maximum-likelihood GPD (γ, σ) of the excesses ``peaks`` by Grimshaw's procedure; None when it cannot run."""
    y_min, y_max, y_mean = float(peaks.min()), float(peaks.max()), float(peaks.mean())
    if peaks.size < 2 or not y_min > 0 or not y_mean > y_min:
        return None
    with np.errstate(over="ignore", divide="ignore"):  # a tiny Y_min overflows c: not finite, refused below
        a = float(np.float64(-1.0) / y_max)
        c = float(np.float64(2.0) * (y_mean - y_min) / (np.float64(y_min) * y_min))
    near_zero = NEAR_ZERO / y_max  # |x| below this: |γ| < 1e-8, the exponential solution in all but name
    if not all(math.isfinite(v) for v in (a, c)) or not c > near_zero:
        return None
    half = GRID // 2
    # (a, 0): dense near both ends (the root may sit close to the pole at a, or close to 0)
    fractions = np.concatenate([np.geomspace(NEAR_ZERO, 0.5, half), 1.0 - np.geomspace(0.5, 1e-10, half)[1:]])
    left = a * fractions[::-1]  # from near a up to near 0, increasing
    right = np.geomspace(near_zero, c, GRID)
    candidates = [(0.0, y_mean)]  # x = 0: the exponential solution, always a root
    for x in np.concatenate([_roots(peaks, left), _roots(peaks, right)]):
        gamma = float(np.mean(np.log1p(x * peaks)))  # v(x) - 1
        if gamma != 0.0:
            candidates.append((gamma, gamma / float(x)))
    best = max(candidates, key=lambda c: gpd_log_likelihood(peaks, *c))
    if not math.isfinite(gpd_log_likelihood(peaks, *best)):
        return None
    return best


def moments(peaks: np.ndarray) -> tuple[float, float] | None:
    """Method-of-moments GPD (γ, σ): from mean σ/(1-γ) and variance σ²/((1-γ)²(1-2γ)); None at zero variance."""
    mean, var = float(peaks.mean()), float(peaks.var())
    if not var > 0 or not mean > 0:
        return None
    ratio = mean * mean / var
    return 0.5 * (1.0 - ratio), 0.5 * mean * (1.0 + ratio)


def fit_gpd(peaks: np.ndarray) -> tuple[float, float, str]:
    """(γ, σ, method) for the excesses ``peaks``: Grimshaw, else the method of moments, else exponential."""
    fitted = grimshaw(peaks)
    if fitted is not None:
        return fitted[0], fitted[1], "grimshaw"
    fitted = moments(peaks)
    if fitted is not None and all(math.isfinite(v) for v in fitted) and fitted[1] > 0:
        return fitted[0], fitted[1], "moments"
    return 0.0, float(peaks.mean()), "exponential"


def tail_quantile(t: float, gamma: float, sigma: float, risk: float, n: float, peaks: float) -> float:
    """SPOT's ``z_q``: the score exceeded with probability ``risk`` under the fitted tail (module docstring)."""
    r = risk * n / peaks
    if gamma == 0.0:
        return t - sigma * math.log(r)
    return t + (sigma / gamma) * (r ** (-gamma) - 1.0)


class Spot:
    """Streaming peaks-over-threshold (module docstring): :meth:`fit` once, then :meth:`update`.

    State (:meth:`state_dict`) is plain JSON data: the settings, ``t``, ``z`` (z_q, +inf until
    fitted), ``n``, ``count`` (N_t), ``gamma``, ``sigma``, ``method`` and ``peaks`` (the kept
    excesses, oldest first).
    """

    def __init__(self, risk: float = 1e-3, level: float = 0.98, max_peaks: int = MAX_PEAKS):
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        if not 0.0 < risk < 1.0 - level:
            raise ValueError(f"risk must lie in (0, 1 - level) = (0, {1.0 - level:g}), got {risk}")
        if max_peaks < MIN_PEAKS:
            raise ValueError(f"max_peaks must be at least {MIN_PEAKS}, got {max_peaks}")
        self.risk, self.level, self.max_peaks = float(risk), float(level), int(max_peaks)
        self.t = math.nan
        self.z = math.inf
        self.n = 0.0
        self.count = 0.0
        self.gamma = 0.0
        self.sigma = 0.0
        self.method = "none"
        self.peaks = np.zeros(0)

    @property
    def fitted(self) -> bool:
        return self.method != "none"

    def fit(self, scores: Any) -> bool:
        """Calibrate on ``scores`` (non-finite ones ignored): t, the peaks, the GPD and z_q.

        Returns False, leaving the state as it was, when fewer than :data:`MIN_PEAKS` scores lie
        strictly above the ``level`` quantile.
        """
        values = finite(scores)
        if values.size == 0:
            return False
        t = float(np.quantile(values, self.level))
        excesses = values[values > t] - t
        if excesses.size < MIN_PEAKS:
            return False
        self.t, self.n, self.count = t, float(values.size), float(excesses.size)
        self.peaks = excesses[-self.max_peaks :]
        self._refit()
        return True

    def update(self, scores: Any) -> np.ndarray:
        """Stream ``scores`` through (module docstring); returns their alarms (score > z_q in force), as booleans."""
        if not self.fitted:
            raise RuntimeError("Spot.update before a successful fit")
        values = np.asarray(scores, dtype=np.float64).ravel()
        alarms = values > self.z
        counted = ~alarms & ~np.isnan(values)
        new = values[counted & (values > self.t)] - self.t
        self.n += float(counted.sum())
        if new.size:
            self.count += float(new.size)
            self.peaks = np.concatenate([self.peaks, new])[-self.max_peaks :]
            self.gamma, self.sigma, self.method = fit_gpd(self.peaks)
        self.z = tail_quantile(self.t, self.gamma, self.sigma, self.risk, self.n, self.count)
        return alarms

    def _refit(self) -> None:
        self.gamma, self.sigma, self.method = fit_gpd(self.peaks)
        self.z = tail_quantile(self.t, self.gamma, self.sigma, self.risk, self.n, self.count)

    def state_dict(self) -> dict[str, Any]:
        return {
            "risk": self.risk,
            "level": self.level,
            "max_peaks": self.max_peaks,
            "t": self.t,
            "z": self.z,
            "n": self.n,
            "count": self.count,
            "gamma": self.gamma,
            "sigma": self.sigma,
            "method": self.method,
            "peaks": self.peaks.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.risk, self.level, self.max_peaks = float(state["risk"]), float(state["level"]), int(state["max_peaks"])
        for key in ("t", "z", "n", "count", "gamma", "sigma"):
            setattr(self, key, float(state[key]))
        if state["method"] not in METHODS:
            raise ValueError(f"unknown SPOT fit method {state['method']!r}")
        self.method = state["method"]
        self.peaks = np.asarray(state["peaks"], dtype=np.float64).reshape(-1)[-self.max_peaks :]
