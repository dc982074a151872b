"""The progress bar of a run (tqdm on stderr), off when ``learner.progress = false``."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator


@contextlib.contextmanager
def progress_bar(plan: Any) -> Iterator[Any]:
    if not plan.learner.progress:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=plan.info.num_batches, unit="batch", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()
