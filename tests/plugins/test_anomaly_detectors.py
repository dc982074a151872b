"""The anomaly detectors (lifelong_anomaly): ``autoencoder`` and ``sequence-autoencoder``.

Each model is driven as the kernel drives it: forward, ``sample_loss``, an optimizer step, then
its own hooks' ``after_step`` with the stream batch and the pre-update outputs, and
``on_boundary`` at boundaries; held-out data is scored in eval mode.
"""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lifelong_anomaly
from lifelong.components import Components
from lifelong.errors import ConfigError
from lifelong.host import PluginHost
from lifelong.objective import NOT_CALIBRATED, Detection
from lifelong.types import Batch, StreamInfo
from lifelong_anomaly import autoencoder, detector, sequence
from lifelong_anomaly.autoencoder import Autoencoder, AutoencoderOptions
from lifelong_anomaly.sequence import SequenceAutoencoder, SequenceOptions

FEATURES = 10


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mixing() -> torch.Tensor:
    return torch.randn(FEATURES, FEATURES, generator=torch.Generator().manual_seed(0)) / 3


def normal(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Correlated Gaussian features with a non-zero mean and scale (the scaler has work to do)."""
    return torch.randn(n, FEATURES, generator=generator) @ mixing() * 2 + 5


def stream_batch(x: torch.Tensor) -> Batch:
    return Batch(x=x, y=torch.full((x.shape[0],), -1, dtype=torch.int64))


def train(model, batches, boundary_every: int = 0, lr: float = 1e-3, hooks=None):
    """The kernel's step for a detector: weighted mean of sample_loss, step, after_step; boundaries."""
    hooks = hooks or model.lifecycle_hooks()
    optimizer = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for step, x in enumerate(batches, 1):
        outputs = model(x)
        losses = model.sample_loss(x, outputs)
        weights = model.sample_weights(x, model.anomaly_score(x, outputs))
        weights = torch.ones_like(losses) if weights is None else weights
        loss = (weights * losses).sum() / weights.sum().clamp_min(1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        hooks.after_step(stream_batch(x), outputs.detach(), True)
        if boundary_every and step % boundary_every == 0:
            hooks.on_boundary(None, model)
    return hooks


def scores(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.anomaly_score(x, model(x))


def dense(**options) -> Autoencoder:
    defaults = {"hidden": [32], "latent": 4}
    return Autoencoder(AutoencoderOptions(**{**defaults, **options}), StreamInfo(input_shape=(FEATURES,), num_classes=2))


def test_doctests():
    for module in (lifelong_anomaly, detector, autoencoder, sequence):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_registered_with_options_checked():
    components = Components(PluginHost())
    info = StreamInfo(input_shape=(FEATURES,), num_classes=2)
    model, resolved = components.build_model_options("autoencoder", {"threshold": "spot"}, info, "model")
    assert isinstance(model, Autoencoder) and resolved["threshold"] == "spot" and resolved["hidden"] == [64, 32]
    windows = StreamInfo(input_shape=(50, 2), num_classes=2)
    model, _ = components.build_model_options("sequence-autoencoder", None, windows, "model")
    assert isinstance(model, SequenceAutoencoder)
    bad = [
        ("autoencoder", {"threshold": "spot", "risk": 0.05}, info, "risk must lie in"),
        ("autoencoder", {"false_alarm_rate": 0.0}, info, "false_alarm_rate"),
        ("autoencoder", {"recent": 50}, info, "raise recent"),  # 50 scores cannot calibrate 1 %
        ("autoencoder", {"noise": -0.1}, info, "noise"),
        ("autoencoder", {"hidden": [8, 0]}, info, "hidden"),
        ("autoencoder", {"threshold": "median"}, info, "threshold"),
        ("sequence-autoencoder", {"kernel": 4}, windows, "odd"),
        ("sequence-autoencoder", {"channels": []}, windows, "channels"),
        ("sequence-autoencoder", None, StreamInfo(input_shape=(3, 8, 8), num_classes=2), "windows of shape"),
    ]
    for name, raw, stream, message in bad:
        with pytest.raises(ConfigError, match=message) as error:
            components.build_model_options(name, raw, stream, "model")
        assert str(error.value).startswith("model"), error.value


@pytest.mark.parametrize("kind", ["autoencoder", "sequence"])
def test_protocol_shapes(kind):
    if kind == "autoencoder":  # images are flattened
        model = Autoencoder(AutoencoderOptions(hidden=[16], latent=3), StreamInfo(input_shape=(1, 4, 4), num_classes=2))
        x = torch.randn(6, 1, 4, 4)
        output_shape = (6, 16)
    else:
        model = SequenceAutoencoder(SequenceOptions(channels=[8, 4], latent=3), StreamInfo(input_shape=(33, 2), num_classes=2))
        x = torch.randn(6, 33, 2)
        output_shape = (6, 33, 2)
    outputs = model(x)
    assert outputs.shape == output_shape
    loss = model.sample_loss(x, outputs)
    assert loss.shape == (6,) and loss.requires_grad
    score = model.anomaly_score(x, outputs)
    assert score.shape == (6,) and not score.requires_grad
    assert torch.equal(score, loss.detach())
    # what lets a training step take the scores from its loss (scores_from_loss), and that it does
    assert model.scores_from_loss and torch.equal(Detection().loss(model, stream_batch(x), outputs)[2], score)
    assert model.sample_weights(x, score) is None  # no filter, no hold-out (the defaults)
    model.options.holdout = 0.3
    held = model.held_out(x)
    assert held.shape == (6,) and held.dtype == torch.bool
    assert torch.equal(model.sample_weights(x, score), (~held).float())
    model.options.holdout = 0.0
    assert model.threshold.shape == () and model.threshold.dtype == torch.float32 and model.threshold.item() == NOT_CALIBRATED
    # extra epochs (first_pass False) record nothing and leave the statistics alone
    hooks = model.lifecycle_hooks()
    hooks.after_step(stream_batch(x), outputs.detach(), False)
    assert model.recent_total.item() == 0 and model.scaler.input_count.item() == 0
    hooks.after_step(stream_batch(x), outputs.detach(), True)
    assert model.recent_total.item() == 6 and model.scaler.input_count.item() == 6
    assert torch.equal(model.recorded(), x.reshape(6, *model.shape))


def test_score_is_the_error_in_standardised_space():
    model = dense()
    hooks = model.lifecycle_hooks()
    first, second = normal(64), normal(32)
    hooks.after_step(stream_batch(first), model(first).detach(), True)
    hooks.after_step(stream_batch(second), model(second).detach(), True)
    seen = torch.cat([first, second]).double()
    mean, std = seen.mean(0), seen.std(0, unbiased=False)  # population std, as StandardScaler
    x = normal(5)
    model.eval()
    outputs = model(x)
    standardised = ((x.double() - mean) / std).float()
    assert torch.allclose(outputs, model.network(standardised), atol=1e-5)
    expected = (outputs - standardised).square().mean(dim=1)
    assert torch.allclose(model.anomaly_score(x, outputs), expected, atol=1e-5)


def test_noise_only_in_training():
    model = dense(noise=0.5)
    x = normal(16)
    model.train()
    assert not torch.equal(model(x), model(x))  # noisy input in training
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_calibration_rescores_the_span_in_eval_mode(noise):
    model = dense(false_alarm_rate=0.05, recent=1000, noise=noise)
    hooks = train(model, (normal(32) for _ in range(10)))  # 320 samples
    assert model.calibrate()
    model.train()  # calibrating leaves the mode as it found it
    assert model.calibration_scores().size == 20  # nothing since the boundary: the 20 newest (1 / 5 %)
    assert model.training
    first_span = model.recorded()
    assert first_span.shape == (320, FEATURES)
    train(model, (normal(32) for _ in range(5)), hooks=hooks)  # 160 more
    assert torch.equal(model.recorded(480)[:320], first_span)
    expected = np.quantile(scores(model, model.recorded(160)).double().numpy(), 0.95)  # eval mode
    model.train()  # as the kernel leaves it at a boundary: no noise may reach the calibration scores
    assert model.calibrate()
    assert model.threshold.item() == pytest.approx(expected, rel=1e-6)
    assert model.training


def test_threshold_follows_an_abrupt_change_of_normal():
    # three concepts whose means jump; each generation's threshold is calibrated on its own span
    model = dense(false_alarm_rate=0.02, recent=5000)
    hooks = model.lifecycle_hooks()
    generator = torch.Generator().manual_seed(4)
    for shift in (0.0, 4.0, -4.0):
        data = normal(4000, generator) + shift
        train(model, data.split(32), hooks=hooks)
        hooks.on_boundary(None, model)
    held_out = scores(model, normal(50_000, generator) - 4.0)
    rate = (held_out > model.threshold).float().mean().item()
    assert 0.01 <= rate <= 0.03, rate


def test_ring_buffer_keeps_the_newest_samples_in_order():
    model = dense(recent=100)

    def rows(start: int, stop: int) -> torch.Tensor:  # sample i holds the value i in every feature
        return torch.arange(start, stop, dtype=torch.float32).unsqueeze(1).expand(-1, FEATURES)

    model.record(rows(0, 0))
    assert model.recent_total.item() == 0 and model.recorded().shape == (0, FEATURES)
    for start in range(0, 230, 23):  # 10 batches of 23: wraps around twice
        model.record(rows(start, start + 23))
    assert model.recent_total.item() == 230
    assert model.recorded()[:, 0].tolist() == list(range(130, 230))
    assert model.recorded(7)[:, 3].tolist() == list(range(223, 230))
    model.record(rows(1000, 1250))  # a batch larger than the ring
    assert model.recent_total.item() == 480
    assert model.recorded()[:, 0].tolist() == list(range(1150, 1250))


def test_the_stream_reservoir_holds_a_uniform_sample_of_every_sample_recorded():
    model = dense(recent=200, calibration="stream")

    def rows(start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, stop, dtype=torch.float32).unsqueeze(1).expand(-1, FEATURES)

    for start in range(0, 150, 37):  # not full yet: filled in order
        model.record(rows(start, min(start + 37, 150)))
    assert model.recorded()[:, 0].tolist() == list(range(150))
    for start in range(150, 20_000, 37):
        model.record(rows(start, min(start + 37, 20_000)))
    assert model.recent_total.item() == 20_000
    held = model.recorded()[:, 0].long()
    assert len(held) == 200 and len(set(held.tolist())) == 200 and int(held.max()) < 20_000
    quarters = torch.bincount(held // 5000, minlength=4).tolist()
    assert all(30 <= q <= 70 for q in quarters), quarters  # 50 expected from each quarter of the stream
    one_batch = dense(recent=200, calibration="stream")
    one_batch.record(rows(0, 20_000))  # the slots do not depend on how the stream was batched
    assert torch.equal(one_batch.recorded(), model.recorded())
    masked = dense(recent=200, calibration="stream")
    masked.record(rows(0, 300), torch.arange(300) % 2 == 0)  # only the recorded ones count
    assert masked.recent_total.item() == 150 and masked.recorded()[:, 0].tolist() == list(range(0, 300, 2))


@pytest.mark.parametrize("calibration", ["span", "stream"])
def test_stream_calibration_keeps_the_false_alarm_rate_on_every_normal_seen(calibration):
    # a normal that accumulates: the first concept stays normal after the second is learned, and the
    # model (no replay) scores it higher than the newest one. The span's threshold is the newest concept's.
    model = dense(false_alarm_rate=0.02, recent=4000, calibration=calibration)
    hooks = model.lifecycle_hooks()
    generator = torch.Generator().manual_seed(5)
    for shift in (0.0, 3.0):
        train(model, (normal(4000, generator) + shift).split(32), hooks=hooks)
        hooks.on_boundary(None, model)
    held_out = scores(model, torch.cat([normal(20_000, generator), normal(20_000, generator) + 3.0]))
    rate = (held_out > model.threshold).float().mean().item()
    if calibration == "stream":
        assert 0.01 <= rate <= 0.03, rate
    else:
        assert rate > 0.1, rate  # what stream calibration is for


@pytest.mark.parametrize(
    "options, target",
    [({"threshold": "quantile", "false_alarm_rate": 0.02}, 0.02), ({"threshold": "spot", "risk": 0.01, "spot_level": 0.9}, 0.01)],
)
def test_threshold_lands_near_the_target_false_alarm_rate(options, target):
    model = dense(recent=5000, **options)
    generator = torch.Generator().manual_seed(1)
    train(model, (normal(32, generator) for _ in range(600)), boundary_every=200)
    assert model.threshold.item() < NOT_CALIBRATED
    held_out = scores(model, normal(100_000, torch.Generator().manual_seed(2)))
    rate = (held_out > model.threshold).float().mean().item()
    assert 0.5 * target <= rate <= 1.5 * target, rate  # the issue's ±50 %


def test_filter_keeps_far_out_samples_out_once_calibrated():
    model = dense(filter=0.05)
    x = normal(32)
    assert torch.equal(model.sample_weights(x, scores(model, x)), torch.ones(32))  # not calibrated: everything kept
    train(model, (normal(32) for _ in range(300)), boundary_every=300)
    assert model.threshold.item() < NOT_CALIBRATED
    batch = normal(200)
    batch[:20] += 25.0  # injected anomalies
    model.train()
    outputs = model(batch)
    weights = model.sample_weights(batch, model.anomaly_score(batch, outputs))
    assert weights.dtype == torch.float32 and weights.shape == (200,)
    assert weights[:20].sum().item() == 0  # every injected anomaly is out of the update and the memories
    assert weights[20:].mean().item() > 0.9  # normal samples are kept (about 1 - filter)
    # the filter level is the 95 % quantile; the alarm threshold is calibrated on the scores below it
    assert model.threshold.item() <= model.filter_threshold.item() < NOT_CALIBRATED
    assert model.sample_weights(torch.zeros(2, FEATURES) + 1.0, torch.tensor([math.nan, 0.0])).tolist() == [0.0, 1.0]
    model.options.filter = 0.0
    assert model.sample_weights(batch, model.anomaly_score(batch, outputs)) is None


def test_sequence_detector_flags_a_spiked_window():
    window = 32
    info = StreamInfo(input_shape=(window, 1), num_classes=2)
    model = SequenceAutoencoder(SequenceOptions(channels=[8, 8], latent=6, recent=2000), info)

    def windows(n: int, generator: torch.Generator) -> torch.Tensor:
        phase = torch.rand(n, 1, generator=generator) * 2 * math.pi
        t = torch.arange(window) * (2 * math.pi / 16)
        return (torch.sin(t + phase) + 0.05 * torch.randn(n, window, generator=generator)).unsqueeze(-1)

    generator = torch.Generator().manual_seed(3)
    train(model, (windows(32, generator) for _ in range(300)), boundary_every=100, lr=3e-3)
    normal_windows = windows(500, generator)
    spiked = normal_windows[:50].clone()
    spiked[:, window // 2] += 3.0
    normal_scores, spiked_scores = scores(model, normal_windows), scores(model, spiked)
    assert (normal_scores > model.threshold).float().mean().item() < 0.05
    assert (spiked_scores > model.threshold).all()


@pytest.mark.parametrize(
    "threshold, update, calibration",
    [("quantile", "refit", "span"), ("spot", "refit", "span"), ("spot", "stream", "span"), ("quantile", "refit", "stream")],
)
def test_state_dict_rebuilds_scores_threshold_and_calibration_exactly(threshold, update, calibration, tmp_path):
    options = {"threshold": threshold, "spot_update": update, "recent": 3000, "risk": 0.01, "spot_level": 0.9, "spot_peaks": 200,
               "calibration": calibration}
    model = dense(**options)
    hooks = train(model, (normal(32) for _ in range(250)), boundary_every=100)
    # more scores since the last boundary: a rebuilt model must calibrate on exactly the same ones
    train(model, (normal(32) for _ in range(20)), hooks=hooks)
    assert model.threshold.item() < NOT_CALIBRATED
    if threshold == "spot":
        assert model.spot().fitted and int(model.spot_kept) == 200  # the cap
    path = tmp_path / "weights.safetensors"  # the format generations and checkpoints are written in
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    rebuilt = dense(**options)
    rebuilt.load_state_dict(load_file(str(path)))
    assert rebuilt.threshold.item() == model.threshold.item()
    x = normal(500)
    assert torch.equal(scores(rebuilt, x), scores(model, x))
    assert torch.equal(rebuilt.recorded(), model.recorded())
    if threshold == "spot":
        assert rebuilt.spot().state_dict() == model.spot().state_dict()
    assert rebuilt.calibrate() and model.calibrate()
    assert rebuilt.threshold.item() == model.threshold.item()
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    report = model.lifecycle_hooks().on_run_end({})["anomaly"]
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["threshold"] == model.threshold.item() and report["method"] == threshold


def test_spot_stream_updates_and_refit_recalibrates():
    options = {"threshold": "spot", "risk": 0.01, "spot_level": 0.9, "recent": 2000}
    streamed, refitted = dense(spot_update="stream", **options), dense(**options)
    for model in (streamed, refitted):
        torch.manual_seed(0)
        train(model, (normal(32) for _ in range(100)), boundary_every=50)
    stream_spot, refit_spot = streamed.spot(), refitted.spot()
    # stream: fitted at the first boundary on the span's 1,600 scores, updated with the second span's 1,600
    # (those above z_q, anomalies, are not counted)
    assert 3000 < stream_spot.n <= 3200
    # refit: the second boundary's fresh fit on its span's 1,600 scores
    assert refit_spot.n == 1600 and refit_spot.count == 160
    assert refitted.threshold.item() == pytest.approx(refit_spot.z, rel=1e-6)


def test_the_calibration_hold_out_is_a_fixed_share_of_samples_never_trained_on():
    model = dense(holdout=0.1, recent=5000)
    x = normal(20000, torch.Generator().manual_seed(3))
    held = model.held_out(x)
    assert 0.09 < held.float().mean().item() < 0.11
    assert torch.equal(held, model.held_out(x.clone()))  # the same samples, every time
    assert torch.equal(held, dense(holdout=0.1).held_out(x))  # and in every instance (a rebuilt generation)
    weights = model.sample_weights(x, torch.zeros(len(x)))
    assert torch.equal(weights, (~held).float())
    # only the held-out samples are recorded for calibration, in order
    hooks = model.lifecycle_hooks()
    hooks.after_step(stream_batch(x[:1000]), None, True)
    assert model.recent_total.item() == int(held[:1000].sum())
    torch.testing.assert_close(model.recorded(), x[:1000][held[:1000]])


def test_the_hold_out_keeps_the_false_alarm_rate_on_target_where_training_samples_run_low():
    """Many epochs over few samples (30 features, 600 samples, a wide autoencoder, 60 epochs): rescored
    training samples score low, so a threshold calibrated on them flags far more than the target on
    unseen normal data; calibrated on the hold-out it lands on target."""
    features = 30
    generator = torch.Generator().manual_seed(11)
    mixing = torch.randn(features, features, generator=generator)
    data = torch.randn(600, features, generator=generator) @ mixing
    unseen = torch.randn(50_000, features, generator=generator) @ mixing
    batches = [data[i : i + 50] for i in range(0, len(data), 50)]
    rates = {}
    for holdout in (0.0, 0.2):
        torch.manual_seed(0)
        options = AutoencoderOptions(hidden=[256], latent=12, holdout=holdout, false_alarm_rate=0.05, recent=2000)
        model = Autoencoder(options, StreamInfo(input_shape=(features,), num_classes=2))
        train(model, (b for _ in range(60) for b in batches), boundary_every=60 * len(batches), lr=3e-3)
        model.eval()
        with torch.no_grad():
            rates[holdout] = (model.anomaly_score(unseen, model(unseen)) > model.threshold).float().mean().item()
    assert 0.025 <= rates[0.2] <= 0.075, rates  # within ±50 % of the 5 % target
    assert rates[0.0] > 0.3, rates  # without it: most unseen normal samples are flagged
