"""Tokenizing on the reader thread: the model's ``prepare_host``, the Prefetcher's ``transform`` and
held-out sets, with the real minilm code on a tiny BERT built here (random weights, a real
``tokenizers`` WordPiece tokenizer), so only the ``tokenizers`` package is needed, not the
all-MiniLM-L6-v2 files."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.readers import Prefetcher
from lifelong.types import Batch, StreamInfo

needs_tokenizers = pytest.mark.skipif(not importlib.util.find_spec("tokenizers"), reason="tokenizers is not installed")

TOPICS = {
    "sport": ["the striker scored a late goal", "the team won the league final", "a great match for the goalkeeper",
              "the coach praised the defenders", "fans cheered the winning try", "the runner broke the world record"],
    "food": ["simmer the onions in butter", "bake the bread until golden", "a spicy curry with fresh coriander",
             "whisk the eggs with sugar", "the soup needs more salt", "grill the fish with lemon"],
}
WIDTH, LAYERS, INNER, POSITIONS = 16, 2, 32, 32


def tiny_bert(root: Path) -> str:
    """A model directory minilm loads: config.json, tokenizer.json (WordPiece over the corpus' words) and
    model.safetensors (random weights under the Hugging Face BertModel names)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for texts in TOPICS.values() for t in texts for w in t.split()} | {"today", "again"})
    vocab = {"[PAD]": 0, **{f"[unused{i}]": i for i in range(1, 100)}, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102}
    vocab.update({w: 103 + i for i, w in enumerate(words)})
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(root / "tokenizer.json"))
    config = {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": 2, "intermediate_size": INNER,
              "max_position_embeddings": POSITIONS, "vocab_size": len(vocab), "type_vocab_size": 2, "hidden_dropout_prob": 0.0}
    (root / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    state = {
        "embeddings.word_embeddings.weight": rand(len(vocab), WIDTH),
        "embeddings.position_embeddings.weight": rand(POSITIONS, WIDTH),
        "embeddings.token_type_embeddings.weight": rand(2, WIDTH),
        "embeddings.LayerNorm.weight": torch.ones(WIDTH),
        "embeddings.LayerNorm.bias": torch.zeros(WIDTH),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {"attention.self.query": (WIDTH, WIDTH), "attention.self.key": (WIDTH, WIDTH),
                                   "attention.self.value": (WIDTH, WIDTH), "attention.output.dense": (WIDTH, WIDTH),
                                   "intermediate.dense": (INNER, WIDTH), "output.dense": (WIDTH, INNER)}.items():
            state[p + name + ".weight"], state[p + name + ".bias"] = rand(rows, cols), rand(rows)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[p + norm + ".weight"], state[p + norm + ".bias"] = torch.ones(WIDTH), torch.zeros(WIDTH)
    save_file(state, str(root / "model.safetensors"))
    return str(root)


def corpus(path: Path, repeats: int = 4) -> str:
    rows = [{"text": f"{t} {'today' if i % 2 else 'again'}", "label": label}
            for i in range(repeats) for label, texts in TOPICS.items() for t in texts]
    rng = np.random.default_rng(0)
    path.write_text("\n".join(json.dumps(rows[i]) for i in rng.permutation(len(rows))) + "\n")
    return str(path)


class RecordingTokenizer:
    """The real tokenizer, recording the thread and the number of texts of every ``encode_batch`` call."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def encode_batch(self, texts):
        with self._lock:
            self.calls.append((threading.current_thread().name, len(texts)))
        return self.tokenizer.encode_batch(texts)

    def texts_on(self, thread: str) -> int:
        return sum(n for name, n in self.calls if name == thread)


def text_run(tmp_path: Path, model_dir: str, strategy: str, host_side: bool, record: bool = False):
    """A text pipeline (in-process, no trackers); ``host_side`` False makes the model tokenize in
    ``prepare`` on the training thread, as before ``prepare_host`` existed."""
    from lifelong import config, pipeline
    from lifelong.host import PluginHost

    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = config.load(None, ["learner.progress=false", "tracking.trackers=[]", "learner.strategies=['replay']",
                             "learner.device=cpu", "stream.reader=text", f"stream.path={corpus(tmp_path / 'topics.jsonl')}",
                             "stream.test_fraction=0.3", "stream.max_bytes=64", "learner.batch_size=4", "learner.epochs=2",
                             "model.name=minilm", f"model.path={model_dir}", "model.max_tokens=12", f"model.strategy={strategy}",
                             "learner.log_every=5"])
    plan = pipeline.build(PluginHost(), raw, tmp_path / "dead_letters.jsonl")
    runner = pipeline.Runner(plan)
    backbone = runner.model.backbone
    if not host_side:
        backbone.adapt_on_host = False  # an instance attribute: prepare_host is None, prepare tokenizes
    recorder = None
    if record:
        recorder = backbone.tokenizer = RecordingTokenizer(backbone.tokenizer)
    summary = runner.execute()
    return summary, runner, recorder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if not importlib.util.find_spec("tokenizers"):
        pytest.skip("tokenizers is not installed")
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@needs_tokenizers
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fine-tune-top", "feature-extractor"])
def test_stream_batches_are_tokenized_on_the_reader_thread_with_results_as_before(tmp_path, model_dir, strategy):
    summary, runner, recorder = text_run(tmp_path / "host", model_dir, strategy, host_side=True, record=True)
    held_out = sum(len(s) for s in runner.test_sets.values())
    # every stream sample was tokenized once, on the reader thread; the main thread only tokenized
    # the held-out sets (at boundaries), never a stream batch
    assert recorder.texts_on("lifelong-reader") == summary["samples_seen"] > 0
    assert recorder.texts_on(threading.main_thread().name) == held_out > 0
    assert {name for name, _ in recorder.calls} == {"lifelong-reader", threading.main_thread().name}

    before, old_runner, _ = text_run(tmp_path / "legacy", model_dir, strategy, host_side=False)
    assert summary["accuracy_matrix"] == before["accuracy_matrix"]
    assert summary["prequential_accuracy"] == before["prequential_accuracy"]
    for (name, a), (_, b) in zip(runner.model.state_dict().items(), old_runner.model.state_dict().items()):
        assert torch.equal(a, b), name
    for exp, data in runner.test_sets.items():
        assert torch.equal(data.x, old_runner.test_sets[exp].x)


@needs_tokenizers
def test_prepare_passes_token_ids_through_and_still_tokenizes_served_bytes(model_dir):
    from lifelong_transfer import minilm
    from lifelong_transfer.options import MiniLMOptions
    from lifelong_transfer.text_reader import encode

    texts = ["the team won the league final", "bake the bread", "unknown words here"]
    x = torch.from_numpy(np.stack([encode(t, 64) for t in texts]))
    for strategy in ("fine-tune-top", "feature-extractor", "fine-tune-all"):
        model = minilm(MiniLMOptions(path=model_dir, max_tokens=12, strategy=strategy), StreamInfo((64,), 2)).eval()
        ids = model.prepare_host(x)
        assert ids.dtype == torch.long and ids.shape == (3, 12) and (ids[:, 0] == 101).all()
        assert torch.equal(model.backbone.adapt(ids), ids)  # tokenizing twice is a no-op
        with torch.no_grad():
            host_then_device = model.prepare(ids)
            served = model.prepare(x.float())  # a served generation: float32 bytes, prepare alone
            assert torch.equal(host_then_device, served)
            assert torch.equal(model(host_then_device), model(served))


@needs_tokenizers
def test_image_backbones_have_no_prepare_host():
    from lifelong_transfer.model import Backbone

    assert Backbone.adapt_on_host is False  # TransferModel.prepare_host is None for them: the kernel skips it


def test_prefetcher_transform_runs_on_the_reader_thread_before_the_batch_is_handed_over():
    threads = []

    def double(x: torch.Tensor) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        assert not torch.is_grad_enabled()
        return x * 2

    batches = [Batch(x=torch.full((2, 3), float(i)), y=torch.zeros(2, dtype=torch.long), start=i, stop=i + 1, position={"i": i})
               for i in range(5)]
    stream = Prefetcher(batches, transform=double)
    try:
        got = [f.batch for f in stream.fetched()]
    finally:
        stream.close()
    assert [b.x[0, 0].item() for b in got] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [(b.start, b.stop, b.position) for b in got] == [(i, i + 1, {"i": i}) for i in range(5)]
    assert threads == ["lifelong-reader"] * 5


def test_prefetcher_transform_errors_reach_the_consumer_at_their_batch():
    def fail_on_third(x: torch.Tensor) -> torch.Tensor:
        if x[0, 0] == 2:
            raise ValueError("cannot tokenize")
        return x

    batches = [Batch(x=torch.full((1, 1), float(i)), y=torch.zeros(1, dtype=torch.long)) for i in range(5)]
    stream = Prefetcher(batches, transform=fail_on_third)
    got = []
    try:
        with pytest.raises(ValueError, match="cannot tokenize"):
            for f in stream.fetched():
                got.append(f.batch)
    finally:
        stream.close()
    assert len(got) == 2


def test_prefetcher_without_transform_hands_the_reader_batches_over_unchanged():
    batches = [Batch(x=torch.rand(2, 3), y=torch.zeros(2, dtype=torch.long)) for _ in range(3)]
    stream = Prefetcher(batches)
    try:
        got = [f.batch for f in stream.fetched()]
    finally:
        stream.close()
    assert all(a is b for a, b in zip(got, batches))
