"""Writing files that survive a kill and reading files that may be damaged or hostile.

- `atomic_write`: a temporary file beside the target, fsynced, renamed over it; created with
  the permissions the umask gives (mkstemp's forced 0600 is undone).
- Checksummed checkpoints: the bytes of `torch.save` followed by a 40-byte trailer
  (`TRAILER_MAGIC` + the sha256 of those bytes), in one atomically written file, so the
  checksum can never be out of step with the data it covers.
- Checksummed safetensors: the sha256 of every tensor (name, dtype, shape, bytes) stored in
  the file's own metadata, so the file stays a plain safetensors file any reader can open.
- `safe_torch_load`: `torch.load(weights_only=True)` whose failures become one message that
  names refused code as refused code, and never repeats torch's advice to turn the safety
  off.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError, IntegrityError, UntrustedFileError, WidthSearchError

TRAILER_MAGIC = b"WSSHA256"
TRAILER_SIZE = len(TRAILER_MAGIC) + 32
SAFETENSORS_DIGEST_KEY = "widthsearch_sha256"
_UNSAFE_GLOBAL_RE = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)",
                               re.IGNORECASE)

__all__ = [
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "file_mode",
    "load_safetensors_verified", "read_checksummed", "safe_torch_load",
    "save_safetensors_verified", "tensors_digest", "write_checksummed",
]


# --------------------------------------------------------------------------- atomic writes


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort (not every OS can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it.

    The rename is atomic on one filesystem, so a reader (or a resume after a kill) sees
    either the old file or the complete new one, never half of it. A failed write (a full
    disk) removes the temporary file and leaves the old one untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a kill never leaves a half-written file."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------- checksummed blobs


def write_checksummed(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` followed by its sha256 trailer."""
    digest = hashlib.sha256(data).digest()

    def write(f: IO[bytes]) -> None:
        f.write(data)
        f.write(TRAILER_MAGIC + digest)

    return atomic_write(path, write)


def read_checksummed(path: str | os.PathLike[str]) -> bytes:
    """The data of a file written by `write_checksummed`, after verifying its checksum.

    Raises IntegrityError when the contents do not match the checksum, CheckpointError
    when the file has no checksum trailer (cut short, or not written by widthsearch).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) < TRAILER_SIZE or raw[-TRAILER_SIZE:-32] != TRAILER_MAGIC:
        raise CheckpointError(f"{path} has no checksum (cut short, or not written by "
                              "widthsearch), so it cannot be verified")
    data, digest = raw[:-TRAILER_SIZE], raw[-32:]
    if hashlib.sha256(data).digest() != digest:
        raise IntegrityError(f"{path} is damaged: its contents do not match its sha256 checksum")
    return data


# --------------------------------------------------------------------------- safe torch.load


def safe_torch_load(source: str | os.PathLike[str] | bytes, what: str,
                    damaged: type[WidthSearchError] = CheckpointError) -> Any:
    """`torch.load(weights_only=True)` onto the CPU with failures as one clear message.

    A file that names a Python global outside torch's safe set is refused code (an
    UntrustedFileError: it is never run); anything else that fails is `damaged`.
    """
    handle: Any = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise damaged(f"{what} does not exist") from None
    except Exception as e:  # corrupt zip, truncated file, refused global, ...
        text = str(e)
        refused = _UNSAFE_GLOBAL_RE.search(text)
        if refused:
            raise UntrustedFileError(
                f"refused {what}: it asks to run Python code ({refused.group(1)}) when "
                "loaded; widthsearch loads only tensors and plain data and never runs code "
                "from a file") from None
        if "Unsupported operand" in text:
            raise damaged(f"cannot load {what}: it is not a torch zip file (a plain pickle, "
                          "which is never unpickled, or a damaged file)") from None
        raise damaged(f"cannot load {what}: it is corrupt or truncated "
                      f"({type(e).__name__})") from None


# --------------------------------------------------------------------------- safetensors


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_safetensors_verified(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                              metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically write a safetensors file whose metadata holds its tensors' checksum."""
    from safetensors.torch import save

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), SAFETENSORS_DIGEST_KEY: tensors_digest(plain)}
    return atomic_write_bytes(path, save(plain, metadata=meta))


def load_safetensors_verified(path: str | os.PathLike[str],
                              damaged: type[WidthSearchError] = IntegrityError
                              ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file from `save_safetensors_verified`, checksum verified."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise damaged(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise damaged(f"{path} is not a readable safetensors file "
                      f"({' '.join(str(e).split()) or type(e).__name__})") from None
    expected = metadata.get(SAFETENSORS_DIGEST_KEY)
    if expected is None:
        raise damaged(f"{path} has no checksum (not written by this widthsearch version), "
                      "so it cannot be verified")
    if tensors_digest(tensors) != expected:
        raise IntegrityError(f"{path} is damaged: its tensors do not match their sha256 "
                             "checksum")
    return tensors, metadata
