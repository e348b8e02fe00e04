"""What the benchmarks share: the environment record, timing a command in a fresh process (wall time, CPU time,
peak RSS), markdown tables and the JSON file.

Importing it puts the worktree's ``engine`` first on ``sys.path`` (not whichever one is installed), so a
benchmark run as ``python benchmarks/NAME.py`` measures the code beside it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the worktree's engine, not whichever one is installed
    sys.path.insert(0, str(ROOT))

# The packages whose versions every environment record names.
PACKAGES = ("litert-quantizer", "ai-edge-litert", "numpy", "numba")


# ------------------------------------------------------------------------------------------ environment


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package, None when it is not installed."""
    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def environment(packages: Iterable[str] = PACKAGES, date_format: str = "%Y-%m-%d") -> dict[str, Any]:
    """Where and with what the benchmarks ran."""
    return {
        "date": time.strftime(date_format),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions(packages),
    }


def revision() -> dict[str, Any] | None:
    """The commit and the files changed since (read only): before/after runs are compared on these."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                 check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": changed.stdout.split()}


# ---------------------------------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """This environment with the worktree first on PYTHONPATH, for commands run in fresh processes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# The launcher between a benchmark and a measured process.  A child's ru_maxrss starts from the high-water mark
# of the process it was forked from (Linux carries it over fork and exec), so a child of a benchmark, which holds
# models and LiteRT interpreters, would report at least the benchmark's peak; the launcher is a bare interpreter
# of ~10 MB that times its child and reads the child's peak and CPU time (user + system, all threads: above the
# wall time when a tool runs on several cores) from RUSAGE_CHILDREN.
LAUNCHER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": 1024 * usage.ru_maxrss,
               "returncode": code}, f)
"""


def run_process(command: list[str], output: Path, logs: Path, *, require_output: bool = False) -> dict[str, Any]:
    """Run ``command`` once in a fresh process (through ``LAUNCHER``, from the worktree, ``child_env``), its
    ``output`` file removed first; its stdout and stderr go to ``logs``.

    Returns wall time (start to exit), CPU time, peak RSS, exit code and ``error``: None, or, when the exit code
    is not 0 (or, with ``require_output``, ``output`` was not written), the last ``error:`` line of its stderr,
    else the last line, else the exit code.
    """
    output.unlink(missing_ok=True)
    result = logs / "launcher.json"
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        launcher = [sys.executable, "-I", "-c", LAUNCHER, str(result), *command]
        subprocess.run(launcher, stdout=out, stderr=err, cwd=ROOT, env=child_env(), check=True)
    measured = json.loads(result.read_text())
    lines = [line.strip() for line in (logs / "stderr").read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    failed = measured["returncode"] != 0 or (require_output and not output.is_file())
    fallback = lines[-1] if lines else f"exit code {measured['returncode']}"
    measured["error"] = (errors[-1] if errors else fallback) if failed else None
    return measured


# ------------------------------------------------------------------------------------------- output


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: one header row, the separator, one line per row (cells as given, str() applied; an
    empty cell is written "| |")."""

    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"

    lines = [line(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row of {len(row)} cells under a header of {len(header)}: {row!r}")
        lines.append(line(row))
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    """The measurements as indented JSON (numpy values and non-finite floats made JSON-safe)."""
    from engine.report import json_safe

    path.write_text(json.dumps(json_safe(results), indent=2) + "\n")
