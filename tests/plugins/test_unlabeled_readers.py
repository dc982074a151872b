"""Labels optional in the npz and csv readers (issue 10): unlabeled streams carry NO_LABEL, say so in
StreamInfo, still dead-letter bad records, still resume, and may have labelled test data."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from lifelong_streams.csv_reader import CsvOptions, csv_reader
from lifelong_streams.npz import NpzOptions, npz_reader

from lifelong.errors import UserError
from lifelong.objective import NO_LABEL
from tests.fixtures.readers import context, dead_letters, resumed_batches, same


# -- npz -------------------------------------------------------------------------------------------


def test_npz_without_y_streams_no_label_and_still_dead_letters_bad_rows(tmp_path):
    x = np.arange(14, dtype=np.float64).reshape(7, 2)
    x[2, 1] = np.nan
    x[5, 0] = 1e308  # finite in float64, infinite in float32
    path = str(tmp_path / "u.npz")
    np.savez(path, x=x, experience=np.array([0, 0, 0, 0, 1, 1, 1]))
    ctx = context(tmp_path)
    reader = npz_reader(NpzOptions(path=path), ctx)
    info = reader.info()
    assert info.labels is False
    assert (info.num_classes, info.class_names, info.experiences) == (2, ["normal", "anomaly"], [0, 1])
    batches = list(reader)
    assert [(b.experience, b.start, b.stop) for b in batches] == [(0, 0, 2), (0, 3, 4), (1, 4, 7)]
    assert all(b.y.dtype == torch.long and (b.y == NO_LABEL).all() for b in batches)
    assert torch.cat([b.x for b in batches]).tolist() == x[[0, 1, 3, 4, 6]].tolist()
    letters = dead_letters(ctx)
    assert [d["offset"] for d in letters] == [2, 5]
    assert "NaN or infinite" in letters[0]["reason"] and "float32" in letters[1]["reason"]
    assert letters[0]["record"] == {"y": None, "experience": 0}


def test_npz_without_y_holds_out_rows_with_no_label_and_resumes(tmp_path):
    path = str(tmp_path / "u.npz")
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)), experience=np.repeat([0, 1], 20))
    make = lambda: npz_reader(NpzOptions(path=path, test_fraction=0.25), context(tmp_path, batch_size=4))
    reader = make()
    tests = [reader.test_set(e) for e in (0, 1)]
    assert [len(t) for t in tests] == [5, 5] and all((t.y == NO_LABEL).all() for t in tests)
    assert sum(len(b) for b in reader) == 30
    after, resumed = resumed_batches(make, 3)
    assert len(after) > 2 and same(after, resumed)


def test_npz_carries_its_own_labelled_test_arrays(tmp_path):
    path = str(tmp_path / "u.npz")
    x_test = np.ones((5, 2))
    x_test[3, 0] = np.inf
    np.savez(path, x=np.zeros((4, 2)), x_test=x_test, y_test=np.array([0, 1, 2, 1, 0]), experience_test=np.array([0, 0, 0, 0, 1]))
    ctx = context(tmp_path)
    reader = npz_reader(NpzOptions(path=path), ctx)
    assert reader.test_set(0).y.tolist() == [0, 1] and reader.test_set(1).y.tolist() == [0]
    assert all((b.y == NO_LABEL).all() for b in reader)
    letters = sorted(dead_letters(ctx), key=lambda d: d["offset"])
    assert [(d["source"], d["offset"]) for d in letters] == [(f"{path}:test", 2), (f"{path}:test", 3)]
    assert "not 0 (normal) or 1 (anomaly)" in letters[0]["reason"] and "NaN or infinite" in letters[1]["reason"]
    with pytest.raises(UserError, match="holds its own test data"):
        npz_reader(NpzOptions(path=path, test_fraction=0.2), context(tmp_path))


def test_npz_test_path_labels_for_an_unlabeled_stream_and_none_for_a_labelled_one(tmp_path):
    unlabeled, labelled = str(tmp_path / "u.npz"), str(tmp_path / "l.npz")
    test_labelled, test_unlabeled = str(tmp_path / "tl.npz"), str(tmp_path / "tu.npz")
    np.savez(unlabeled, x=np.zeros((4, 2)))
    np.savez(labelled, x=np.zeros((4, 2)), y=np.array([0, 1, 2, 0]))
    np.savez(test_labelled, x=np.ones((3, 2)), y=np.array([1, 0, 1]))
    np.savez(test_unlabeled, x=np.ones((3, 2)))
    assert npz_reader(NpzOptions(path=unlabeled, test_path=test_labelled), context(tmp_path)).test_set(0).y.tolist() == [1, 0, 1]
    assert npz_reader(NpzOptions(path=unlabeled, test_path=test_unlabeled), context(tmp_path)).test_set(0).y.tolist() == [-1] * 3
    with pytest.raises(UserError, match="has no labels"):
        npz_reader(NpzOptions(path=labelled, test_path=test_unlabeled), context(tmp_path))
    reader = npz_reader(NpzOptions(path=labelled), context(tmp_path))  # labelled data keeps its behaviour
    assert reader.info().labels is True and reader.info().num_classes == 3


# -- csv -------------------------------------------------------------------------------------------


def test_csv_without_a_label_column_is_unlabeled_and_dead_letters_still_work(tmp_path, capsys):
    path = tmp_path / "u.csv"
    path.write_text("a,b,exp\n1,2,0\n3,x,0\n5,6,0\n7,nan,1\n9,10,1\n11,12\n")
    ctx = context(tmp_path)
    reader = csv_reader(CsvOptions(path=str(path), experience="exp"), ctx)
    info = reader.info()
    assert info.labels is False and info.num_classes == 2 and info.class_names == ["normal", "anomaly"]
    assert info.feature_names == ["a", "b"]
    assert "no label column 'label'" in capsys.readouterr().err
    batches = list(reader)
    assert [(b.experience, b.y.tolist(), b.x.tolist(), b.start, b.stop) for b in batches] == [
        (0, [-1, -1], [[1, 2], [5, 6]], 2, 5),
        (1, [-1], [[9, 10]], 6, 7),
    ]
    assert [(d["offset"], d["reason"][:24]) for d in dead_letters(ctx)] == [
        (3, "feature column 'b' is no"),
        (5, "feature column 'b' is na"),
        (7, "expected 3 fields, got 2"),
    ]


def test_csv_empty_label_option_reads_every_column_as_a_feature(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("a,label\n1,0\n2,1\n3,0\n")
    reader = csv_reader(CsvOptions(path=str(path), label=""), context(tmp_path, batch_size=8))
    assert reader.info().labels is False and reader.info().feature_names == ["a", "label"]
    (batch,) = list(reader)
    assert batch.x.tolist() == [[1, 0], [2, 1], [3, 0]] and batch.y.tolist() == [-1, -1, -1]


def test_csv_unlabeled_stream_takes_0_1_test_labels_and_resumes(tmp_path):
    train, test = tmp_path / "u.csv", tmp_path / "t.csv"
    train.write_text("a,b\n" + "".join(f"{i},{-i}\n" for i in range(20)))
    test.write_text("b,a,label\n1,2,0\n3,4,1\n5,6,2\n7,8,\n")
    ctx = context(tmp_path)
    reader = csv_reader(CsvOptions(path=str(train), test_path=str(test)), ctx)
    assert reader.test_set(0).y.tolist() == [0, 1] and reader.test_set(0).x.tolist() == [[2, 1], [4, 3]]
    assert [d["offset"] for d in dead_letters(ctx)] == [4, 5]  # label 2 is not a class, an empty one is missing
    make = lambda: csv_reader(CsvOptions(path=str(train), test_fraction=0.3), context(tmp_path, batch_size=3))
    after, resumed = resumed_batches(make, 1)
    assert len(after) >= 2 and same(after, resumed)
    assert all((b.y == NO_LABEL).all() for b in resumed)


def test_csv_labelled_stream_refuses_a_test_file_without_labels(tmp_path):
    train, test = tmp_path / "l.csv", tmp_path / "t.csv"
    train.write_text("a,b,label\n1,2,x\n")
    test.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="no label column 'label'.*training data has labels"):
        csv_reader(CsvOptions(path=str(train), test_path=str(test)), context(tmp_path))
    assert csv_reader(CsvOptions(path=str(train)), context(tmp_path)).info().labels is True


def test_csv_unlabeled_task_scenario_counts_heads_from_the_experience_column(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("a,exp\n1,0\n2,2\n3,x\n")
    reader = csv_reader(CsvOptions(path=str(path), experience="exp", scenario="task"), context(tmp_path))
    assert reader.info().num_tasks == 3 and reader.info().labels is False
    assert [(b.task.tolist(), b.y.tolist()) for b in reader] == [([0], [-1]), ([2], [-1])]
