"""The npz and csv readers, on real files: order, batches, offsets, hold-out, dead letters, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.errors import UserError
from lifelong.options import validate
from lifelong_streams.csv_reader import CsvOptions, csv_reader
from lifelong_streams.npz import NpzOptions, npz_reader
from tests.conftest import cli, run_pipeline
from tests.fixtures.readers import context, dead_letters


# -- npz -------------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_streams_in_file_order_and_cuts_batches_at_experience_changes(tmp_path):
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    exp = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 2])  # experience 0 recurs after 1
    reader = npz_reader(NpzOptions(path=write_npz(tmp_path / "s.npz", x=x, y=y, experience=exp)), context(tmp_path))
    batches = list(reader)
    assert [(b.experience, b.start, b.stop) for b in batches] == [
        (0, 0, 2), (0, 2, 3), (1, 3, 5), (1, 5, 7), (0, 7, 9), (2, 9, 10)
    ]
    assert torch.equal(torch.cat([b.x for b in batches]), torch.from_numpy(x))
    assert torch.cat([b.y for b in batches]).tolist() == y.tolist()
    assert all(b.task is None for b in batches)
    info = reader.info()
    assert (info.input_shape, info.num_classes, info.experiences, info.num_batches) == ((2, 2), 3, [0, 1, 2], 6)
    assert info.class_names == ["0", "1", "2"] and info.num_tasks == 1
    assert reader.test_set(0) is None  # no hold-out asked for


def test_npz_without_experience_is_one_experience_and_string_labels_are_sorted(tmp_path):
    path = write_npz(tmp_path / "s.npz", x=np.zeros((3, 5)), y=np.array(["dog", "cat", "bird"]))
    reader = npz_reader(NpzOptions(path=path), context(tmp_path, batch_size=8))
    (batch,) = list(reader)
    assert batch.experience == 0 and batch.y.tolist() == [2, 1, 0]
    assert reader.info().class_names == ["bird", "cat", "dog"] and reader.info().experiences == [0]


def test_npz_task_scenario_uses_the_experience_id_as_task(tmp_path):
    path = write_npz(tmp_path / "s.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]), experience=np.array([0, 0, 2, 2]))
    reader = npz_reader(NpzOptions(path=path, scenario="task"), context(tmp_path))
    assert [b.task.tolist() for b in reader] == [[0, 0], [2, 2]]
    assert reader.info().num_tasks == 3 and reader.info().num_classes == 2


def test_npz_bad_rows_go_to_dead_letters_and_the_rest_streams(tmp_path):
    x = np.ones((7, 2))
    x[1, 0] = np.nan
    x[2, 1] = np.inf
    y = np.array([0, 1, np.nan, -1, 2.5, 1, 0])
    exp = np.array([0, 0, 0, 0, 0, 1.5, 1])
    ctx = context(tmp_path, batch_size=8)
    path = write_npz(tmp_path / "s.npz", x=x, y=y, experience=exp)
    batches = list(npz_reader(NpzOptions(path=path), ctx))
    assert [(b.experience, b.y.tolist(), b.start, b.stop) for b in batches] == [(0, [0], 0, 1), (1, [0], 6, 7)]
    letters = dead_letters(ctx)
    assert [d["offset"] for d in letters] == [1, 2, 3, 4, 5]
    assert all(d["source"] == path for d in letters)
    reasons = [d["reason"] for d in letters]
    assert "NaN or infinite" in reasons[0] and "NaN or infinite" in reasons[1]
    assert "negative" in reasons[2] and "not an integer" in reasons[3] and "experience id 1.5" in reasons[4]
    assert letters[3]["record"] == {"y": 2.5, "experience": 0.0}


def test_npz_test_fraction_holds_out_rows_per_experience_deterministically(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    x, y, exp = rng.normal(size=(n, 3)), rng.integers(0, 4, n), np.repeat([0, 1], n // 2)
    path = write_npz(tmp_path / "s.npz", x=x, y=y, experience=exp)

    reader = npz_reader(NpzOptions(path=path, test_fraction=0.25), context(tmp_path, batch_size=16))
    streamed = torch.cat([b.x for b in reader])
    tests = [reader.test_set(e) for e in (0, 1)]
    assert all(t is not None and t.experience == e for e, t in zip((0, 1), tests))
    held = torch.cat([t.x for t in tests])
    assert len(streamed) + len(held) == n and 40 <= len(held) <= 60
    rows = {tuple(r) for r in torch.from_numpy(x).float().tolist()}
    assert {tuple(r) for r in streamed.tolist()} | {tuple(r) for r in held.tolist()} == rows
    assert not {tuple(r) for r in streamed.tolist()} & {tuple(r) for r in held.tolist()}
    assert torch.equal(npz_reader(NpzOptions(path=path, test_fraction=0.25), context(tmp_path, seed=0)).test_set(1).x, tests[1].x)
    assert not torch.equal(npz_reader(NpzOptions(path=path, test_fraction=0.25), context(tmp_path, seed=7)).test_set(1).x, tests[1].x)
    offsets = [(b.start, b.stop) for b in reader]  # training rows keep file order
    assert offsets == sorted(offsets)


def test_npz_test_path_gives_test_sets_and_drops_unknown_labels(tmp_path):
    train = write_npz(tmp_path / "train.npz", x=np.zeros((4, 2)), y=np.array(["a", "b", "a", "b"]), experience=np.array([0, 0, 1, 1]))
    test = write_npz(tmp_path / "test.npz", x=np.ones((3, 2)), y=np.array(["b", "zebra", "a"]), experience=np.array([0, 1, 1]))
    ctx = context(tmp_path)
    reader = npz_reader(NpzOptions(path=train, test_path=test), ctx)
    assert reader.test_set(0).y.tolist() == [1] and reader.test_set(1).y.tolist() == [0]
    (letter,) = dead_letters(ctx)
    assert letter["source"] == test and letter["offset"] == 1 and "'zebra'" in letter["reason"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x,y\n1,2\n"), "not a readable .npz"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p), "single .npy array"),
        (lambda p: np.savez(p, y=np.zeros(3)), "no array 'x'"),
        (lambda p: np.savez(p, x=np.zeros((3, 2)), y_test=np.zeros(3)), "'y_test' but no 'x_test'"),
        (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.zeros(2)), "one label per row of x (3)"),
        (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.zeros(3), experience=np.zeros(4)), "one id per row of x (3)"),
        (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([{}, {}, {}], dtype=object)), "not a readable .npz"),
        (lambda p: np.savez(p, x=np.full((2, 2), np.nan), y=np.zeros(2)), "no valid rows"),
    ],
    ids=["missing", "text", "npy", "no-x", "orphan-y-test", "y-length", "experience-length", "pickled", "all-bad"],
)
def test_npz_file_problems_are_user_errors_naming_the_file(tmp_path, setup, message):
    path = tmp_path / "data.npz"
    setup(path)
    with pytest.raises(UserError) as err:
        npz_reader(NpzOptions(path=str(path)), context(tmp_path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_npz_option_errors(tmp_path):
    with pytest.raises(UserError, match="stream.path"):
        npz_reader(NpzOptions(), context(tmp_path))
    path = write_npz(tmp_path / "s.npz", x=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(UserError, match="task scenario"):
        npz_reader(NpzOptions(path=path, scenario="task"), context(tmp_path))
    with pytest.raises(UserError, match="test_fraction"):
        validate(NpzOptions, {"path": path, "test_fraction": 1.0}, "stream")


# -- csv -------------------------------------------------------------------------------------------

GOOD_AND_BAD = """\
f1,f2,label,exp
1,2,cat,0
3,4,dog,0
5,6,cat
7,oops,dog,0
8,nan,cat,0

