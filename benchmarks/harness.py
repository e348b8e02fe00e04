"""What the benchmarks share: the environment record, running a command in a fresh process (timed: wall time, CPU
time, peak RSS; or for the JSON it prints), markdown tables, and the result files.

Every benchmark writes ``benchmarks/results/NAME.json`` (its raw numbers and the environment record) and
``NAME.md`` (its tables) through ``save``; ``benchmarks/report.py`` builds docs/benchmarks.md from them, so no
figure is copied by hand.

Importing it puts the worktree's ``engine`` first on ``sys.path`` (not whichever one is installed), so a
benchmark run as ``python benchmarks/NAME.py`` measures the code beside it.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the worktree's engine, not whichever one is installed
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
# The packages whose versions every environment record names.
PACKAGES = ("litert-quantizer", "ai-edge-litert", "numpy", "numba", "scikit-learn", "scikit-image")


# ------------------------------------------------------------------------------------------ environment


def versions() -> dict[str, str | None]:
    """Installed version of each of ``PACKAGES``, None when it is not installed."""
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of ``keys`` (Linux), else None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.partition(":")[2].strip() for line in lines if line.startswith(keys)), None)


def cpu_model() -> str:
    """The processor's name (Linux), else what ``platform`` knows: two "2-core" machines can differ 2x."""
    return _cpuinfo("model name") or platform.processor()


# CPU features that decide which int8 kernels XNNPACK runs, hence whether int8 beats float: VNNI (x86) and the dot
# product / int8 matrix multiply extensions (Arm), as /proc/cpuinfo names them.
INT8_FEATURES = ("avx2", "avx_vnni", "avx512_vnni", "asimddp", "i8mm")


def int8_features() -> list[str]:
    """Which of ``INT8_FEATURES`` the processor has (Linux; empty elsewhere): the same "AMD EPYC" ran int8
    MobileNet at 1.14x float without VNNI and 0.36x with it."""
    flags = (_cpuinfo("flags", "Features") or "").split()
    return [feature for feature in INT8_FEATURES if feature in flags]


def commit() -> str | None:
    """The checked-out commit, read from .git's files: running git could take its index lock while someone
    commits."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = (line.split() for line in (git / "packed-refs").read_text().splitlines() if line[:1] not in "#^")
        return next((sha for sha, name in packed if name == ref), None)
    except OSError:
        return None


def engine_fingerprint() -> str:
    """sha256 of the engine's source files: the commit alone does not say whether the worktree had edits, and
    taken at the start and the end of a run it shows a run during edits."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "engine").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def environment() -> dict[str, Any]:
    """Where, with what and how busy: taken when a benchmark starts (``save`` adds the end of the run)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": shlex.join(["python", str(shown), *sys.argv[1:]]),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "int8_features": int8_features(),
        "python": platform.python_version(),
        "versions": versions(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "commit": commit(),
        "engine_sha256": engine_fingerprint(),
    }


# ---------------------------------------------------------------------------------------- processes


@functools.cache
def compile_bytecode() -> None:
    """Write the worktree's bytecode (``__pycache__``), as ``pip install`` does for an installed package, before
    any process is timed.  Where ``PYTHONDONTWRITEBYTECODE`` is set (this CI image sets it) an editable checkout
    never gets it, and every measured run of ours would compile the engine's ~60 modules from source (0.11 s)
    where the installed quantizer loads its bytecode."""
    for package in ("engine", "schema"):
        compileall.compile_dir(ROOT / package, quiet=1)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the worktree first on PYTHONPATH (and ``extra``), for commands run in fresh
    processes."""
    env = {**os.environ, **(extra or {})}
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
    """Run ``command`` once in a fresh process (through ``LAUNCHER``, from the worktree, ``child_env``, its
    bytecode compiled first: ``compile_bytecode``), its
    ``output`` file removed first; its stdout and stderr go to ``logs``.

    Returns wall time (start to exit), CPU time, peak RSS, exit code and ``error``: None, or, when the exit code
    is not 0 (or, with ``require_output``, ``output`` was not written), the last ``error:`` line of its stderr,
    else the last line, else the exit code.
    """
    compile_bytecode()
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


def run_json(command: list[str], env: dict[str, str] | None = None) -> Any:
    """Run ``command`` in a fresh process (from the worktree, ``child_env(env)``), for measurements that must not
    see this process's state (imports, caches, memory peaks); returns the JSON its last stdout line holds."""
    compile_bytecode()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=child_env(env), check=False)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed (exit code {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def numba_first_use(script: Path) -> dict[str, dict[str, float]]:
    """``script --child`` (which prints, as JSON, the seconds of each kernel's first call) in a fresh interpreter
    with a new, empty ``NUMBA_CACHE_DIR`` (each first call compiles), then in another with that cache (each
    loads): what a user's first run on a new machine, and every later one, pays before any work."""
    command = [sys.executable, str(script), "--child"]
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        compiled = run_json(command, {"NUMBA_CACHE_DIR": cache})
        cached = run_json(command, {"NUMBA_CACHE_DIR": cache})
    return {"compile_s": compiled, "cached_load_s": cached}


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


def db(value: float | None) -> str:
    """An SQNR cell in dB: one decimal ("inf" for identical outputs), "n/a" when there is no value."""
    return "n/a" if value is None else f"{value:.1f}"


def first_use_table(first_use: dict[str, dict[str, float]]) -> str:
    """``numba_first_use``'s seconds: one row per call, then the total."""
    compiled, cached = first_use["compile_s"], first_use["cached_load_s"]
    rows = [[name, f"{compiled[name]:.2f}", f"{cached[name]:.3f}"] for name in compiled]
    rows.append(["total", f"{sum(compiled.values()):.2f}", f"{sum(cached.values()):.3f}"])
    return markdown_table(["first use", "compile, empty cache (s)", "load from cache (s)"], rows)


def results_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``--json`` option every benchmark takes: where its result files go."""
    parser.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", metavar="PATH",
                        help=f"write the measurements here (default benchmarks/results/{name}.json) and the "
                        "tables beside it (.md)")  # fmt: skip


def save(results: dict[str, Any], markdown: str, path: Path) -> None:
    """Print the tables and write the result files: ``path``, the measurements with the environment record (the
    load average and the engine's sources at the end of the run added) as JSON (non-finite floats as strings),
    and the tables beside it (.md)."""
    from engine.report import json_safe

    env = results["environment"]
    env["load_average_end"] = [round(load, 2) for load in os.getloadavg()]
    env["engine_sha256_end"] = engine_fingerprint()
    if env["engine_sha256_end"] != env["engine_sha256"]:
        markdown = (
            "**The engine's source changed during this run: rows may come from different versions.**\n\n" + markdown
        )
    print(markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(results), indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown + "\n")
