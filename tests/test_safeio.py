"""Checksummed files, safe loading and umask-respecting atomic writes."""

from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from widthsearch.errors import CheckpointError, IntegrityError, UntrustedFileError
from widthsearch.safeio import (
    SAFETENSORS_DIGEST_KEY,
    atomic_write_text,
    load_safetensors_verified,
    read_checksummed,
    safe_torch_load,
    save_safetensors_verified,
    tensors_digest,
    write_checksummed,
)


class _Code:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("echo never",))


def test_checksummed_round_trip_and_damage(tmp_path: Path) -> None:
    path = write_checksummed(tmp_path / "f.bin", b"payload")
    assert read_checksummed(path) == b"payload"
    raw = bytearray(path.read_bytes())
    raw[0] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="do not match its sha256"):
        read_checksummed(path)
    path.write_bytes(b"payload")
    with pytest.raises(CheckpointError, match="has no checksum"):
        read_checksummed(path)


def test_safe_torch_load_names_refused_code(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"x": _Code()}, buffer)
    with pytest.raises(UntrustedFileError, match=r"run Python code \(posix\.system\)") as info:
        safe_torch_load(buffer.getvalue(), "the file")
    assert "weights_only" not in str(info.value)
    with pytest.raises(CheckpointError, match="plain pickle"):
        safe_torch_load(pickle.dumps({"a": 1}), "the file")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        safe_torch_load(b"PK\x03\x04junk", "the file")


def test_safetensors_digest_in_metadata(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor(True), "c": torch.zeros(0)}
    path = save_safetensors_verified(tmp_path / "w.safetensors", tensors, {"step": "3"})
    loaded, meta = load_safetensors_verified(path)
    assert meta["step"] == "3" and meta[SAFETENSORS_DIGEST_KEY] == tensors_digest(tensors)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    other = dict(tensors, a=tensors["a"] + 1)
    assert tensors_digest(other) != tensors_digest(tensors)


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        private = atomic_write_text(tmp_path / "private.txt", "x")
        os.umask(0o002)
        shared = atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664
