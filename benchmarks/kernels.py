"""Kernel benchmark: Numba compile and cache-load times, and throughput of the quantization kernels.

Usage::

    python benchmarks/kernels.py [--json out.json] [--repeat N] [--threads N]

* first use: a fresh interpreter with an empty ``NUMBA_CACHE_DIR`` imports ``engine.quant.kernels`` (which imports
  Numba) and calls each public kernel once on a tiny input, in the table's order, so each time is that
  kernel's compilation (Numba helpers compile with the first kernel that uses them) and writing it to the
  cache; the first kernel's time also holds Numba's own start-up. Cached load: a second fresh interpreter
  with the same cache directory does the same, loading the compiled kernels instead.
* throughput: each kernel on a 4096x4096 float32 matrix quantized per channel (4096 rows of 4096) and on
  262144 blocks of 32 (8.4 M weights, blockwise), the median of ``--repeat`` runs after a warm-up run, and
  the numpy twin once, for comparison. Weights are standard normal; pack and unpack handle every code of
  the matrix (int4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
        "absmax_scales": lambda: k.absmax_scales(g, 8),
        "mse_scales": lambda: k.mse_scales(g, 8),
        "quantize": lambda: k.quantize(g, s, 8),
        "dequantize": lambda: k.dequantize(k.quantize_numpy(g, s, 8), s),
        "signal_and_noise": lambda: k.signal_and_noise(g, k.quantize_numpy(g, s, 8), s),
        "pack_int4": lambda: k.pack_int4(codes4),
        "unpack_int4": lambda: k.unpack_int4(k.pack_int4_numpy(codes4), codes4.size),
        "pack_int2": lambda: k.pack_int2(codes2),
        "unpack_int2": lambda: k.unpack_int2(k.pack_int2_numpy(codes2), codes2.size),
        "histogram_add": lambda: k.histogram_add(g.reshape(-1), 0, -8, np.zeros(16, np.int64)),
    }
    assert list(calls) == KERNELS
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        times[name] = time.perf_counter() - start
    return times


def _fresh_process(cache_dir: str) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    done = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


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
                "absmax_scales": (k.absmax_scales, (g, bits)),
                "mse_scales": (k.mse_scales, (g, bits)),
                "quantize": (k.quantize, (g, s, bits)),
                "dequantize": (k.dequantize, (codes, s)),
                "signal_and_noise": (k.signal_and_noise, (g, codes, s)),
            }
            if bits == 4:
                jobs["pack_int4"] = (k.pack_int4, (codes4,))
                jobs["unpack_int4"] = (k.unpack_int4, (packed, codes4.size))
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


def _tables(first: dict[str, float], cached: dict[str, float], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| first use | compile, empty cache (s) | load from cache (s) |",
        "|---|---|---|",
        *(f"| {name} | {first[name]:.2f} | {cached[name]:.3f} |" for name in first),
        f"| total | {sum(first.values()):.2f} | {sum(cached.values()):.3f} |",
        "",
        "| case | kernel | bits | numba ms | M weights/s | numpy twin ms | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = r["weights"] / r["numba_s"] / 1e6
        speedup = r["numpy_s"] / r["numba_s"]
        lines.append(
            f"| {r['case']} | {r['kernel']} | {r['bits']} | {r['numba_s'] * 1e3:.1f} | {rate:.0f} | "
            f"{r['numpy_s'] * 1e3:.0f} | {speedup:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per kernel (median reported)")
    parser.add_argument("--threads", type=int, help="Numba threads for the throughput runs (default: all cores)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_first_use()))
        return 0

    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
        first = _fresh_process(cache_dir)
        cached = _fresh_process(cache_dir)
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    rows = _throughput(args.repeat)
    machine = {
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": numba.threading_layer(),
    }
    print(f"Numba {machine['numba']}, numpy {machine['numpy']}, {machine['numba_threads']} Numba threads "
          f"({machine['threading_layer']}) on {machine['cpus']} CPUs\n")  # fmt: skip
    print(_tables(first, cached, rows))
    if args.json:
        result = {"machine": machine, "first_use_s": first, "cached_load_s": cached, "throughput": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
