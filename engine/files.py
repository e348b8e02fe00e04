"""Files on disk, with nothing heavier than the standard library: the check every command makes before writing
(never over its input) and the streamed SHA-256 that signatures and sweeps record.  The security commands import
only this, so they start without numpy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.errors import EngineError

_READ_CHUNK = 1 << 20


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: equal once resolved, or one file under two names (a link).  Writing a
    model over its own input would modify the input, which the engine never does."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB pieces so that memory stays bounded whatever its size."""
    digest = hashlib.sha256()
    chunk = bytearray(_READ_CHUNK)
    view = memoryview(chunk)
    try:
        with open(path, "rb") as f:
            while n := f.readinto(chunk):
                digest.update(view[:n])
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()
