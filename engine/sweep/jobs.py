"""One run of a sweep: a model compressed with one configuration, then evaluated against it; the row it gives.

``run_job`` is all a worker does, whichever backend runs it (a local process, a Ray task), and it never raises: a
run that fails gives a row with ``status`` "failed" and the error, so the sweep goes on.  A row holds the run's
identity (``key``, model, configuration, options), what ``engine.evaluate`` found (``size``, ``quality``), the recipe
compress resolved, versions, and under ``measured`` and ``run`` what depends on the machine (timings, host); the
rest is the same whichever way and wherever the run is made, paths included (``scrub``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.sweep.inputs import Config, ModelEntry

# Keys of a row that depend on the machine and the moment, not on the run's inputs.
MEASURED_KEYS = ("measured", "run")
_VERSIONED = ("litert-engine", "ai-edge-litert", "numpy", "numba")


@dataclass(frozen=True)
class Settings:
    """How each output is evaluated (``engine.evaluate``'s options).  Latency on 1 thread only unless ``threads``
    asks for more: the figure the reports compare, and the one that means something while parallel runs share the
    CPUs (an N-thread timing in one run would also slow the others)."""

    runs: int = 20
    warmup: int = 3
    threads: int = 1
    footprint: bool = True


@dataclass(frozen=True)
class Job:
    """A (model, configuration) pair to run.  ``key`` names it in the results: it changes when a file the run
    reads or the configuration's options change, so such a run is redone."""

    key: str
    model: ModelEntry
    config: Config
    settings: Settings

    @property
    def output(self) -> str:
        """Where the compressed model goes, relative to the results folder."""
        return f"models/{self.model.name}/{self.config.name}.tflite"


def make_job(model: ModelEntry, digests: dict[str, str], config: Config, settings: Settings) -> Job:
    """The job for ``model`` (whose files hash to ``digests``, by role) and ``config``."""
    identity = {"model": model.name, "files": digests, "config": config.name, "options": config.options}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return Job(key, model, config, settings)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def run_job(job: Job, files: dict[str, str], output: Path, backend: str) -> dict[str, Any]:
    """Compress ``files["path"]`` with the job's configuration into ``output``, evaluate it against the input (on
    the data, else the calibration samples, else one generated sample), and return the row.  ``files`` are the
    job's files on this machine, by role (path, calibration, data, labels); the row names them as the user gave
    them, and the output by its place in the results folder."""
    from engine.api import compress
    from engine.evaluation import evaluate

    started = time.time()
    fields: dict[str, Any] = {}
    measured: dict[str, Any] = {}
    try:
        options = dict(job.config.options)
        recipe = options.pop("recipe", None)
        calibration = files.get("calibration")
        if job.config.needs_calibration and calibration is None:
            raise EngineError(
                f"configuration {job.config.name!r} needs calibration data: give model {job.model.name!r} one in a "
                'manifest ("calibration")'
            )
        tic = time.perf_counter()
        _, report = compress(
            files["path"],
            recipe,
            output=output,
            calibration=calibration if job.config.needs_calibration else None,
            **options,
        )
        measured["compress_s"] = time.perf_counter() - tic
        data, source = next(((files[k], k) for k in ("data", "calibration") if k in files), (None, "generated"))
        s = job.settings
        tic = time.perf_counter()
        record = evaluate(
            output, files["path"], data, files.get("labels"),
            runs=s.runs, warmup=s.warmup, threads=s.threads, footprint=s.footprint,
        ).to_dict()  # fmt: skip
        measured["evaluate_s"] = time.perf_counter() - tic
        measured.update(record.pop("measured"))
        search = report.search
        fields = {
            "status": "ok",
            "output": job.output,
            "recipe": search.recipe if search is not None else report.recipe,
            "search": None if search is None else {"met": search.met, "chosen": search.chosen, "budget": search.budget},
            "quality_data": source,
            **record,
        }
    except EngineError as exc:
        fields = {"error": str(exc)}
    except Exception as exc:  # an engine bug in one run is that run's failure, not the sweep's end
        fields = {"error": f"{type(exc).__name__}: {exc}"}
    row = make_row(job, backend, started, measured=measured, **fields)
    shown = job.model.files()
    return scrub(row, {**{files[role]: shown[role] for role in files}, str(output): job.output})


def make_row(job: Job, backend: str, started: float, **fields: Any) -> dict[str, Any]:
    """A row: the job's identity, ``fields`` (by default a failure without figures: a worker that died in native
    code gives just that, with ``error``), versions, and where and when it ran."""
    return {
        "key": job.key,
        "model": job.model.name,
        "config": job.config.name,
        "options": job.config.options,
        "status": "failed",
        "error": None,
        "output": None,
        "measured": {},
        **fields,
        "versions": versions(),
        "run": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": time.time() - started,
            "host": platform.node(),
            "backend": backend,
        },
    }


def scrub(row: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """``row`` with each local path replaced by the name the user knows it by, so that errors read the same
    whichever machine, folder or backend made the run."""
    text = json.dumps(row)
    for local, shown in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(json.dumps(local)[1:-1], json.dumps(shown)[1:-1])
    return json.loads(text)


def limit_threads(threads: int) -> None:
    """Cap the compression kernels' threads in a worker, so that parallel workers do not oversubscribe the CPUs
    (the timed invokes set their own thread counts)."""
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
