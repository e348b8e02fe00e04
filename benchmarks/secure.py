"""Signing and encryption benchmark: whole-process time and peak memory of sign, verify, encrypt and decrypt.

Usage::

    python benchmarks/secure.py [--json PATH] [--runs N] [--sizes-gb 1.07 ...]

Each command runs as users run it, ``python -m engine ...`` in a fresh process (through the harness launcher,
which reads the child's peak RSS), beside the baseline the goal is measured against: a whole-process
``python -c`` that hashes the same file with ``hashlib.sha256`` in 1 MiB reads.  Rows are the median of
``--runs`` interleaved rounds after a warm-up round, the file in the page cache and no dirty pages left by the
command before (``os.sync()`` before each run: otherwise a command writing after another is throttled by the
kernel while it flushes the previous one's gigabyte).

Inputs: the 268 MB synthetic model of benchmarks/roundtrip.py (four 4096x4096 float32 FULLY_CONNECTED layers),
and, to show that memory does not grow with the file, the same model's bytes repeated to each ``--sizes-gb``
(a file of that size: the streamed commands need no model structure).  Goal for the streamed commands (sign,
verify, encrypt, decrypt): each at most 2x the baseline's time, with peak RSS at most 100 MB whatever the size.
``sign --embed`` and its verification parse and re-serialize the model, so they are listed for reference
without that goal; so are ``model_signing``'s own sign and verify of the same file, and the fixed cost every
``python -m engine`` command pays before its work (importing the command line).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, markdown_table, results_argument, run_process, save
from roundtrip import LARGE_NAME, build_large_model

from engine import write_model
from engine.secure import generate_key, generate_keypair

MB = 1e6
GOAL_RATIO = 2.0
GOAL_RSS_BYTES = 100 * MB
HASH = (
    "import hashlib, sys\n"
    "digest = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    while block := f.read(1 << 20):\n"
    "        digest.update(block)\n"
    "print(digest.hexdigest())\n"
)


def commands(model: Path, tmp: Path, keys: dict[str, Path], embedded: bool) -> dict[str, tuple[list[str], Path]]:
    """Each measured command and the file it writes (``none`` for the checks, which write nothing)."""
    engine, none = [sys.executable, "-m", "engine"], tmp / "none"
    sig, enc, dec = tmp / "model.sig", tmp / "model.enc", tmp / "model.dec"
    rows = {
        "hashlib.sha256 (baseline)": ([sys.executable, "-c", HASH, str(model)], none),
        "engine start-up (python -c 'import engine.cli')": ([sys.executable, "-c", "import engine.cli"], none),
        "sign": ([*engine, "sign", str(model), "--key", str(keys["private"]), "--out", str(sig)], sig),
        "verify": ([*engine, "verify", str(model), "--key", str(keys["public"]), "--sig", str(sig)], none),
        "encrypt": ([*engine, "encrypt", str(model), "-o", str(enc), "--key-file", str(keys["aes"])], enc),
        "decrypt": ([*engine, "decrypt", str(enc), "-o", str(dec), "--key-file", str(keys["aes"])], dec),
    }
    if embedded:
        signed = tmp / "model.signed.tflite"
        rows["sign --embed"] = ([*engine, "sign", str(model), "--key", str(keys["private"]), "--embed", "--out",
                                 str(signed)], signed)  # fmt: skip
        rows["verify (embedded)"] = ([*engine, "verify", str(signed), "--key", str(keys["public"])], none)
        theirs = [sys.executable, "-m", "model_signing"]
        ms_sig = tmp / "model_signing.sig"
        rows["model_signing sign key"] = ([*theirs, "sign", "key", str(model), "--signature", str(ms_sig),
                                           "--private_key", str(keys["private"])], ms_sig)  # fmt: skip
        rows["model_signing verify key"] = ([*theirs, "verify", "key", str(model), "--signature", str(ms_sig),
                                             "--public_key", str(keys["public"])], none)  # fmt: skip
    return rows


def measure(label: str, model: Path, tmp: Path, keys: dict[str, Path], runs: int, embedded: bool) -> list[dict]:
    """Interleaved rounds of every command on ``model``: one row per command (median wall, CPU and peak RSS)."""
    plan = commands(model, tmp, keys, embedded)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    for round_ in range(runs + 1):
        for name, (command, output) in plan.items():
            os.sync()  # no dirty pages left by the previous command to throttle this one's writes
            done = run_process(command, output, logs)  # its output removed first: each run writes a new file
            if done["error"]:
                raise RuntimeError(f"{name} failed: {done['error']}")
            if round_:
                samples[name].append(done)
    baseline = samples["hashlib.sha256 (baseline)"]
    base_wall, base_cpu = (statistics.median(s[key] for s in baseline) for key in ("wall_s", "cpu_s"))
    rows = []
    for name, runs_of in samples.items():
        wall, cpu = (statistics.median(s[key] for s in runs_of) for key in ("wall_s", "cpu_s"))
        rows.append({
            "file": label, "file_bytes": model.stat().st_size, "command": name, "wall_s": wall, "cpu_s": cpu,
            "peak_rss_bytes": max(s["peak_rss_bytes"] for s in runs_of), "to_baseline": wall / base_wall,
            "cpu_to_baseline": cpu / base_cpu, "goal": name in ("sign", "verify", "encrypt", "decrypt"),
        })  # fmt: skip
    print(f"measured {label}", file=sys.stderr)
    return rows


def repeat_to(source: Path, target: Path, size: int) -> None:
    """A file of ``size`` bytes made of ``source``'s bytes repeated (written in 64 MiB blocks)."""
    data = source.read_bytes()
    with target.open("wb") as f:
        written = 0
        while written < size:
            block = data[: min(len(data), size - written, 64 << 20)]
            f.write(block)
            written += len(block)


