"""Running a sweep: every (model, configuration) job through compress + evaluate, on local worker processes or Ray
tasks, into one results folder that a re-run continues.

Results folder::

    results.jsonl    one row per finished run (engine.sweep.jobs), appended and flushed as each run ends
    results.csv      the headline figures, one line per run
    report.md        per model: the table, the Pareto fronts marked, the plot
    report.html      the same, self-contained (plots embedded)
    plots/MODEL.png  size vs quality and latency vs quality
    models/MODEL/CONFIG.tflite   each compressed model

Resuming: a job whose key (its files' hashes, its configuration) has a row in results.jsonl is not run again; a
row cut short by a kill is dropped and that run redone.  Failed runs are finished runs too (``retry_failed`` runs
them again).  Local workers are processes; one that dies in native code (a crash in the interpreter) fails the
runs it held, each retried alone first so that only the one that crashes is recorded as failed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.accuracy import BUDGET_KEYWORDS
from engine.errors import EngineError
from engine.files import file_digest
from engine.progress import track
from engine.sweep.inputs import Config, ModelEntry
from engine.sweep.jobs import Job, Settings, limit_threads, make_job, make_row, run_job
from engine.sweep.report import write_reports

RESULTS = "results.jsonl"
_DIED = "the worker process died while running it (a crash in native code, or killed)"


@dataclass
class SweepResult:
    """The rows of every job of the sweep (in model, then configuration order), how many ran this time, and the
    files the reports were written to."""

    rows: list[dict[str, Any]]
    ran: int
    already_done: int
    directory: Path
    written: list[Path]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] != "ok"]


class ResultStore:
    """results.jsonl: rows by job key, the last row of a key winning; written one flushed line at a time."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / RESULTS

    def load(self) -> dict[str, dict[str, Any]]:
        """The rows so far.  A last line cut short (the sweep was killed while writing it) is cut off the file."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        rows: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(complete.decode().splitlines(), 1):
            try:
                row = json.loads(line)
                rows[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EngineError(
                    f"{self.path}:{number}: not a result row; is this a sweep's results folder?"
                ) from None
        return rows

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def plan(models: list[ModelEntry], configs: list[Config], settings: Settings) -> list[Job]:
    """Every (model, configuration) job, models outermost; each model's files are hashed once."""
    jobs = []
    for model in models:
        digests = {role: file_digest(path) for role, path in model.files().items()}
        jobs += [make_job(model, digests, config, settings) for config in configs]
    return jobs


def run_sweep(
    models: list[ModelEntry],
    configs: list[Config],
    directory: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    workers: int = 1,
    ray: str | bool = False,
    retry_failed: bool = False,
) -> SweepResult:
    """Run every job not yet in ``directory``'s results, then write the CSV and the reports over all of them.

    ``workers`` local processes, or with ``ray`` Ray tasks (True: a local Ray instance of ``workers`` CPUs, or the
    cluster RAY_ADDRESS names; a string: that cluster's address).  Rows are the same either way, timings aside.
    """
    if workers < 1:
        raise EngineError(f"workers must be at least 1, not {workers}")
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"results folder {out}: {exc.strerror or exc}") from None
    jobs = plan(models, configs, settings or Settings())
    store = ResultStore(out)
    done = store.load()
    todo = [j for j in jobs if j.key not in done or (retry_failed and done[j.key]["status"] != "ok")]
    # Longest first, roughly (the largest models, and the accuracy-aware searches, which compress many times), so
    # that parallel workers do not wait on one long run at the end.
    todo.sort(key=lambda j: (-Path(j.model.path).stat().st_size, not j.config.options.keys() & set(BUDGET_KEYWORDS)))
    if ray:
        from engine.sweep.ray_backend import run_ray

        rows = run_ray(todo, out, None if ray is True else ray, workers)
    else:
        rows = run_local(todo, out, workers)
    for row in track(rows, f"sweep ({len(todo)} runs)", total=len(todo)):
        store.append(row)
        done[row["key"]] = row
        if row["status"] != "ok":
            clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over the progress bar's line
            print(f"{clear}failed: {row['model']} / {row['config']}: {row['error']}", file=sys.stderr)
    rows_now = [done[j.key] for j in jobs]
    return SweepResult(rows_now, len(todo), len(jobs) - len(todo), out, write_reports(rows_now, out))


# ------------------------------------------------------------------------------------------- local workers


def _start_worker(threads: int) -> None:
    limit_threads(threads)


def _local_job(job: Job, directory: str) -> dict[str, Any]:
    output = Path(directory) / job.output
    output.parent.mkdir(parents=True, exist_ok=True)
    return run_job(job, job.model.files(), output, "local")


def run_local(
    jobs: list[Job], directory: Path, workers: int, work: Callable[[Job, str], dict[str, Any]] = _local_job
) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` as they finish, ``work(job, directory)`` run in ``workers`` processes.  When a worker dies,
    the runs it may have held are each retried alone, and the one that kills its worker alone is recorded as
    failed."""
    queue = deque(jobs)
    suspects: deque[Job] = deque()
    while queue or suspects:
        alone = bool(suspects)
        batch = deque([suspects.popleft()]) if alone else queue
        crashed = yield from _pool(batch, directory, 1 if alone else workers, work)
        if len(crashed) == 1:
            yield make_row(crashed[0], "local", time.time(), error=_DIED)
        else:
            suspects.extend(crashed)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Start workers with OMP_NUM_THREADS=1 unless it is set, as Ray starts its one-CPU tasks: numpy's BLAS then
    sums in the same order in every worker, whatever the machine and the backend, and the figures computed with it
    (cosine similarity) agree to the last bit.  Worker processes take the environment when they start, and the pool
    may start them at any submit, so it holds for the pool's life."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def _pool(
    queue: deque[Job], directory: Path, workers: int, work: Callable[[Job, str], dict[str, Any]]
) -> Generator[dict[str, Any], None, list[Job]]:
    """Run ``queue`` on a pool of ``workers`` fresh processes, at most one job each at a time (so that a crash
    has few suspects); returns the jobs that were running when a worker died, empty when none did."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state shared with this process
    with (
        _one_blas_thread(),
        ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool,
    ):
        running: dict[Future[dict[str, Any]], Job] = {}
        while queue or running:
            while queue and len(running) < workers:
                job = queue.popleft()
                running[pool.submit(work, job, str(directory))] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                if isinstance(future.exception(), BrokenProcessPool):
                    wait(running)
                    yield from (f.result() for f in running if f.exception() is None)
                    return [job for f, job in running.items() if f.exception() is not None]
                del running[future]
                yield future.result()
    return []
