"""The exceptions for mistakes a user can make, and for files that cannot be trusted.

Every one is a `WidthSearchError`, so `except WidthSearchError` catches them all; the
subclasses say which family a failure belongs to, so the API can react to one kind (retry
on a `RunLockedError`, fall back on a `CheckpointError`) without parsing messages. The CLI
prints the message alone, on one line, and exits 2.
"""


class WidthSearchError(ValueError):
    """A user-facing error: the CLI prints its message alone and exits non-zero."""


class ConfigError(WidthSearchError):
    """A run configuration (YAML, dict or --set override) that does not validate."""


class ModelError(WidthSearchError):
    """A model that cannot be built or trained as given (unknown name, unusable outputs)."""


class DataError(WidthSearchError):
    """A dataset that is missing, damaged, or unusable for training (one class, no images)."""


class RunError(WidthSearchError):
    """A run directory that cannot be used as asked (exists, missing, finished but empty)."""


class RunLockedError(RunError):
    """Another live process is writing into the run directory."""


class CheckpointError(RunError):
    """A checkpoint that cannot be written, read, verified, or does not belong to the run."""


class IntegrityError(CheckpointError):
    """A file whose checksum does not match its contents (damaged after it was written)."""


class NumericsError(RunError):
    """Training produced non-finite values; the last finite checkpoint is kept."""


class ExportError(WidthSearchError):
    """A saved export (safetensors + JSON sidecar) that is malformed or does not fit."""


class UntrustedFileError(WidthSearchError):
    """A file that asks to run code or reach outside its folder; refused, never executed."""


__all__ = [
    "CheckpointError", "ConfigError", "DataError", "ExportError", "IntegrityError",
    "ModelError", "NumericsError", "RunError", "RunLockedError", "UntrustedFileError",
    "WidthSearchError",
]


def require(module: str, extra: str, what: str) -> None:
    """A clear error, before any work, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise WidthSearchError(f"{what} needs {module}: pip install 'widthsearch[{extra}]'")