def markdown(rows: list[dict[str, Any]], runs: int) -> str:
    header = ["file", "MB", "command", "wall s", "x baseline", "CPU s", "CPU x baseline", "peak RSS MB", "goal"]
    table = []
    for r in rows:
        met = r["to_baseline"] <= GOAL_RATIO and r["peak_rss_bytes"] <= GOAL_RSS_BYTES
        goal = ("met" if met else "NOT met") if r["goal"] else ""
        table.append([r["file"], f"{r['file_bytes'] / MB:.1f}", r["command"], f"{r['wall_s']:.2f}",
                      f"{r['to_baseline']:.2f}", f"{r['cpu_s']:.2f}", f"{r['cpu_to_baseline']:.2f}",
                      f"{r['peak_rss_bytes'] / MB:.1f}",
                      goal])  # fmt: skip
    missed = [f"{r['command']} on {r['file']}" for r in rows if r["goal"] and not
              (r["to_baseline"] <= GOAL_RATIO and r["peak_rss_bytes"] <= GOAL_RSS_BYTES)]  # fmt: skip
    return (
        f"# Signing and encryption: whole process, median of {runs} interleaved rounds after a warm-up; "
        "MB = 10^6 bytes\n\n"
        + markdown_table(header, table)
        + f"\n\nGoal for sign, verify, encrypt and decrypt: at most {GOAL_RATIO:g}x the baseline's time with peak RSS "
        f"at most {GOAL_RSS_BYTES / MB:.0f} MB: {'not met by ' + ', '.join(missed) if missed else 'met on every file'} "
        "(wall time; the CPU columns are less sensitive to other processes competing for the CPUs)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "secure")
    parser.add_argument("--runs", type=int, default=3, help="measured rounds per file (default 3)")
    parser.add_argument("--sizes-gb", type=float, nargs="*", default=[1.07], metavar="GB",
                        help="larger files to repeat the streamed commands on (default 1.07)")  # fmt: skip
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(), "settings": vars(args) | {"json": str(args.json)}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="secure-bench-") as name:
        tmp = Path(name)
        private, public = generate_keypair(tmp / "signing.pem")
        keys = {"private": private, "public": public, "aes": generate_key(tmp / "model.key")}
        model = tmp / f"{LARGE_NAME}.tflite"
        write_model(build_large_model(), model)
        rows = measure(LARGE_NAME, model, tmp, keys, args.runs, embedded=True)
        for gigabytes in args.sizes_gb:
            big = tmp / f"repeated_{gigabytes:g}GB.bin"
            repeat_to(model, big, int(gigabytes * 1e9))
            rows += measure(big.name, big, tmp, keys, args.runs, embedded=False)
            big.unlink()
    results["rows"] = rows
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(rows, args.runs), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
