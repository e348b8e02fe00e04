"""Atomic output files: a signature, key or model appears whole or not at all, never half written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from engine.errors import EngineError
from engine.files import same_file


def refuse_overwriting_input(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """The engine never modifies its input, so an output that names the input file is an error."""
    if same_file(source, target):
        raise EngineError(f"{target} is the input file; the input is never overwritten")


@contextmanager
def atomic_output(path: str | os.PathLike[str], *, private: bool = False, size: int = 0) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, renamed onto it if the block succeeds and removed if it fails.

    ``private`` files (keys) keep mode 0600 and never replace an existing file; others get the mode a file
    written the usual way gets (0666 less the umask).  ``size``, the expected size, is allocated up front where
    the system can: large sequential writes then cost a fraction of the time on some file systems (measured:
    1 GB in 1 MiB writes, 0.8-1.4 s of CPU without, 0.1 s with); the file is cut to what was written.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EngineError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if size and hasattr(os, "posix_fallocate"):
                with suppress(OSError):  # an optimization only: a file system without it writes as usual
                    os.posix_fallocate(fd, 0, size)
            yield f
            f.truncate()
        if private:
            os.link(tmp, path)  # fails if path exists: a key is never overwritten
            os.unlink(tmp)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise EngineError(f"{path} exists; keys are never overwritten (remove it or choose another name)") from exc
        if isinstance(exc, OSError):
            raise EngineError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
