"""1-D k-means (weight sharing) benchmark: ``engine.quant.kernels.kmeans_1d`` against scikit-learn's KMeans.

Usage::

    python benchmarks/kmeans.py [--json PATH] [--n N] [--k K] [--skip-full-sklearn]

* data: N (default 25 M) float32 weights, standard normal and Laplace, clustered as one tensor into K (16).
* ours: each init at the default 50 iterations and at 1000 (an iteration costs O(K log n), so more is cheap),
  wall time of the whole call (sort, Lloyd, labelling) and the within-cluster squared error.
* scikit-learn: ``KMeans(n_clusters=K, n_init=1, random_state=0)`` on the same data (one column), and on a
  10% subsample since the full fit is slow; the subsample's centroids are scored on all N weights (nearest
  centroid, not timed). Errors are float64 sums over all N, computed the same way for every row.
* first use: a fresh interpreter with an empty ``NUMBA_CACHE_DIR`` calls each new kernel once on a tiny input
  (compiling it), then a second one with the same cache (loading it) (``harness.numba_first_use``); the radix
  sort that k-means of 1 M+ values uses on AMD Zen 4 (engine/quant/jit.py) is its own row.

Writes benchmarks/results/kmeans.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, first_use_table, markdown_table, numba_first_use, results_argument, save

INITS = ["linear", "density", "kmeans++"]


def _first_use() -> dict[str, float]:
    """Seconds to import engine.quant.kernels, then for the first call of each k-means kernel on a tiny input."""
    start = time.perf_counter()
    from engine.quant import kernels as k

    times = {"import engine.quant.kernels": time.perf_counter() - start}
    v = np.linspace(-1, 1, 50, dtype=np.float32)
    for init in INITS:
        start = time.perf_counter()
        c, labels = k.kmeans_1d(v, 4, init=init)
        times[f"kmeans_1d init={init}"] = time.perf_counter() - start
    start = time.perf_counter()
    k.cluster_error(v, c, labels)
    times["cluster_error"] = time.perf_counter() - start
    from engine.quant import jit

    start = time.perf_counter()  # k-means of 1 M+ values sorts by radix where numpy's sort is slow (AMD Zen 4)
    jit._radix_sorted_copy(v)
    times["radix sort (Zen 4)"] = time.perf_counter() - start
    return times


def _ours(v: np.ndarray, k: int) -> list[dict[str, Any]]:
    from engine.quant import kernels as kern

    kern.kmeans_1d(v, k, init="kmeans++")  # load the compiled kernels, the radix sort's too where it is used
    rows = []
    for iterations in (50, 1000):
        for init in INITS:
            start = time.perf_counter()
            c, labels = kern.kmeans_1d(v, k, init=init, iterations=iterations)
            seconds = time.perf_counter() - start
            error = kern.cluster_error(v, c, labels)
            rows.append({"method": f"ours {init}, {iterations} it", "seconds": seconds, "error": error})
            print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def _sklearn(v: np.ndarray, k: int, fraction: float) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    from engine.quant import kernels as kern

    sample = v if fraction == 1 else np.random.default_rng(1).choice(v, int(v.size * fraction), replace=False)
    start = time.perf_counter()
    model = KMeans(n_clusters=k, n_init=1, random_state=0).fit(sample.reshape(-1, 1))
    seconds = time.perf_counter() - start
    centroids = np.sort(model.cluster_centers_.ravel()).astype(np.float32)
    # Nearest centroid of every weight: the sorted centroids' midpoints split the line.
    labels = np.searchsorted(0.5 * (centroids[1:] + centroids[:-1]), v).astype(np.uint8)
    error = kern.cluster_error(v, centroids, labels)
    row = {"method": f"scikit-learn KMeans n_init=1, fit on {sample.size / 1e6:g} M", "seconds": seconds,
           "error": error, "iterations": int(model.n_iter_)}  # fmt: skip
    print(f"  {row}", file=sys.stderr)
    return row


def markdown(results: dict[str, Any]) -> str:
    """The first-use table, then per data set every method against the last row (scikit-learn's largest fit)."""
    settings = results["settings"]
    parts = [f"# 1-D k-means: K = {settings['k']}, {settings['n'] / 1e6:g} M float32 weights", "## First use",
             first_use_table(results["first_use"])]  # fmt: skip
    for name, rows in results["data"].items():
        reference = rows[-1]
        table = [[r["method"], f"{r['seconds']:.2f}", f"{r['seconds'] / reference['seconds']:.3f}", f"{r['error']:.6g}",
                  f"{r['error'] / reference['error']:.5f}"] for r in rows]  # fmt: skip
        header = ["method", "seconds", "x time", "within-cluster squared error", "x error"]
        parts += [f"## {name} (relative to the last row)", markdown_table(header, table)]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "kmeans")
    parser.add_argument("--n", type=int, default=25_000_000, help="number of weights (default 25 M)")
    parser.add_argument("--k", type=int, default=16, help="clusters (default 16)")
    parser.add_argument("--skip-full-sklearn", action="store_true", help="fit scikit-learn on the subsample only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_first_use()))
        return 0

    settings = {"n": args.n, "k": args.k, "full_sklearn": not args.skip_full_sklearn}
    results: dict[str, Any] = {"environment": environment(), "settings": settings}
    started = time.perf_counter()
    results["first_use"] = numba_first_use(Path(__file__).resolve())
    rng = np.random.default_rng(0)
    data = {"normal": rng.standard_normal(args.n, np.float32), "laplace": rng.laplace(size=args.n).astype(np.float32)}
    results["data"] = {}
    for name, v in data.items():
        print(f"{name}:", file=sys.stderr)
        rows = _ours(v, args.k)
        rows.append(_sklearn(v, args.k, 0.1))
        if not args.skip_full_sklearn:
            rows.append(_sklearn(v, args.k, 1.0))
        results["data"][name] = rows
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
