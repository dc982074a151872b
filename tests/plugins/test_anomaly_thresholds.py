"""Anomaly thresholds (lifelong_anomaly.thresholds): the quantile threshold and SPOT.

SPOT is checked against hand-worked values (z_q from a given tail; the method-of-moments
fallback), against the maximum-likelihood conditions Grimshaw's procedure solves, against
scipy's independent GPD fit, and against tails whose exact quantiles are known in closed form.
"""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from scipy.stats import genpareto

from lifelong_anomaly import thresholds
from lifelong_anomaly.thresholds import QuantileThreshold, Spot, fit_gpd, gpd_log_likelihood, tail_quantile


def test_doctests():
    assert doctest.testmod(thresholds).failed == 0


def test_tail_quantile_hand_worked():
    # t = 1, σ = 2, γ = 0.5, q = 1e-3, n = 1000, N_t = 20:  r = q·n/N_t = 0.05,
    # z = 1 + (2 / 0.5)·(0.05^-0.5 - 1) = 1 + 4·(4.472135955 - 1) = 14.88854382
    assert tail_quantile(1.0, 0.5, 2.0, 1e-3, 1000, 20) == pytest.approx(14.88854382, abs=1e-8)
    # γ = 0 (exponential tail): z = 1 - 2·ln(0.05) = 1 + 2·2.995732274 = 6.991464547
    assert tail_quantile(1.0, 0.0, 2.0, 1e-3, 1000, 20) == pytest.approx(6.991464547, abs=1e-8)
    # γ = -0.5 (bounded tail, endpoint t + σ/|γ| = 5): z = 1 - 4·(0.05^0.5 - 1) = 1 + 4·0.776393202 = 4.105572809
    assert tail_quantile(1.0, -0.5, 2.0, 1e-3, 1000, 20) == pytest.approx(4.105572809, abs=1e-8)


def test_method_of_moments_fallback_hand_worked():
    # The smallest excess is so small that Grimshaw's bound 2(Ȳ-Y_min)/Y_min² is infinite: moments instead.
    # Ȳ = 1.5 (to 1e-300), population variance s² = 1.25: Ȳ²/s² = 1.8, γ = ½(1 - 1.8) = -0.4, σ = ½·1.5·2.8 = 2.1
    gamma, sigma, method = fit_gpd(np.array([1e-300, 1.0, 2.0, 3.0]))
    assert method == "moments"
    assert gamma == pytest.approx(-0.4, abs=1e-12) and sigma == pytest.approx(2.1, abs=1e-12)
    # all excesses equal: no variance, exponential fit with σ = mean
    assert fit_gpd(np.array([0.5, 0.5, 0.5])) == (0.0, 0.5, "exponential")


def test_grimshaw_solves_the_likelihood_equations_on_a_tiny_sample():
    # Worked by hand from the GPD log-likelihood: at an interior maximum with x = γ/σ,
    #   ∂/∂σ = 0  ⇔  (1 + γ)·mean(1 / (1 + x·Y)) = 1,   ∂/∂γ = 0  ⇔  γ = mean(log(1 + x·Y)).
    peaks = np.array([0.1, 0.3, 0.4, 0.9, 1.5, 2.2, 4.0, 9.5])  # a heavy-looking tail: γ > 0
    gamma, sigma, method = fit_gpd(peaks)
    assert method == "grimshaw" and gamma > 0
    x = gamma / sigma
    assert gamma == pytest.approx(np.mean(np.log1p(x * peaks)), abs=1e-9)
    assert (1 + gamma) * np.mean(1 / (1 + x * peaks)) == pytest.approx(1.0, abs=1e-9)
    # and it is the maximum: no point of a dense grid around it, nor the exponential fit, is more likely
    best = gpd_log_likelihood(peaks, gamma, sigma)
    assert best >= gpd_log_likelihood(peaks, 0.0, peaks.mean())
    for g in np.linspace(gamma - 0.5, gamma + 0.5, 41):
        for s in np.linspace(sigma * 0.5, sigma * 1.5, 41):
            assert gpd_log_likelihood(peaks, float(g), float(s)) <= best + 1e-9
    # scipy's independent maximum-likelihood fit (location fixed at 0) agrees
    c, _, scale = genpareto.fit(peaks, floc=0)
    assert gamma == pytest.approx(c, abs=1e-3) and sigma == pytest.approx(scale, rel=1e-3)


