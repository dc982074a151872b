#!/usr/bin/env bash
# Create .venv-avalanche: Avalanche 0.6.0 as a benchmark peer, in a venv of its own.
#
#     bash bench/avalanche_env.sh            # idempotent: does nothing if it already works
#
# avalanche-lib 0.6.0 imports torchvision; the only torchvision that installs and works here is
# 0.29.1 with torch 2.14.1 (a CUDA build, ~6 GB venv). Never a dependency of `lifelong` itself:
# bench/avalanche_side.py runs in this venv and exchanges data with the driver via .npz/.json;
# lifelong is installed here too (editable, no deps) so the driver can time it under this torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AVALANCHE_VENV:-$ROOT/.venv-avalanche}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

check() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import avalanche, torch, torchvision
assert avalanche.__version__ == "0.6.0", avalanche.__version__
assert torch.__version__.startswith("2.14.1"), torch.__version__
from avalanche.training import Naive, EWC, Replay  # noqa: F401
import lifelong, lifelong_strategies  # noqa: F401
EOF
}

if [ -x "$VENV/bin/python" ] && check; then
    echo "avalanche venv ready: $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned, so nothing below pulls another build
"$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install "avalanche-lib==0.6.0" numpy
# lifelong too (its core needs only pluggy and safetensors beyond what Avalanche brings), so the
# comparison can also run lifelong under this torch: library against library on the same torch build
"$VENV/bin/python" -m pip install pluggy safetensors
"$VENV/bin/python" -m pip install --no-deps -e "$ROOT"
check || { echo "avalanche venv at $VENV does not import cleanly" >&2; exit 1; }
echo "avalanche venv ready: $VENV"
