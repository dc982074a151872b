"""Split- and Permuted-Fashion-MNIST over Debian's ``dataset-fashion-mnist`` (70,000 × 28×28, offline).

The package installs the four IDX files of Zalando's release, gzip-compressed, in
``/usr/share/datasets/fashion-mnist``. Fashion-MNIST has an official test set, so it is the
held-out data of every experience (each experience is evaluated on the test images of its own
classes) instead of a random hold-out: ``test_fraction`` does not apply to these readers. For fast
runs, ``train_per_class`` and ``test_per_class`` keep the first N images of each class in file
order (the files are already shuffled, so that is a fair sample, and it is the same whatever the
seed). Nothing is cached on disk: decompressing and scaling all 70,000 images takes about a second.
Permuted-Fashion-MNIST holds a permuted copy of the data per experience (~220 MB each at full
size); ``train_per_class`` shrinks that too.

>>> from lifelong.readers import ReaderContext
>>> options = FashionSplitOptions(train_per_class=20, test_per_class=10)
>>> stream = split_fashion_mnist(options, ReaderContext(batch_size=32, seed=0))
>>> stream.info().input_shape, stream.info().num_batches, len(stream.test_set(0))
((1, 28, 28), 10, 20)
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import PermutedOptions, SplitOptions, permuted_stream, split_stream

ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL = "apt-get install dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
_IGNORED = "not used: the official 10,000-image test set is held out (subsample it with test_per_class)"


@dataclass
class _FashionOptions:
    """Options both Fashion-MNIST readers add to the benchmark options they extend."""

    # Redefined only to say it is ignored; kept so a pipeline can switch readers without editing it.
    test_fraction: float = field(default=0.25, metadata={"help": _IGNORED})
    root: str = field(default=ROOT, metadata={"help": "directory holding the four IDX .gz files"})
    train_per_class: int = field(default=0, metadata={"help": "training images kept per class (first in file); 0: all 6,000"})
    test_per_class: int = field(default=0, metadata={"help": "test images kept per class (first in file); 0: all 1,000"})

    def _check_subsample(self) -> None:
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or positive, got {getattr(self, name)}")


@dataclass
class FashionSplitOptions(_FashionOptions, SplitOptions):
    def check(self) -> None:
        SplitOptions.check(self)
        self._check_subsample()


@dataclass
class FashionPermutedOptions(_FashionOptions, PermutedOptions):
    def check(self) -> None:
        PermutedOptions.check(self)
        self._check_subsample()


def _read_idx(path: Path, magic: int, n: int | None = None) -> np.ndarray:
    """One gzip-compressed IDX file of unsigned bytes, as an array of its declared shape."""
    if not path.is_file():
        raise UserError(f"Fashion-MNIST file {path} not found; install the data with `{INSTALL}` or set stream.root")
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise UserError(f"Fashion-MNIST file {path} is not readable gzip ({exc}); reinstall with `{INSTALL}`") from None
    ndim = magic & 0xFF
    header_bytes = 4 * (1 + ndim)  # big-endian uint32s: the magic number, then one size per dimension
    found = int.from_bytes(data[:4], "big")
    if len(data) < header_bytes or found != magic:
        raise UserError(
            f"{path} is not an IDX file of unsigned bytes in {ndim} dimensions "
            f"(magic number {found:#010x}, expected {magic:#010x})"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_bytes + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"{path} is truncated: its header says {shape}, {expected} bytes in all, but it has {len(data)}")
    if n is not None and shape[0] != n:
        raise UserError(f"{path} holds {shape[0]} images but its labels file {n} labels")
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(shape)


def load_fashion_mnist(root: str = ROOT) -> tuple[np.ndarray, np.ndarray, int]:
    """Train then test images, float32 in [0, 1] with shape (70000, 1, 28, 28), labels, and the train count.

    Both parts go into one preallocated array so that ``split_stream`` can index them together and
    a training sample's index is its offset in the training file.
    """
    parts = []
    for images_name, labels_name in FILES.values():
        labels = _read_idx(Path(root) / labels_name, LABELS_MAGIC)
        parts.append((_read_idx(Path(root) / images_name, IMAGES_MAGIC, len(labels)), labels))
    n_train = len(parts[0][1])
    x = np.empty((sum(len(labels) for _, labels in parts), 1, *parts[0][0].shape[1:]), dtype=np.float32)
    start = 0
    for images, labels in parts:
        # Scaling straight into the output avoids a float64 temporary of 440 MB.
        np.divide(images, np.float32(255), out=x[start : start + len(labels), 0])
        start += len(labels)
    y = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    return x, y, n_train


def _first_per_class(y: np.ndarray, idx: np.ndarray, per_class: int) -> np.ndarray:
    """``idx`` reduced to its first ``per_class`` entries of every class (all of them for 0)."""
    if per_class == 0:
        return idx
    return np.sort(np.concatenate([idx[y[idx] == c][:per_class] for c in np.unique(y[idx])]))


def _load(options: _FashionOptions) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    x, y, n_train = load_fashion_mnist(options.root)
    train = _first_per_class(y, np.arange(n_train), options.train_per_class)
    test = _first_per_class(y, np.arange(n_train, len(y)), options.test_per_class)
    return x, y, (train, test)


def split_fashion_mnist(options: FashionSplitOptions, context: ReaderContext) -> ArrayStream:
    x, y, split = _load(options)
    stream = split_stream(x, y, options, context.batch_size, context.seed, f"fashion-mnist:{options.root}", split)
    if options.scenario == "class":  # one head over the original labels: name them
        stream.info().class_names = list(CLASSES)
    return stream


def permuted_fashion_mnist(options: FashionPermutedOptions, context: ReaderContext) -> ArrayStream:
    x, y, split = _load(options)
    return permuted_stream(x, y, options, context.batch_size, context.seed, f"fashion-mnist:{options.root}", split)
