"""The anomaly-detection data (issue 10): shuttle, windows and ecg, and the concept-incremental builder
and reader, on the real bundled data."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lifelong_streams.concepts import ConceptsOptions, build_concepts, concepts_reader
from lifelong_streams.digits import load_digits
from lifelong_streams.shuttle import ANOMALIES, RECORDS, ShuttleOptions, river_shuttle_path, shuttle_reader
from lifelong_streams.windows import BUNDLED_ECG, EcgOptions, WindowsOptions, ecg_reader, windows_reader

from lifelong.errors import UserError
from lifelong.objective import NO_LABEL
from lifelong.options import validate
from tests.fixtures.readers import dead_letters, resumed_batches, same
from tests.fixtures.readers import context as reader_context


def context(tmp_path: Path, batch_size: int = 64, seed: int = 0):
    return reader_context(tmp_path, batch_size, seed)


# -- shuttle ---------------------------------------------------------------------------------------


def test_shuttle_streams_all_49097_records_in_file_order_with_7_percent_anomalies(tmp_path):
    reader = shuttle_reader(ShuttleOptions(test_size=0), context(tmp_path, batch_size=1000))
    info = reader.info()
    assert (info.input_shape, info.num_classes, info.class_names, info.labels) == ((9,), 2, ["normal", "anomaly"], True)
    assert info.experiences == [0] and info.feature_names == [f"f{i}" for i in range(1, 10)]
    batches = list(reader)
    y = torch.cat([b.y for b in batches])
    assert len(y) == RECORDS == 49_097 and int(y.sum()) == ANOMALIES == 3_511
    assert abs(float(y.float().mean()) - 0.0715) < 0.0005
    assert [b.start for b in batches] == [2 + 1000 * i for i in range(len(batches))]  # line numbers, header = line 1
    with gzip.open(river_shuttle_path(), "rt") as f:
        first = [float(v) for v in f.readlines()[1].split(",")]
    assert batches[0].x[0].tolist() == first[:9] and batches[0].y[0].item() == first[9]
    assert reader.test_set(0) is None


def test_shuttle_experiences_hold_out_stratified_test_sets_and_resume(tmp_path):
    options = ShuttleOptions(records=6000, experience_records=2000, test_size=0.25)
    make = lambda: shuttle_reader(options, context(tmp_path, batch_size=128))
    reader = make()
    assert reader.info().experiences == [0, 1, 2]
    trained = {e: [] for e in range(3)}
    for b in reader:
        trained[b.experience].append(b)
    for e in range(3):
        test = reader.test_set(e)
        assert len(test) == 500 and sum(len(b) for b in trained[e]) == 1500
        assert set(test.y.unique().tolist()) == {0, 1}
        train_rate = torch.cat([b.y for b in trained[e]]).float().mean()
        assert abs(float(test.y.float().mean()) - float(train_rate)) < 0.01  # stratified
        starts = [b.start for b in trained[e]]
        assert starts == sorted(starts) and 2 + 2000 * e <= starts[0]
    assert torch.equal(make().test_set(1).x, reader.test_set(1).x)
    assert not torch.equal(shuttle_reader(options, context(tmp_path, seed=1)).test_set(1).x, reader.test_set(1).x)
    after, resumed = resumed_batches(make, 14)  # inside experience 1
    assert after[0].experience == 1 and len(after) > 10 and same(after, resumed)


def test_shuttle_dead_letters_bad_records_of_another_copy(tmp_path):
    path = tmp_path / "shuttle.csv.gz"
    rows = ["f1,f2,f3,f4,f5,f6,f7,f8,f9,anomaly", "1,2,3,4,5,6,7,8,9,0", "1,2,nan,4,5,6,7,8,9,0", "1,2,3,4,5,6,7,8,9,3",
            "1,2,3,4,5,6,7,8", "9,8,7,6,5,4,3,2,1,1"]
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    ctx = context(tmp_path)
    (batch,) = list(shuttle_reader(ShuttleOptions(path=str(path), test_size=0), ctx))
    assert batch.y.tolist() == [0, 1] and batch.x[1].tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    letters = dead_letters(ctx)
    assert [d["offset"] for d in letters] == [3, 4, 5]
    assert "'f3' is nan" in letters[0]["reason"] and "not 0 (normal) or 1" in letters[1]["reason"]
    assert "expected 10 fields" in letters[2]["reason"] and letters[2]["record"] == "1,2,3,4,5,6,7,8"


# -- windows ---------------------------------------------------------------------------------------


def series_csv(path: Path, values, labels=None, header="v") -> str:
    lines = [header + (",label" if labels is not None else "")]
    for i, v in enumerate(values):
        lines.append(f"{v}" + (f",{labels[i]}" if labels is not None else ""))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_window_with_one_anomalous_point_is_an_anomaly(tmp_path):
    labels = [0] * 20
    labels[10] = 1
    path = series_csv(tmp_path / "s.csv", range(20), labels)
    reader = windows_reader(WindowsOptions(path=path, window=4, stride=1, test_size=0), context(tmp_path))
    (batch,) = list(reader)
    assert batch.x.shape == (17, 4, 1) and reader.info().input_shape == (4, 1)
    assert batch.x[:, :, 0].tolist() == [[s, s + 1, s + 2, s + 3] for s in range(17)]
    assert [s for s, y in enumerate(batch.y.tolist()) if y == 1] == [7, 8, 9, 10]  # the windows holding point 10
    assert reader.info().labels is True and reader.info().class_names == ["normal", "anomaly"]


def test_windows_stride_channels_and_experiences_from_an_npz(tmp_path):
    path = str(tmp_path / "s.npz")
    x = np.stack([np.arange(30.0), -np.arange(30.0)], axis=1)
    y = np.zeros(30, dtype=np.int64)
    y[28] = 1  # only the last window (points 24 … 28) holds it; point 29 is in no window
    np.savez(path, x=x, y=y)
    reader = windows_reader(WindowsOptions(path=path, window=5, stride=3, experiences=3, test_size=0), context(tmp_path, batch_size=100))
    batches = list(reader)
    assert [b.experience for b in batches] == [0, 1, 2] and reader.info().experiences == [0, 1, 2]
    x_all = torch.cat([b.x for b in batches])
    assert x_all.shape == (9, 5, 2)  # starts 0, 3, …, 24
    assert x_all[:, 0, 0].tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24] and x_all[2, :, 1].tolist() == [-6, -7, -8, -9, -10]
    assert torch.cat([b.y for b in batches]).tolist() == [0] * 8 + [1]
    assert [(b.start, b.stop) for b in batches] == [(0, 7), (9, 16), (18, 25)]


def test_windows_drop_windows_over_a_bad_point_and_dead_letter_it(tmp_path):
    values = [str(v) for v in range(12)]
    values[5] = "inf"
    labels = [0] * 12
    labels[8] = 7
    ctx = context(tmp_path)
    path = series_csv(tmp_path / "s.csv", values, labels)
    (batch,) = list(windows_reader(WindowsOptions(path=path, window=3, test_size=0), ctx))
    assert batch.x[:, 0, 0].tolist() == [0, 1, 2, 9]  # windows over point 5 (line 7) or 8 (line 10) left out
    letters = dead_letters(ctx)
    assert [(d["offset"], d["record"]) for d in letters] == [(7, "inf,0"), (10, "8,7")]
    assert "NaN or infinite" in letters[0]["reason"] and "not 0 (normal) or 1 (anomaly)" in letters[1]["reason"]


def test_windows_of_an_unlabeled_series_carry_no_label_and_resume(tmp_path):
    path = series_csv(tmp_path / "s.csv", np.sin(np.arange(200) / 5).round(4))
    make = lambda: windows_reader(WindowsOptions(path=path, window=16, stride=2, experiences=2), context(tmp_path, batch_size=8))
    reader = make()
    assert reader.info().labels is False
    assert all((b.y == NO_LABEL).all() for b in reader) and (reader.test_set(0).y == NO_LABEL).all()
    assert len(reader.test_set(0)) + len(reader.test_set(1)) == round(0.2 * 47) + round(0.2 * 46)
    after, resumed = resumed_batches(make, 4)
    assert len(after) > 3 and same(after, resumed)


def test_windows_option_and_file_errors(tmp_path):
    path = series_csv(tmp_path / "s.csv", range(5), [0] * 5)
    with pytest.raises(UserError, match="fewer than one window"):
        windows_reader(WindowsOptions(path=path, window=6), context(tmp_path))
    with pytest.raises(UserError, match="no column 'w'"):
        windows_reader(WindowsOptions(path=path, columns=["w"]), context(tmp_path))
    (tmp_path / "t.csv").write_text("v,Label\n1,0\n")
    with pytest.raises(UserError, match="but a column 'Label'"):
        windows_reader(WindowsOptions(path=str(tmp_path / "t.csv")), context(tmp_path))
    with pytest.raises(UserError, match="stride"):
        validate(WindowsOptions, {"path": path, "stride": 0}, "stream")
    with pytest.raises(UserError, match="stream.path"):
        windows_reader(WindowsOptions(), context(tmp_path))


def test_ecg_is_sktimes_mit_bih_excerpt_as_windows(tmp_path):
    reader = ecg_reader(EcgOptions(test_size=0), context(tmp_path, batch_size=512))
    batches = list(reader)
    y = torch.cat([b.y for b in batches])
    # 7,500 points, windows of 512 every 4: starts 0 … 6988; the anomaly is points 6936 … 7287, so
    # windows starting 6428 … 6988 hold part of it.
    assert len(y) == (7500 - 512) // 4 + 1 == 1748
    assert int(y.sum()) == (6988 - 6428) // 4 + 1 == 141
    assert reader.info().input_shape == (512, 1) and reader.info().labels is True
    assert all(b.x.is_contiguous() and b.x.stride() == (512, 1, 1) for b in batches)  # canonical strides, see cut()
    assert batches[0].x[0, :3, 0].tolist() == pytest.approx([-0.195, -0.21, -0.21])


ECG_SERIES = np.loadtxt(BUNDLED_ECG, delimiter=",", skiprows=1, usecols=0, dtype=np.float32)


def test_tail_split_tests_each_experience_on_its_last_windows_after_a_gap(tmp_path):
    path = str(tmp_path / "s.npz")
    np.savez(path, x=np.arange(60.0))
    options = WindowsOptions(path=path, window=5, stride=2, experiences=2, test_size=0.25, split="tail")
    reader = windows_reader(options, context(tmp_path, batch_size=100))
    # starts 0, 2, …, 54: 28 windows, two experiences of 14. Each tests its last ceil(3.5) = 4 and
    # drops the ceil(5 / 2) - 1 = 2 before them, whose points (up to start + 4) reach the first test window.
    trained = {b.experience: b.x[:, 0, 0].tolist() for b in reader}
    tested = {e: reader.test_set(e).x[:, 0, 0].tolist() for e in (0, 1)}
    assert trained == {0: [0, 2, 4, 6, 8, 10, 12, 14], 1: [28, 30, 32, 34, 36, 38, 40, 42]}
    assert tested == {0: [20, 22, 24, 26], 1: [48, 50, 52, 54]}
    random = windows_reader(WindowsOptions(path=path, window=5, stride=2, experiences=2, test_size=0.25), context(tmp_path, batch_size=100))
    assert sum(len(b) for b in random) == 28 - 8  # random drops nothing: its test windows overlap training ones


def test_ecg_tests_on_the_future_only(tmp_path):
    reader = ecg_reader(EcgOptions(), context(tmp_path, batch_size=2048))
    train, test = next(iter(reader)), reader.test_set(0)
    held = math.ceil(0.3 * 1748)
    assert len(test) == held and len(train) == 1748 - held - 127  # 127 windows overlap the first test window
    last_trained_point = (len(train) - 1) * 4 + 511
    first_tested_point = (1748 - held) * 4
    assert last_trained_point < first_tested_point  # no test point was trained on
    assert int(train.y.sum()) == 0 and int(test.y.sum()) == 141  # the anomaly is only tested
    assert torch.equal(test.x[0, :, 0], torch.from_numpy(ECG_SERIES[first_tested_point:first_tested_point + 512]))


# -- concepts --------------------------------------------------------------------------------------

GROUPS, ANOMALIES_CLASSES = [[0, 1], [2, 3], [4, 5]], [8, 9]


def test_concept_training_holds_no_anomaly_class_but_the_contamination_share():
    x, y = load_digits()
    concepts = build_concepts(x, y, GROUPS, ANOMALIES_CLASSES, contamination=0.1, test_anomaly_fraction=0.2, seed=3)
    assert [c.normal_classes for c in concepts] == GROUPS
    for concept, group in zip(concepts, GROUPS):
        classes = y[concept.train_index]
        normal = int(np.isin(classes, group).sum())
        anomalous = np.isin(classes, ANOMALIES_CLASSES)
        assert np.isin(classes, group + ANOMALIES_CLASSES).all()  # no other class, no other concept's normals
        assert int(anomalous.sum()) == round(0.1 * normal / 0.9) > 0
        assert concept.train_y.tolist() == anomalous.astype(int).tolist()
        assert np.array_equal(concept.train_x, x[concept.train_index])
        assert len(np.unique(concept.train_index)) == len(concept.train_index)
        # training order is shuffled: the contamination is spread over the concept, not at its end
        assert np.flatnonzero(anomalous).mean() < 0.75 * len(anomalous)
    clean = build_concepts(x, y, GROUPS, ANOMALIES_CLASSES, seed=3)
    assert all(c.train_y.sum() == 0 and np.isin(y[c.train_index], g).all() for c, g in zip(clean, GROUPS))


def test_concept_test_sets_hold_their_normals_and_unseen_anomalies_labelled_right():
    x, y = load_digits()
    concepts = build_concepts(x, y, GROUPS, ANOMALIES_CLASSES, contamination=0.1, test_anomaly_fraction=0.2, seed=3)
    for concept, group in zip(concepts, GROUPS):
        classes = y[concept.test_index]
        assert concept.test_y.tolist() == np.isin(classes, ANOMALIES_CLASSES).astype(int).tolist()
        assert np.isin(classes[concept.test_y == 0], group).all()
        assert abs(concept.test_y.mean() - 0.2) < 0.01
        assert np.array_equal(concept.test_x, x[concept.test_index])
        # held-out data: no test sample (normal or anomaly) is trained on, in any concept
        trained = np.concatenate([c.train_index for c in concepts])
        assert not np.intersect1d(concept.test_index, trained).size


def test_concepts_are_deterministic_by_seed():
    x, y = load_digits()
    a, b, c = (build_concepts(x, y, GROUPS, ANOMALIES_CLASSES, contamination=0.05, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(p.train_index, q.train_index) and np.array_equal(p.test_index, q.test_index) for p, q in zip(a, b))
    assert not np.array_equal(a[0].train_index, c[0].train_index)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normal_groups": [[0, 1], [1, 2]]}, "disjoint"),
        ({"normal_groups": [[0, 8]]}, "both normal"),
        ({"anomaly_classes": [42]}, "not in the data"),
        ({"contamination": 0.9}, "contamination asks for"),
        ({"test_anomaly_fraction": 1.0}, "test_anomaly_fraction must be"),
    ],
)
def test_concept_builder_refuses_bad_scenarios(kwargs, message):
    x, y = load_digits()
    args = {"normal_groups": GROUPS, "anomaly_classes": ANOMALIES_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_concepts(x, y, args.pop("normal_groups"), args.pop("anomaly_classes"), **args)


def test_concepts_reader_streams_unlabeled_concepts_with_0_1_test_sets_and_resumes(tmp_path):
    options = ConceptsOptions(dataset="digits", normal_groups=GROUPS, contamination=0.1)
    make = lambda: concepts_reader(options, context(tmp_path, batch_size=32))
    reader = make()
    info = reader.info()
    assert (info.experiences, info.labels, info.num_classes, info.class_names) == ([0, 1, 2], False, 2, ["normal", "anomaly"])
    assert info.input_shape == (1, 8, 8)
    batches = list(reader)
    assert all((b.y == NO_LABEL).all() for b in batches)
    assert [b.experience for b in batches] == sorted(b.experience for b in batches)
    x, y = load_digits()
    expected = build_concepts(x, y, GROUPS, ANOMALIES_CLASSES, contamination=0.1, test_anomaly_fraction=0.1, test_fraction=0.25, seed=0)
    for k, concept in enumerate(expected):
        streamed = torch.cat([b.x for b in batches if b.experience == k])
        assert torch.equal(streamed, torch.from_numpy(concept.train_x))
        assert reader.test_set(k).y.tolist() == concept.test_y.tolist()
    after, resumed = resumed_batches(make, 12)
    assert len(after) > 10 and {b.experience for b in after} == {1, 2} and same(after, resumed)
    with pytest.raises(UserError, match="disjoint"):
        concepts_reader(ConceptsOptions(normal_groups=[[0], [0]]), context(tmp_path))


def test_concepts_reader_over_any_labelled_npz(tmp_path):
    path = str(tmp_path / "d.npz")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    x[7, 2] = np.nan
    np.savez(path, x=x, y=np.repeat([0, 1, 2], 40))
    ctx = context(tmp_path)
    reader = concepts_reader(ConceptsOptions(dataset="npz", path=path, normal_groups=[[0], [1]], anomaly_classes=[2], test_fraction=0.25), ctx)
    assert reader.info().input_shape == (4,)
    assert sum(len(b) for b in reader) == 29 + 30  # class 0 lost row 7 to the dead letters
    assert [d["offset"] for d in dead_letters(ctx)] == [7]
