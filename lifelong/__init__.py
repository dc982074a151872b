"""lifelong: a continual-learning pipeline built from pluggy plugins.

Plugins implement hooks with :data:`hookimpl`; see :mod:`lifelong.hookspecs` for every hook.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("lifelong")

from lifelong.types import Batch, Experience, Generation, ModelSpec, StreamInfo  # noqa: E402

__all__ = ["Batch", "Experience", "Generation", "ModelSpec", "StreamInfo", "hookimpl", "__version__"]
