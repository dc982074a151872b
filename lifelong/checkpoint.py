"""Session checkpoints: everything a run needs to go on as if it had never stopped.

Layout of a checkpoint directory (``[checkpoint] dir``)::

    ckpt-000000000120/            the state after stream batch 120 (names sort by step)
      tensors.safetensors         every tensor: model/…, optimizer/…, strategy/<name>/…, detector/…,
                                  span/…, metrics/…, rng/…
      state.json                  everything else, tensors replaced by references into the file above
      manifest.json               format, session, step, and the size and SHA-256 of both files
    testsets/<sha256>.safetensors held-out sets, content-addressed: written once, shared by checkpoints

Writing is atomic: a checkpoint is written into a hidden temporary directory, every file is
fsynced, then the directory is renamed into place and its parent fsynced, so a crash at any moment
leaves either the whole checkpoint or none of it. Reading verifies the manifest (sizes and
checksums) and falls back to the previous checkpoint when the newest is corrupt or partial, saying
why. Only the last ``keep`` checkpoints stay. Loading never unpickles anything: tensors come from
safetensors, the rest from JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lifelong.errors import UserError
from lifelong.types import ModelSpec

FORMAT = "lifelong-checkpoint/1"
PREFIX = "ckpt-"
TENSORS, STATE, MANIFEST, TESTSETS = "tensors.safetensors", "state.json", "manifest.json", "testsets"
_TENSOR = "__tensor__"


# -- nested state <-> JSON + tensors ---------------------------------------------------------------
def to_cpu(obj: Any) -> Any:
    """A copy of a nested state with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace each tensor in a nested state with a reference, collecting the tensors by key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {str(k): split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# -- files -----------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def identity(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes): the name a held-out set is stored under."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")  # reshape: a (N, W, 1) tensor contiguous() keeps with odd strides cannot be viewed as bytes
    return digest.hexdigest()


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
# The library's writer orders tensors by its dtype enum, descending (8-byte types first, so every
# tensor starts aligned to its element size), then by name; written in the same order, a file is
# byte for byte what safetensors.torch.save makes, and an MLflow generation stored from the
# outbox's file is the file the library would have written.
_ORDER = ("BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], checksum: bool = True) -> dict[str, Any]:
    """Write ``tensors`` in the safetensors format, fsynced; returns the file's size and SHA-256
    (None without ``checksum``: a writer whose rename is the commit and that nothing verifies).

    Written piece by piece from each tensor's own memory, rather than through
    ``safetensors.torch.save``: that builds the whole file in one bytes object while holding the
    GIL (measured: it halves the speed of the training thread beside it), where file writes and
    hashing of large buffers release it. The result loads with any safetensors reader.
    """
    if any(t.dtype not in _DTYPES for t in tensors.values()):  # rare dtypes: the library's writer
        data = save_tensors({k: v.contiguous() for k, v in tensors.items()})
        _write(path, data)
        return {"bytes": len(data), "sha256": _digest(data) if checksum else None}
    header: dict[str, Any] = {}
    pieces = []
    offset = 0
    for name in sorted(tensors, key=lambda name: (-_ORDER.index(_DTYPES[tensors[name].dtype]), name)):
        value = tensors[name].detach().contiguous()
        raw = value.reshape(-1).view(torch.uint8).numpy() if value.numel() else None
        size = 0 if raw is None else raw.nbytes
        header[name] = {"dtype": _DTYPES[value.dtype], "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        pieces.append(raw)
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()  # names in UTF-8, as the library writes them
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
    digest = hashlib.sha256() if checksum else None
    with open(path, "wb") as f:
        for chunk in (len(text).to_bytes(8, "little"), text, *(p for p in pieces if p is not None)):
            view = memoryview(chunk).cast("B")
            if digest is not None:
                digest.update(view)
            f.write(view)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": 8 + len(text) + offset, "sha256": digest.hexdigest() if digest is not None else None}


def step_name(step: int) -> str:
    return f"{PREFIX}{step:012d}"


def checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint directories under ``directory``, oldest first (temporary ones excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def is_empty(directory: str | Path) -> bool:
    directory = Path(directory)
    return not directory.exists() or (directory.is_dir() and not any(directory.iterdir()))


def write(
    directory: str | Path,
    step: int,
    session: str,
    state: dict[str, Any],
    test_sets: dict[str, dict[str, torch.Tensor]],
    keep: int,
) -> Path:
    """Write one checkpoint atomically; returns its path. Runs on the checkpoint writer thread.

    ``state`` is the nested session state (tensors already CPU copies); ``test_sets`` maps content
    digests to held-out sets not yet in the store. Older checkpoints beyond ``keep`` are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    store = directory / TESTSETS
    for digest, tensors in test_sets.items():
        target = store / f"{digest}.safetensors"
        if target.exists():
            continue
        store.mkdir(exist_ok=True)
        tmp = store / f".{digest}.tmp"
        write_safetensors(tmp, tensors)
        os.replace(tmp, target)
    if test_sets:
        _fsync_dir(store)

    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, "", tensors)
    text = json.dumps(skeleton, allow_nan=True).encode()
    name = step_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
    written = write_safetensors(tmp / TENSORS, tensors)
    _write(tmp / STATE, text)
    manifest = {
        "format": FORMAT,
        "session": session,
        "step": step,
        "files": {TENSORS: written, STATE: {"bytes": len(text), "sha256": _digest(text)}},
    }
    _write(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
    _fsync_dir(tmp)
    final = directory / name
    if final.exists():  # a resumed session re-reaching the same step: the newer write wins
        trash = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=directory))
        os.replace(final, trash / name)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(directory)
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    """Remove checkpoints beyond the newest ``keep``, held-out sets none of the rest refers to, and
    temporaries a killed write left behind (one writer per directory: any other is stale)."""
    existing = checkpoints(directory)
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    store = directory / TESTSETS
    for stale in [*directory.glob(".*"), *store.glob(".*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    if not store.is_dir():
        return
    used: set[str] = set()
    for path in checkpoints(directory):
        try:
            used.update(json.loads((path / STATE).read_text()).get("test_sets", {}).values())
        except (OSError, ValueError):
            return  # unreadable: keep every set rather than remove one a checkpoint may need
    for entry in store.glob("*.safetensors"):
        if entry.stem not in used:
            entry.unlink(missing_ok=True)


# -- reading ---------------------------------------------------------------------------------------
class CorruptCheckpoint(Exception):
    """A checkpoint that fails verification; the message says what is wrong."""


@dataclass
class Snapshot:
    """One verified checkpoint: its nested state (tensors joined back) and where it lies."""

    path: Path
    manifest: dict[str, Any]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def session(self) -> str:
        return str(self.manifest["session"])

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.state["model_spec"])

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.state["model"]

    @property
    def strategy_state(self) -> dict[str, dict[str, Any]]:
        return self.state.get("strategies", {})

    @property
    def strategies(self) -> list[str]:
        return list(self.state["config"]["learner"]["strategies"])

    @property
    def last_generation(self) -> dict[str, Any] | None:
        rows = self.state["kernel"]["generations"]
        return rows[-1] if rows else None

    def test_set(self, digest: str) -> dict[str, torch.Tensor]:
        path = self.path.parent / TESTSETS / f"{digest}.safetensors"
        try:
            tensors = load_tensors(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - missing or undecodable: the checkpoint cannot be used
            raise CorruptCheckpoint(f"held-out set {path.name}: {type(exc).__name__}: {exc}") from None
        if identity(tensors) != digest:
            raise CorruptCheckpoint(f"held-out set {path.name} does not match its checksum")
        return tensors


def read(path: str | Path) -> Snapshot:
    """Read and verify one checkpoint directory; raises CorruptCheckpoint saying what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint("no manifest.json (a partial write)") from None
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"manifest.json is unreadable: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise CorruptCheckpoint(f"unknown format {manifest.get('format')!r} (expected {FORMAT})")
    contents: dict[str, bytes] = {}
    for name, facts in manifest.get("files", {}).items():
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise CorruptCheckpoint(f"{name} is missing or unreadable: {exc}") from None
        if len(data) != facts["bytes"]:
            raise CorruptCheckpoint(f"{name} has {len(data)} bytes, the manifest says {facts['bytes']} (truncated?)")
        if _digest(data) != facts["sha256"]:
            raise CorruptCheckpoint(f"{name} does not match its SHA-256 checksum")
        contents[name] = data
    if set(contents) != {TENSORS, STATE}:
        raise CorruptCheckpoint(f"the manifest lists {sorted(contents)}, expected {TENSORS} and {STATE}")
    try:
        skeleton = json.loads(contents[STATE])
        state = join_tensors(skeleton, load_tensors(contents[TENSORS]))
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the checkpoint is unusable
        raise CorruptCheckpoint(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return Snapshot(path, manifest, state)


def latest(directory: str | Path, report: Any = None) -> Snapshot:
    """The newest checkpoint under ``directory`` that verifies; corrupt ones are skipped.

    ``report(message)`` is told about every skipped checkpoint and why. Raises UserError when the
    directory holds no valid checkpoint.
    """
    directory = Path(directory)
    found = checkpoints(directory)
    skipped = []
    for path in reversed(found):
        try:
            return read(path)
        except CorruptCheckpoint as exc:
            skipped.append(f"{path.name}: {exc}")
            if report is not None:
                report(f"skipping checkpoint {path}: {exc}")
    if not found:
        raise UserError(f"{str(directory)!r} holds no lifelong checkpoint (no {PREFIX}* directories)")
    raise UserError(f"{str(directory)!r} holds no valid checkpoint: " + "; ".join(skipped))


def load(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """The newest valid checkpoint under ``path`` (or ``path`` itself): spec, weights, strategy state, kernel facts."""
    path = Path(path)
    snapshot = read(path) if (path / MANIFEST).is_file() else latest(path)
    return snapshot.model_spec, snapshot.model_state, snapshot.strategy_state, snapshot.state["kernel"]