@pytest.mark.parametrize("shape", [0.5, 0.0, -0.3])
def test_spot_finds_the_known_tail_quantile(shape):
    # X = (U^-γ - 1)/γ is GPD(γ, 1) (Exp(1) for γ = 0); its excesses over any t are GPD(γ, 1 + γt), and
    # P(X > z) = q at z = (q^-γ - 1)/γ (-ln q for γ = 0): SPOT must find it from 100,000 scores
    # (across seeds 0-7 the error stayed within 7.4 %).
    u = np.random.default_rng(7).random(100_000)
    scores = -np.log(u) if shape == 0 else (u ** (-shape) - 1) / shape
    risk = 1e-3
    exact = -math.log(risk) if shape == 0 else (risk ** (-shape) - 1) / shape
    spot = Spot(risk=risk, level=0.98)
    assert spot.fit(scores)
    assert spot.method == "grimshaw"
    assert spot.n == 100_000 and spot.count == pytest.approx(2000, abs=1)
    assert spot.t == pytest.approx(np.quantile(scores, 0.98))
    assert spot.gamma == pytest.approx(shape, abs=0.06)
    assert spot.z == pytest.approx(exact, rel=0.1)
    c, _, scale = genpareto.fit(spot.peaks, floc=0)
    assert spot.gamma == pytest.approx(c, abs=1e-3) and spot.sigma == pytest.approx(scale, rel=1e-3)


def test_spot_streaming_update():
    rng = np.random.default_rng(3)
    spot = Spot(risk=1e-3, level=0.9, max_peaks=50)
    assert spot.fit(rng.exponential(size=2000))
    assert spot.peaks.size == 50 and spot.count == 200  # the newest 50 peaks kept, all 200 counted
    t, z, n, gamma = spot.t, spot.z, spot.n, spot.gamma
    # one anomaly above z_q, one new peak, one ordinary score, one NaN
    alarms = spot.update([z + 1.0, t + 0.25, t - 0.5, math.nan])
    assert alarms.tolist() == [True, False, False, False]
    assert spot.n == n + 2 and spot.count == 201  # the anomaly and the NaN are not counted
    assert spot.peaks.size == 50 and spot.peaks[-1] == pytest.approx(0.25)  # the oldest peak dropped
    assert spot.t == t and spot.gamma != gamma  # refitted on the new peaks, t fixed
    assert spot.z == pytest.approx(tail_quantile(t, spot.gamma, spot.sigma, 1e-3, n + 2, 201))
    # no peak in a call: no refit, but z_q follows the new n (a lower exceedance rate of t)
    gamma, z = spot.gamma, spot.z
    assert not spot.update(np.full(100, t - 0.1)).any()
    assert spot.gamma == gamma and spot.n == n + 102 and spot.z < z
    # every score of a call is judged by the z_q in force when the call starts
    z = spot.z
    alarms = spot.update(np.array([z - 1e-9, z + 1e-9]))
    assert alarms.tolist() == [False, True]


def test_spot_refuses_too_few_peaks_and_bad_settings():
    spot = Spot(risk=1e-3, level=0.98)
    assert not spot.fit(np.arange(100.0))  # 2 peaks over the 98 % quantile: fewer than MIN_PEAKS
    assert not spot.fitted and spot.z == math.inf
    with pytest.raises(RuntimeError):
        spot.update([1.0])
    with pytest.raises(ValueError, match="risk"):
        Spot(risk=0.05, level=0.98)  # the risk must be rarer than t's exceedance rate
    with pytest.raises(ValueError, match="level"):
        Spot(risk=1e-3, level=1.0)


def test_spot_state_round_trip_is_json_and_exact():
    rng = np.random.default_rng(5)
    spot = Spot(risk=1e-3, level=0.95, max_peaks=100)
    spot.fit(rng.gamma(2.0, size=3000))
    spot.update(rng.gamma(2.0, size=500))
    state = json.loads(json.dumps(spot.state_dict(), allow_nan=False))
    copy = Spot()
    copy.load_state_dict(state)
    assert copy.state_dict() == spot.state_dict()
    more = rng.gamma(2.0, size=700)
    assert np.array_equal(copy.update(more), spot.update(more))
    assert copy.z == spot.z and copy.gamma == spot.gamma and np.array_equal(copy.peaks, spot.peaks)


def test_quantile_threshold():
    threshold = QuantileThreshold(0.1)
    assert threshold.minimum_scores() == 10
    assert not threshold.fit(np.arange(9.0)) and threshold.value == math.inf  # fewer than 1/rate scores
    assert threshold.fit([*np.arange(1.0, 101.0), math.nan, math.inf])  # non-finite scores ignored
    assert threshold.value == pytest.approx(90.1)  # numpy's linear quantile at 0.9 of 1..100
    # on a large sample the share of scores above it is the target rate
    scores = np.random.default_rng(1).normal(size=100_000)
    rate = QuantileThreshold(0.01)
    rate.fit(scores)
    assert np.mean(scores > rate.value) == pytest.approx(0.01, abs=1e-4)
    copy = QuantileThreshold()
    copy.load_state_dict(json.loads(json.dumps(rate.state_dict())))
    assert copy.value == rate.value and copy.false_alarm_rate == 0.01
    with pytest.raises(ValueError, match="false_alarm_rate"):
        QuantileThreshold(0.0)
