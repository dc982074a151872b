"""The checkpoint format: the safetensors writer, atomic writes, verification, pruning."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as library_bytes

from lifelong import checkpoint


def test_the_streaming_writer_writes_what_safetensors_reads(tmp_path):
    tensors = {
        "/model/w": torch.randn(3, 5),
        "/scalar": torch.tensor(2.5, dtype=torch.float64),
        "/empty": torch.zeros(0, 4),
        "/mask": torch.tensor([True, False, True]),
        "/ids": torch.arange(7, dtype=torch.int64),
        "/half": torch.randn(4).to(torch.bfloat16),
        "/view": torch.randn(6, 6)[:, 1],  # not contiguous
        "/i32/é": torch.arange(3, dtype=torch.int32),  # a name in UTF-8
    }
    facts = checkpoint.write_safetensors(tmp_path / "t.safetensors", tensors)
    data = (tmp_path / "t.safetensors").read_bytes()
    assert facts == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # The library's own bytes: an MLflow generation stores the outbox's file as it is (lifelong_mlflow.pyfunc.save_files).
    assert data == library_bytes({name: value.contiguous() for name, value in tensors.items()})
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name


def test_only_the_last_k_checkpoints_stay_and_unused_held_out_sets_go(tmp_path):
    def state(test_sets):
        return {"model": {"w": torch.ones(2)}, "test_sets": test_sets}

    first = {"x": torch.ones(3), "y": torch.zeros(3, dtype=torch.long)}
    digest = checkpoint.identity(first)
    checkpoint.write(tmp_path, 10, "s", state({"0": digest}), {digest: first}, keep=2)
    (tmp_path / ".ckpt-000000000015-killed").mkdir()  # what a write killed half-way leaves
    (tmp_path / "testsets" / ".abc.tmp").write_bytes(b"partial")
    checkpoint.write(tmp_path, 20, "s", state({}), {}, keep=2)
    assert (tmp_path / "testsets" / f"{digest}.safetensors").exists()  # ckpt 10 still needs it
    assert not (tmp_path / ".ckpt-000000000015-killed").exists() and not (tmp_path / "testsets" / ".abc.tmp").exists()
    checkpoint.write(tmp_path, 30, "s", state({}), {}, keep=2)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == [checkpoint.step_name(20), checkpoint.step_name(30)]
    assert not (tmp_path / "testsets" / f"{digest}.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_checkpoint_without_its_manifest_is_a_partial_write(tmp_path):
    path = checkpoint.write(tmp_path, 5, "s", {"model": {}}, {}, keep=3)
    (path / checkpoint.MANIFEST).unlink()
    with pytest.raises(checkpoint.CorruptCheckpoint, match="partial write"):
        checkpoint.read(path)
