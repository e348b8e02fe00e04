"""Load time and peak memory of a model in the default runtime, each measured in a fresh process.

Why a fresh process: a process's peak resident memory only grows, and memory that earlier models freed is reused
by the allocator without showing as growth, so in a process that has run other models the figures would say
little.  The child (``python -m engine.runtime.footprint MODEL``) imports the interpreter, takes its resident set
as the baseline (on Linux resetting its peak to it through /proc/self/clear_refs, so that the import's own passing
peak hides nothing), builds the interpreter as users do (``Interpreter(model_path=p)``, XNNPACK applied, then
``allocate_tensors``: the load time), invokes it once on seeded data, and reports how far its peak resident set
rose over the baseline: what loading and running the model costs a process (the mapped file's pages read, the
weights XNNPACK packs, the tensor arena).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError

_TIMEOUT_S = 600
# ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class Footprint:
    """``load_ms``: building the interpreter and allocating its tensors; ``peak_memory_bytes``: the rise of the
    process's peak resident set over loading and one invoke; ``error``: why they could not be measured."""

    load_ms: float | None = None
    peak_memory_bytes: int | None = None
    error: str | None = None


def measure_footprint(model: str | os.PathLike[str], num_threads: int = 1) -> Footprint:
    """Load and run ``model`` once in a fresh process in the default runtime; a model that does not load or run
    there gives a `Footprint` with the interpreter's error rather than an exception."""
    path = Path(model)
    if not path.is_file():
        raise EngineError(f"{path}: file not found")
    package_root = str(Path(__file__).resolve().parents[2])  # this engine, not whichever one is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "engine.runtime.footprint", str(path), str(num_threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return Footprint(error=f"loading and running it took over {_TIMEOUT_S} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        detail = (done.stderr.strip().splitlines() or [""])[-1]
        return Footprint(error=f"the measuring process failed ({how}){': ' + detail if detail else ''}")
    return Footprint(**json.loads(lines[-1]))


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return 1024 * int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _start_peak() -> int:
    """The baseline: on Linux the resident set now, with the peak reset to it (an import's transient peak would
    hide a small model's); elsewhere the peak so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT


def _peak() -> int:
    try:
        return _status_bytes("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT


def _child(path: str, num_threads: int) -> dict[str, object]:
    from engine.runtime.litert import cast_input, input_data, interpreter, invoke

    with contextlib.suppress(ImportError):  # the interpreter's own import is not the model's cost (if missing,
        import ai_edge_litert.interpreter  # noqa: F401  interpreter() says how to install it)
    label = f"model {path} (default runtime)"
    before = _start_peak()
    try:
        start = time.perf_counter()
        interp = interpreter(path, label, preserve_all=False, num_threads=num_threads, xnnpack=True)
        load_ms = 1e3 * (time.perf_counter() - start)
        details = interp.get_input_details()
        data = input_data(details, None, label, seed=0)
        invoke(interp, [(d, cast_input(data[d["name"]], d, d)) for d in details], label)
    except EngineError as exc:
        return {"error": str(exc)}
    return {"load_ms": load_ms, "peak_memory_bytes": _peak() - before}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
