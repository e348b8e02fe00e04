"""Sweep jobs as Ray tasks, on a local Ray instance or a cluster (``pip install 'litert-engine[ray]'``; the engine
must be installed on every node).

Each model's files (the .tflite and its data) are put in Ray's object store once (``ray.put``) and every task
takes them by reference, so nothing is copied per job and the nodes need no shared filesystem: a task writes them
to a local folder once per worker process, runs ``engine.sweep.jobs.run_job`` there, and returns the row with the
compressed model's bytes, which the driver writes into the results folder.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.secure.atomic import atomic_output
from engine.sweep.jobs import Job, limit_threads, make_row, run_job

# Per worker process: (model name, role, object id) -> the local copy of that file, removed when the process exits.
_local_files: dict[tuple[str, str, str], str] = {}


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EngineError("--ray needs Ray: pip install 'litert-engine[ray]'") from None
    return ray


def _task(job: Job, refs: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """One job on a Ray worker: its files fetched from the object store (once per worker process), then
    ``run_job`` in a temporary folder; the row and the compressed model's bytes."""
    import ray

    limit_threads(1)  # one CPU per task
    files = {}
    for role, ref in refs.items():
        key = (job.model.name, role, ref.hex())
        if key not in _local_files:
            folder = Path(tempfile.mkdtemp(prefix="litert-engine-sweep-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = folder / Path(job.model.files()[role]).name
            path.write_bytes(ray.get(ref))
            _local_files[key] = str(path)
        files[role] = _local_files[key]
    with tempfile.TemporaryDirectory(prefix="litert-engine-run-") as folder:
        output = Path(folder) / Path(job.output).name
        row = run_job(job, files, output, "ray")
        return row, output.read_bytes() if row["status"] == "ok" else None


def run_ray(jobs: list[Job], directory: Path, address: str | None, workers: int) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` as their tasks finish.  ``address`` None starts a local instance of ``workers`` CPUs (or
    joins the cluster RAY_ADDRESS names); otherwise joins that cluster.  A task whose worker dies is a failed row."""
    ray = _require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        local = {"num_cpus": workers} if address is None else {}
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, **local)
    try:
        refs: dict[str, dict[str, Any]] = {}
        for job in jobs:
            if job.model.name not in refs:  # each model's files put once, whatever the number of its jobs
                refs[job.model.name] = {
                    role: ray.put(Path(path).read_bytes()) for role, path in job.model.files().items()
                }
        task = ray.remote(num_cpus=1, max_retries=0)(_task)
        pending = {task.remote(job, refs[job.model.name]): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                row, compressed = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                yield make_row(job, "ray", time.time(), error=f"the Ray task failed: {first}")
                continue
            if compressed is not None:
                output = directory / job.output
                output.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output(output) as f:
                    f.write(compressed)
            yield row
    finally:
        if started_here:
            ray.shutdown()
