"""Kernel benchmark: Numba compile and cache-load times, and throughput of the quantization kernels.

Usage::

    python benchmarks/kernels.py [--json PATH] [--repeat N] [--threads N]

* first use: a fresh interpreter with an empty ``NUMBA_CACHE_DIR`` imports ``engine.quant.kernels`` (which does
  not import Numba) and calls each compiled kernel once (``.compiled``: not the numpy twin a small call would
  run at start-up) on a tiny input, in the table's order, so each time is that kernel's compilation (Numba
  helpers compile with the first kernel that uses them) and writing it to the cache; the first kernel's time
  also holds importing Numba and its start-up. Cached load: a second fresh interpreter
  with the same cache directory does the same, loading the compiled kernels instead.
* throughput: each kernel on a 4096x4096 float32 matrix quantized per channel (4096 rows of 4096) and on
  262144 blocks of 32 (8.4 M weights, blockwise), the median of ``--repeat`` runs after a warm-up run, and
  the numpy twin once, for comparison. Weights are standard normal; pack and unpack handle every code of
  the matrix (int4).

Writes benchmarks/results/kernels.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, first_use_table, markdown_table, numba_first_use, results_argument, save

KERNELS = [
    "absmax_scales",
    "mse_scales",
    "quantize",
    "dequantize",
    "signal_and_noise",
    "pack_int4",
    "unpack_int4",
    "pack_int2",
    "unpack_int2",
    "histogram_add",
]


def _first_use() -> dict[str, float]:
    """Seconds to import engine.quant.kernels, then for the first call of each kernel on a tiny input."""
    start = time.perf_counter()
    from engine.quant import kernels as k

    times = {"import engine.quant.kernels": time.perf_counter() - start}
    g = np.arange(16, dtype=np.float32).reshape(2, 8) - 8
    s = k.absmax_scales_numpy(g, 8)  # the twins need no compiling
    codes4 = np.arange(-8, 8, dtype=np.int8)
    codes2 = np.array([-2, -1, 0, 1, 1], np.int8)
    calls: dict[str, Callable[[], Any]] = {
        "absmax_scales": lambda: k.absmax_scales.compiled(g, 8),
        "mse_scales": lambda: k.mse_scales.compiled(g, 8),
        "quantize": lambda: k.quantize.compiled(g, s, 8),
        "dequantize": lambda: k.dequantize.compiled(k.quantize_numpy(g, s, 8), s),
        "signal_and_noise": lambda: k.signal_and_noise.compiled(g, k.quantize_numpy(g, s, 8), s),
        "pack_int4": lambda: k.pack_int4.compiled(codes4),
        "unpack_int4": lambda: k.unpack_int4.compiled(k.pack_int4_numpy(codes4), codes4.size),
        "pack_int2": lambda: k.pack_int2.compiled(codes2),
        "unpack_int2": lambda: k.unpack_int2.compiled(k.pack_int2_numpy(codes2), codes2.size),
        "histogram_add": lambda: k.histogram_add.compiled(g.reshape(-1), 0, -8, np.zeros(16, np.int64)),
    }
    assert list(calls) == KERNELS
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        times[name] = time.perf_counter() - start
    return times


def _median_seconds(call: Callable[[], Any], repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _once(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _throughput(repeat: int) -> list[dict[str, Any]]:
    from engine.quant import kernels as k

    rng = np.random.default_rng(0)
    cases = {
        "per-channel 4096x4096": (rng.standard_normal((4096, 4096), np.float32), [8, 4]),
        "blockwise 262144x32": (rng.standard_normal((262144, 32), np.float32), [4]),
    }
    rows = []
    for case, (g, bit_widths) in cases.items():
        for bits in bit_widths:
            s = k.mse_scales(g, bits)
            codes = k.quantize(g, s, bits)
            codes4 = k.quantize(g, s, 4) if bits != 4 else codes
            packed = k.pack_int4(codes4)
            jobs: dict[str, tuple[Callable[..., Any], tuple]] = {
                "absmax_scales": (k.absmax_scales.compiled, (g, bits)),
                "mse_scales": (k.mse_scales.compiled, (g, bits)),
                "quantize": (k.quantize.compiled, (g, s, bits)),
                "dequantize": (k.dequantize.compiled, (codes, s)),
                "signal_and_noise": (k.signal_and_noise.compiled, (g, codes, s)),
            }
            if bits == 4:
                jobs["pack_int4"] = (k.pack_int4.compiled, (codes4,))
                jobs["unpack_int4"] = (k.unpack_int4.compiled, (packed, codes4.size))
            for name, (kernel, args) in jobs.items():
                fast = _median_seconds(lambda kernel=kernel, args=args: kernel(*args), repeat)
                twin = _once(lambda name=name, args=args: getattr(k, f"{name}_numpy")(*args))
                rows.append(
                    {
                        "case": case,
                        "kernel": name,
                        "bits": bits,
                        "weights": g.size,
                        "numba_s": fast,
                        "numpy_s": twin,
                    }
                )
                print(f"  {case} int{bits} {name}: {fast * 1e3:.1f} ms (numpy {twin * 1e3:.0f} ms)", file=sys.stderr)
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The first-use table, then each kernel's time and rate against its numpy twin."""
    settings = results["settings"]
    rows = []
    for r in results["throughput"]:
        rows.append([r["case"], r["kernel"], r["bits"], f"{r['numba_s'] * 1e3:.1f}",
                     f"{r['weights'] / r['numba_s'] / 1e6:.0f}", f"{r['numpy_s'] * 1e3:.0f}",
                     f"{r['numpy_s'] / r['numba_s']:.1f}x"])  # fmt: skip
    header = ["case", "kernel", "bits", "numba ms", "M weights/s", "numpy twin ms", "speedup"]
    return "\n\n".join([
        "# Quantization kernels",
        "## First use",
        first_use_table(results["first_use"]),
        f"## Throughput: {settings['numba_threads']} Numba threads ({settings['threading_layer']}), median of "
        f"{settings['repeat']} runs (numpy twin: once)",
        markdown_table(header, rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "kernels")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per kernel (median reported)")
    parser.add_argument("--threads", type=int, help="Numba threads for the throughput runs (default: all cores)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_first_use()))
        return 0

    results: dict[str, Any] = {"environment": environment()}
    started = time.perf_counter()
    results["first_use"] = numba_first_use(Path(__file__).resolve())
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    results["throughput"] = _throughput(args.repeat)
    results["settings"] = {"repeat": args.repeat, "numba_threads": numba.get_num_threads(),
                           "threading_layer": numba.threading_layer()}  # fmt: skip
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
