"""Split-Digits and Permuted-Digits over scikit-learn's bundled 8×8 digits (1,797 images, offline)."""

from __future__ import annotations

import numpy as np

from lifelong.readers import ReaderContext
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import PermutedOptions, SplitOptions, permuted_stream, split_stream

SOURCE = "sklearn:digits"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1] with shape (N, 1, 8, 8), and integer labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, data.target.astype(np.int64)


def split_digits(options: SplitOptions, context: ReaderContext) -> ArrayStream:
    x, y = load_digits()
    return split_stream(x, y, options, context.batch_size, context.seed, SOURCE)


def permuted_digits(options: PermutedOptions, context: ReaderContext) -> ArrayStream:
    x, y = load_digits()
    return permuted_stream(x, y, options, context.batch_size, context.seed, SOURCE)
