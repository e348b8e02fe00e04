"""``python -m engine analyze`` / ``engine.analyze``: how much each weight or op costs at the model outputs.

For every unit (engine.accuracy.candidates: a weight in the weight modes, an op with an integer kernel in the
full-integer modes, its output activation included), two candidates are built with ``engine.compress`` and judged
on the held-out samples in the default runtime against the float model:

* **alone**: only this unit quantized, everything else float: the harm it does by itself;
* **all but it**: every unit quantized except this one, left float: what leaving it float buys back.

Rows are sorted by harm (the lowest "alone" SQNR first; with labels, the largest accuracy drop first).  The
summary says how much of the summed isolated noise the worst k units carry and measures the model with those k
left float.  Cost: 2 x units + 1 + len(K_SUMMARY) candidates, each run on every held-out sample (stated).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.accuracy.candidates import (
    DEFAULT_HOLDOUT,
    Builder,
    Judge,
    anchored,
    integer_units,
    ladder_for,
    load_data,
    weight_units,
)
from engine.errors import EngineError
from engine.format.ir import Model
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from engine.progress import track
from engine.recipe import Recipe, is_full_integer
from engine.report import json_safe

K_SUMMARY = (1, 3, 5, 10)


@dataclass
class Row:
    unit: str
    op: str
    bytes_quantized: int
    bytes_float: int
    alone_sqnr_db: float
    all_but_sqnr_db: float
    noise_share: float
    alone_drop: float | None = None
    all_but_drop: float | None = None


@dataclass
class Sensitivity:
    """What ``analyze`` returns: one row per unit sorted by harm, the uniform model's figures, and the summary."""

    model: str
    mode: str
    unit_kind: str
    data: str
    held_out_samples: int
    rows: list[Row] = field(default_factory=list)
    uniform_sqnr_db: float = math.nan
    uniform_drop: float | None = None
    float_accuracy: float | None = None
    worst_k: list[dict[str, Any]] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def format_text(self, limit: int | None = 30) -> str:
        drops = self.float_accuracy is not None
        lines = [
            f"sensitivity of {self.model} to {self.mode}, per {self.unit_kind}, at the model outputs in the default "
            f"runtime (XNNPACK); {self.data}",
            f"uniform {self.mode}: worst output SQNR {_db(self.uniform_sqnr_db)} dB"
            + (f", accuracy drop {self.uniform_drop:.2f} points (float top-1 {100 * self.float_accuracy:.2f}%)"
               if drops and self.uniform_drop is not None and self.float_accuracy is not None else ""),
            "",
        ]  # fmt: skip
        header = f"{'#':>3} {'alone dB':>9} {'all-but dB':>10} {'noise %':>8}"
        header += f" {'alone drop':>10} {'all-but drop':>12}" if drops else ""
        header += f" {'bytes q/float':>17}  {self.unit_kind} (op)"
        lines += [header, "-" * len(header)]
        shown = self.rows if limit is None else self.rows[:limit]
        for i, r in enumerate(shown, 1):
            line = f"{i:>3} {_db(r.alone_sqnr_db):>9} {_db(r.all_but_sqnr_db):>10} {100 * r.noise_share:>7.1f}%"
            if drops:
                line += f" {_pts(r.alone_drop):>10} {_pts(r.all_but_drop):>12}"
            line += f" {f'{r.bytes_quantized:,}/{r.bytes_float:,}':>17}  {r.unit} ({r.op})"
            lines.append(line)
        if len(self.rows) > len(shown):
            lines.append(f"... {len(self.rows) - len(shown)} more (--json has them all)")
        if self.worst_k:
            lines.append("")
            for w in self.worst_k:
                text = (
                    f"worst {w['k']}: {100 * w['noise_share']:.1f}% of the summed isolated noise; left float, the rest "
                    f"{self.mode}: {_db(w['sqnr_db'])} dB"
                )
                if w.get("drop") is not None:
                    text += f", drop {w['drop']:.2f} points"
                lines.append(text)
        lines.append(
            f"cost: {self.runs} candidates x {self.held_out_samples} samples = {self.runs * self.held_out_samples} "
            f"inferences, {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else str(value)


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def analyze(
    model_or_path: Model | str | os.PathLike[str],
    calibration: Any,
    *,
    quantize: str = "int8",
    labels: Any = None,
    recipe: Recipe | dict[str, Any] | str | os.PathLike[str] | None = None,
    holdout: float | int = DEFAULT_HOLDOUT,
    **options: Any,
) -> Sensitivity:
    """Per-unit sensitivity of ``model_or_path`` to ``quantize`` (see the module docstring).  ``calibration`` is
    the sample data (the ``compress`` format; full-integer modes calibrate on a part of it and every mode judges
    on the held-out rest), ``labels`` one class per sample, ``recipe``/``options`` the other compress options."""
    from engine.api import _recipe

    start = time.perf_counter()
    if isinstance(model_or_path, Model):
        source, label = bytes(model_to_bytes(model_or_path)), "the model"
    else:
        path = os.fspath(model_or_path)
        if not os.path.isfile(path):
            raise EngineError(f"{path}: file not found")
        with open(path, "rb") as f:
            source, label = f.read(), os.path.basename(path)
    base = _recipe(recipe, None, {**options, "quantize": quantize})
    ladder = ladder_for(quantize, "analyze")
    full_integer = is_full_integer(quantize)
    fitted = full_integer or base.fits_to_data()
    data = load_data(read_model(source), calibration, labels, holdout, fitted, "analyze")
    judge = Judge(source, data)
    if labels is not None:
        judge.check_labels()
    builder = Builder(source, base, (ladder[0], None), data.calibration)
    if full_integer:
        uniform_model, _ = builder.build(base)
        units = integer_units(builder, uniform_model)
        uniform = judge.measure(bytes(model_to_bytes(uniform_model)))
    else:
        units, _ = weight_units(builder)
        uniform = judge.measure(builder.candidate(base))
    if not units:
        raise EngineError(f"{quantize} changes nothing in {label}: no weight or op to analyze")
    alone, all_but = [], []
    for unit in track(units, f"analyzing {len(units)} {'op' if full_integer else 'weight'}s"):
        only = builder.recipe_for({}, exclude=[f"^(?!{anchored(unit.name)[1:-1]}$)"])
        # Judged and dropped: float ops may keep decoded constants (the same outputs, a faster interpreter build).
        alone.append(judge.measure(builder.candidate(only, keep_decoded=True)))
        all_but.append(judge.measure(builder.candidate(builder.recipe_for({unit.name: 1}), keep_decoded=True)))
    harm = np.array([float(np.mean(np.where(np.isfinite(m.noise), m.noise, 1e6))) for m in alone])
    total = float(harm.sum()) or 1.0
    rows = [
        Row(u.name, u.op, u.bytes[0], u.bytes[-1], a.sqnr_db, b.sqnr_db, float(h / total),
            judge.drop_points(a), judge.drop_points(b))
        for u, a, b, h in zip(units, alone, all_but, harm, strict=True)
    ]  # fmt: skip
    if labels is not None:
        rows.sort(key=lambda r: (-(r.alone_drop or 0.0), r.alone_sqnr_db))
    else:
        rows.sort(key=lambda r: (r.alone_sqnr_db, -r.noise_share))
    result = Sensitivity(
        label,
        quantize,
        "op" if full_integer else "weight",
        data.describe(),
        len(data.held_out),
        rows,
        uniform.sqnr_db,
        judge.drop_points(uniform),
        judge.float_accuracy,
    )
    for k in K_SUMMARY:
        if k >= len(rows):
            break
        worst = {r.unit: 1 for r in rows[:k]}
        m = judge.measure(builder.candidate(builder.recipe_for(worst), keep_decoded=True))
        share = sum(r.noise_share for r in rows[:k])
        result.worst_k.append({"k": k, "noise_share": share, "sqnr_db": m.sqnr_db, "drop": judge.drop_points(m)})
    result.runs = judge.runs
    result.seconds = time.perf_counter() - start
    return result