9,10,,0
11,12,cow,0
13,14,dog,1
15,16,cat,1.5
17,18,dog,1
"""


def write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_bad_records_go_to_dead_letters_with_reason_file_and_line(tmp_path):
    path = write_csv(tmp_path / "s.csv", GOOD_AND_BAD)
    ctx = context(tmp_path, batch_size=2)
    reader = csv_reader(CsvOptions(path=path, experience="exp", classes=["cat", "dog"]), ctx)
    batches = list(reader)
    assert [(b.experience, b.y.tolist(), b.start, b.stop) for b in batches] == [(0, [0, 1], 2, 4), (1, [1, 1], 10, 13)]
    assert batches[0].x.tolist() == [[1, 2], [3, 4]] and batches[0].x.dtype == torch.float32
    assert all(b.source == path for b in batches)
    letters = dead_letters(ctx)
    assert [(d["offset"], d["record"]) for d in letters] == [
        (4, "5,6,cat"), (5, "7,oops,dog,0"), (6, "8,nan,cat,0"), (8, "9,10,,0"), (9, "11,12,cow,0"), (11, "15,16,cat,1.5")
    ]
    assert all(d["source"] == path for d in letters)
    reasons = [d["reason"] for d in letters]
    assert "expected 4 fields, got 3" in reasons[0]
    assert "'f2'" in reasons[1] and "not a number" in reasons[1]
    assert "'f2'" in reasons[2] and "NaN" in reasons[2]
    assert "'label'" in reasons[3] and "empty" in reasons[3]
    assert "'cow'" in reasons[4] and "not one of the classes" in reasons[4]
    assert "'exp'" in reasons[5] and "integer" in reasons[5]
    info = reader.info()
    assert (info.input_shape, info.num_classes, info.class_names, info.experiences, info.num_batches) == (
        (2,), 2, ["cat", "dog"], None, None
    )


def test_csv_scans_for_classes_when_not_given(tmp_path):
    path = write_csv(tmp_path / "s.csv", "a;label\n1;10\n2;9\n3;x,y\n4;10\n5;\n")
    ctx = context(tmp_path, batch_size=10)
    reader = csv_reader(CsvOptions(path=path, delimiter=";"), ctx)
    # issue 13: most labels are integers, so the column holds class numbers and 'x,y' is a dead letter
    assert reader.info().class_names == ["9", "10"]  # numeric order
    assert [b.y.tolist() for b in reader] == [[1, 0, 1]]
    assert [d["offset"] for d in dead_letters(ctx)] == [4, 6]  # reported once, by the stream, not by the scan
    text = csv_reader(CsvOptions(path=write_csv(tmp_path / "t.csv", "a,label\n1,b\n2,10\n3,a\n")), context(tmp_path))
    assert text.info().class_names == ["10", "a", "b"]  # mostly text: every label is a class, text order


def test_csv_task_scenario_and_quoted_fields(tmp_path):
    path = write_csv(tmp_path / "s.csv", 'x,"the label",e\n1,"a",0\n2,b,0\n3,"b",2\n')
    reader = csv_reader(CsvOptions(path=path, label="the label", experience="e", scenario="task"), context(tmp_path))
    assert [(b.task.tolist(), b.y.tolist()) for b in reader] == [([0, 0], [0, 1]), ([2], [1])]
    assert reader.info().num_tasks == 3


def test_csv_test_fraction_is_deterministic_and_known_only_after_the_experience_streamed(tmp_path):
    lines = ["a,b,label,exp"] + [f"{i},{i % 7},{i % 3},{i // 50}" for i in range(150)]
    path = write_csv(tmp_path / "s.csv", "\n".join(lines) + "\n")
    options = CsvOptions(path=path, experience="exp", test_fraction=0.3)
    reader = csv_reader(options, context(tmp_path, batch_size=8))
    seen = []
    for batch in reader:
        # Experiences the stream has passed are ready; later ones are not.
        assert all(reader.test_set(e) is not None for e in range(batch.experience))
        assert all(reader.test_set(e) is None for e in range(batch.experience + 1, 3))
        seen.append(batch)
    held = [reader.test_set(e) for e in range(3)]
    assert all(h is not None and h.experience == e for e, h in enumerate(held))
    streamed = torch.cat([b.x[:, 0] for b in seen]).long().tolist()
    tested = torch.cat([h.x[:, 0] for h in held]).long().tolist()
    assert sorted(streamed + tested) == list(range(150)) and 25 <= len(tested) <= 65
    again = csv_reader(options, context(tmp_path, batch_size=8))
    list(again)
    assert torch.equal(again.test_set(1).x, held[1].x)
    other = csv_reader(options, context(tmp_path, batch_size=8, seed=3))
    list(other)
    assert not torch.equal(other.test_set(1).x, held[1].x)


def test_csv_test_path_is_read_upfront_and_lists_experiences(tmp_path):
    train = write_csv(tmp_path / "train.csv", "a,b,label,exp\n1,2,x,0\n3,4,y,1\n")
    test = write_csv(tmp_path / "test.csv", "label,exp,b,a\nx,1,20,10\ny,0,40,30\nbad,0,1,1\ny,0,1\n")
    ctx = context(tmp_path)
    reader = csv_reader(CsvOptions(path=train, experience="exp", test_path=test), ctx)
    assert reader.info().experiences == [1, 0]
    assert reader.test_set(1).x.tolist() == [[10, 20]]  # columns matched by name
    assert reader.test_set(0).y.tolist() == [1]
    assert [(d["source"], d["offset"]) for d in dead_letters(ctx)] == [(test, 4), (test, 5)]


@pytest.mark.parametrize(
    "text, options, message",
    [
        (None, {}, "does not exist"),
        ("", {}, "is empty"),
        ("a,b, Label\n1,2,x\n", {}, "no label column 'label' but a column 'Label'"),
        ("a,label\n1,x\n", {"experience": "exp"}, "no experience column 'exp'"),
        ("label,exp\nx,0\n", {"experience": "exp"}, "no feature columns"),
        ("a,a,label\n1,2,x\n", {}, "column 'a' appears twice"),
        ("a,label\n1,\n", {}, "no valid rows"),
    ],
    ids=["missing", "empty", "label-in-other-case", "no-experience", "no-features", "duplicate", "no-valid-rows"],
)
def test_csv_header_problems_are_user_errors_naming_file_and_column(tmp_path, text, options, message):
    path = tmp_path / "data.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as err:
        csv_reader(CsvOptions(path=str(path), **options), context(tmp_path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_csv_test_file_must_have_the_training_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", "a,b,label\n1,2,x\n")
    test = write_csv(tmp_path / "test.csv", "a,label\n1,x\n")
    with pytest.raises(UserError, match="no feature column 'b'"):
        csv_reader(CsvOptions(path=train, test_path=test), context(tmp_path))


def test_csv_option_errors(tmp_path):
    with pytest.raises(UserError, match="stream.path"):
        csv_reader(CsvOptions(), context(tmp_path))
    for bad, message in [
        ({"delimiter": "::"}, "one character"),
        ({"scenario": "task"}, "experience"),
        ({"classes": ["a", "a"]}, "distinct"),
        ({"test_fraction": 0.2, "test_path": "t.csv"}, "not both"),
    ]:
        with pytest.raises(UserError, match=message):
            validate(CsvOptions, {"path": "x.csv", **bad}, "stream")


def test_csv_hold_out_gives_the_same_matrix_however_far_the_reader_thread_runs_ahead(tmp_path):
    # Experiences of 4 batches fit in the prefetch queue, so the reader thread passes experience 1
    # before training reaches it; its test set must still not be used before it is trained on.
    rng = np.random.default_rng(0)
    rows = [f"{rng.normal():.3f},{rng.normal():.3f},{i % 2},{i // 40}" for i in range(120)]
    data = write_csv(tmp_path / "s.csv", "a,b,label,exp\n" + "\n".join(rows) + "\n")
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'[stream]\nreader = "csv"\npath = "{data}"\nexperience = "exp"\ntest_fraction = 0.25\n'
        '[model]\nname = "mlp"\nhidden = [8]\n'
    )
    summary, _ = run_pipeline(tmp_path, ["learner.batch_size=8", "learner.epochs=1", "learner.device=cpu"], path=str(toml))
    known = [[v is not None for v in row] for row in summary["accuracy_matrix"]]
    assert known == [[True, False, False], [True, True, False], [True, True, True]]


# -- end to end through the CLI --------------------------------------------------------------------


def digits_csv(path: Path) -> int:
    """scikit-learn digits as CSV in 3 experiences (classes 0-3, 4-6, 7-9) with malformed lines; returns their count."""
    from sklearn.datasets import load_digits

    data = load_digits()
    exp = np.select([data.target < 4, data.target < 7], [0, 1], 2)
    order = np.argsort(exp, kind="stable")
    lines = [",".join([*(f"p{i}" for i in range(64)), "digit", "experience"])]
    for i in order:
        lines.append(",".join([*(f"{v:g}" for v in data.data[i]), str(data.target[i]), str(exp[i])]))
    bad = [",".join(["1"] * 65), ",".join(["x"] * 64 + ["3", "0"]), ",".join(["nan"] * 64 + ["3", "0"]), ",".join(["0"] * 64 + ["", "1"])]
    for k, line in enumerate(bad):
        lines.insert(100 + 400 * k, line)
    path.write_text("\n".join(lines) + "\n")
    return len(bad)


@pytest.mark.slow
def test_cli_runs_a_csv_pipeline_and_counts_dead_letters(tmp_path):
    data = tmp_path / "digits.csv"
    n_bad = digits_csv(data)
    toml = tmp_path / "pipeline.toml"
    toml.write_text(
        f"""
[stream]
reader = "csv"
path = "{data}"
label = "digit"
experience = "experience"
test_fraction = 0.2

[model]
name = "mlp"
hidden = [32]

[learner]
epochs = 1
device = "cpu"
progress = false

[boundary]
detector = "experience-change"

[tracking]
trackers = []
"""
    )
    out, dl = tmp_path / "summary.json", tmp_path / "dl.jsonl"
    result = cli("run", str(toml), "--summary", str(out), "--dead-letters", str(dl), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["dead_letters"]["count"] == n_bad == len(dl.read_text().splitlines())
    matrix = summary["accuracy_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert all(matrix[i][i] is not None for i in range(3)) and matrix[0][1] is None  # a stream knows no future
    assert summary["experiences"] == [0, 1, 2]

    missing = toml.read_text().replace(str(data), str(tmp_path / "nope.csv"))
    toml.write_text(missing)
    result = cli("run", str(toml), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.csv" in result.stderr and "does not exist" in result.stderr and "Traceback" not in result.stderr
