"""Automatic mixed precision under a budget: ``compress --target-sqnr DB`` / ``--max-accuracy-drop POINTS --labels
Y`` (``engine.compress(..., target_sqnr=..., max_accuracy_drop=..., labels=...)``).

The smallest model (or, with ``optimize="latency"``, the fastest of the search's finalists, timed) whose outputs,
on held-out samples in the default runtime, stay within the budget of the float model's.  The steps:

1. **Uniform.**  Every unit on the requested rung, judged (engine.accuracy.candidates: split, judge, units,
   ladders).  If it meets the budget, it is the answer.  In a full-integer mode where the user left ``equalize``
   unset, the uniform model with activation equalization (engine/passes/full_integer/smooth.py) is judged too,
   and when it meets the budget it is the answer (the digits attention classifier: int8 then meets a 0.5-point
   budget as it is, where the plain search ends at int16x8).
2. **Ranking.**  Each unit's output noise in isolation: only it on the first rung, every other one float.
   Noise powers from independent rounding errors add, so the noise of any assignment is predicted as the sum of
   its units' noises, scaled by how far the uniform model's measured noise is from the sum of the isolated ones
   (interactions).  Higher rungs of the weight ladders are extrapolated from the isolated noise by the ratio of
   the weight's own quantization noise on each rung, which the passes report for every weight (one uniform run
   per rung), float being noise-free.  With several integer rungs (weight-int4, weight-int8, dynamic-int4) each
   unit is measured alone, one run per unit: its own figure decides its rung.  With two (int8: integer or a
   float island; float16; ...) only the units the answer leaves on the first rung decide it, and the isolated
   noises come by group testing (engine.accuracy.ranking): groups of up to 16 neighbouring units (ops in graph
   order) are judged together and a group's noise is shared among its members (by the weight's own quantization
   noise where there is one, else equally); then the units the answer hangs on most are measured alone: the
   units holding three quarters of the bytes at stake (float against first rung) and the last 4 the predicted
   answer (step 4's first prefix) promotes, of the units whose rung changes the bytes, 8 at a time, most bytes
   first, the prediction redone after each batch until it leaves no such unit estimated.  The predicted answer's
   noise is the sum of the units it leaves on the first rung, so where it splits a group still known only
   together, or keeps one whose noise is a difference (sub-additive noise can take that to zero), that group's
   first-rung part is measured as one candidate (not one per member: iris_landmark at 35 dB ranked in 53
   candidates instead of 89, the same answer), until the answer leaves only measured groups on the first rung.
   The rest keep estimates: a group's noise minus its members measured alone, shared (never below their share of
   the last candidate measured with them, for the units whose rung changes no bytes: over-estimated they are
   promoted early at no cost, under-estimated their noise would be missing from the prediction).  Ranking
   candidates are judged on at most 8 of the held-out samples (evenly spaced); every other step judges on all.
3. **Promotion path.**  Greedy: at each step the promotion (one unit, one rung up) that removes the most predicted
   noise from the worst output and sample per byte it adds, until every unit is float.  This orders all
   promotions; the answer is a prefix.
4. **Prefix search.**  The predicted prefix is measured; from there, each step a real candidate judged on the
   held-out samples, the prediction corrected by what was measured guides the next prefix inside the bracket of
   the longest failing and the shortest passing prefix (`shortest_passing_prefix`): two runs when the prediction
   is right, plain galloping and bisection when the guidance stalls or the budget is an accuracy drop.
5. **Demotion.**  A few of the largest promotions are tried one rung back down, kept down if the budget still
   holds.  Then, with several integer rungs, each higher rung short of float applied to every unit (uniform
   weight-int8, float16, ...) is judged where its bytes are below the answer's, the lowest first, and the first
   that meets the budget is taken and demoted in turn: the greedy path, guided by noise that does not add up,
   can end above it (pose_detection, weight-int4 with gptq at 25 dB, before GPTQ kept pruned weights sparse:
   1,966,144 bytes, where every weight on weight-int8 met the budget in 1,908,640).
6. **Alternatives.**  For int8, the uniform int16x8 model is tried when the int8 answer needed float islands, and
   taken with ``optimize="size"`` when it meets the budget in fewer bytes (never for latency: XNNPACK has no 16x8
   kernels).  It is judged only when smaller than the int8 answer, and for an SQNR budget first on 2 held-out
   samples: more than 6 dB below the target there, not on the rest (the builtin 16x8 kernels it runs in are
   15-42x slower than the int8 candidates).  With ``optimize="latency"`` the finalists that meet the budget are
   timed together (default runtime, one thread, interleaved, median) and the fastest is taken.
7. **Final.**  The chosen assignment is compressed once more as the user asked (written to ``output``), re-measured
   on the held-out samples, and reported against the budget; ``save_recipe`` writes it as a recipe (and, for
   full-integer modes, the calibration part beside it) from which ``compress`` reproduces the same bytes.

A budget that the search cannot meet (an integer interface caps the output SQNR; the run limit ``max_runs`` was
reached) is reported with the best model found and ``met = False``: the model is still written, and the command
line exits with code 4.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.accuracy.candidates import (
    DEFAULT_HOLDOUT,
    Builder,
    Judge,
    Measurement,
    Unit,
    anchored,
    integer_units,
    ladder_for,
    load_data,
    noise_db,
    rung_name,
    weight_units,
)
from engine.accuracy.ranking import GROUP, GroupTesting
from engine.errors import EngineError
from engine.files import same_file
from engine.format.ir import Model
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from engine.progress import track
from engine.recipe import DEFAULT_GRADUAL_STAGES, Recipe, is_full_integer
from engine.report import json_safe

OPTIMIZE = ("size", "latency")
DEFAULT_MAX_RUNS = 600
_DEMOTIONS = 4
_MIN_COST = 16  # bytes: a promotion that adds none (an op without constants) still costs boundaries
_LATENCY_RUNS = 20
_ACCURACY_TARGET_DB = 30.0  # an accuracy budget's stand-in SQNR where predictions need one
_BAND = 4  # the units promoted last before the predicted answer, measured alone by the ranking
_BATCH = 8  # units the ranking measures alone before it predicts again
_STAKE_SHARE = 0.75  # the units holding this share of the bytes at stake, measured alone by the ranking
_RANKING_SAMPLES = 8  # held-out samples judging each ranking candidate, at most
_SCREEN_SAMPLES = 2  # held-out samples judging the int16x8 alternative first
_SCREEN_MARGIN_DB = 6.0  # below the target by more than this on those, it is not judged on the rest


@dataclass(frozen=True)
class Budget:
    target_sqnr_db: float | None = None
    max_accuracy_drop: float | None = None

    def describe(self) -> str:
        parts = []
        if self.target_sqnr_db is not None:
            parts.append(f"worst output SQNR >= {self.target_sqnr_db:g} dB")
        if self.max_accuracy_drop is not None:
            parts.append(f"top-1 accuracy drop <= {self.max_accuracy_drop:g} points")
        return " and ".join(parts)


@dataclass
class Step:
    """One candidate judged during the search."""

    what: str
    promotions: int
    sqnr_db: float
    accuracy_drop: float | None
    bytes: int
    passed: bool


@dataclass
class SearchReport:
    """What the budgeted search did and what it measured; ``met`` says whether the final model keeps the budget."""

    budget: dict[str, Any]
    mode: str
    ladder: list[str]
    optimize: str
    unit_kind: str
    units: int
    data: str
    calibration_samples: int
    held_out_samples: int
    float_accuracy: float | None = None
    uniform: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    met: bool = False
    chosen: str = "mixed"
    assignment: dict[str, str] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: int = 0
    ranking_runs: int = 0
    ranking_samples: int = 0
    compress_runs: int = 0
    seconds: float = 0.0
    build_seconds: float = 0.0
    judge_seconds: float = 0.0
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return json_safe(asdict(self))

    def format_text(self) -> str:
        lines = [f"accuracy budget: {self.budget['describe']} ({self.optimize}-optimized, {self.mode} family)"]
        lines.append(f"  data: {self.data}")
        if self.float_accuracy is not None:
            lines.append(f"  float model top-1 on the held-out samples: {100 * self.float_accuracy:.2f}%")
        lines.append(f"  uniform {self.mode}: {_figures(self.uniform)}")
        lines.append(
            f"  search: {self.units} {self.unit_kind}s, ladder {' -> '.join(self.ladder)}; {self.runs} candidates "
            f"judged x {self.held_out_samples} samples = {self.runs * self.held_out_samples} inferences, "
            f"{self.compress_runs} compress runs, {self.seconds:.1f} s ({self.build_seconds:.1f} s building, "
            f"{self.judge_seconds:.1f} s judging)"
        )
        if self.ranking:
            alone = sum(1 for r in self.ranking if r["measured_alone"])
            lines.append(
                f"  ranking: {self.ranking_runs} candidates x {self.ranking_samples} samples for {self.units} "
                f"{self.unit_kind}s ({alone} measured alone, {self.units - alone} estimated from their group's noise)"
            )
            worst = ", ".join(
                f"{r['unit']} {r['isolated_sqnr_db']:.1f} dB" + ("" if r["measured_alone"] else " (estimated)")
                for r in self.ranking[:5]
            )
            lines.append(f"  most harmful alone (output SQNR with only it on {self.ladder[0]}): {worst}")
        lines.append(f"  chosen: {self.chosen}")
        if self.decisions:
            lines.append(f"  decisions ({len(self.decisions)}):")
            for d in self.decisions[:20]:
                alone = d.get("isolated_sqnr_db")
                estimated = "" if d.get("isolated_measured_alone", True) else " (estimated)"
                alone_text = "" if alone is None else f"; alone on {d['from']} it gave {_db(alone)} dB{estimated}"
                lines.append(
                    f"    {d['unit']} ({d['op']}): {d['from']} -> {d['to']}, {d['bytes_delta']:+,} bytes"
                    f"{alone_text}; measured with it: {_db(d['measured_sqnr_db'])} dB"
                    + ("" if d.get("measured_drop") is None else f", drop {d['measured_drop']:.2f} points")
                )
            if len(self.decisions) > 20:
                lines.append(f"    ... {len(self.decisions) - 20} more (--report has them all)")
        for n in self.notes:
            lines.append(f"  note: {n}")
        verdict = "met" if self.met else "NOT MET (the best model found is written)"
        lines.append(f"  final, re-measured on the held-out samples: {_figures(self.final)}: budget {verdict}")
        return "\n".join(lines)


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if math.isfinite(value) else str(value)


def _figures(f: dict[str, Any]) -> str:
    if not f:
        return "-"
    text = f"worst output SQNR {_db(f.get('sqnr_db'))} dB"
    if f.get("accuracy_drop") is not None:
        text += f", accuracy drop {f['accuracy_drop']:.2f} points"
    if f.get("bytes"):
        text += f", {f['bytes']:,} bytes"
    if f.get("error"):
        text += f" (fails in the default runtime: {f['error']})"
    return text


# ------------------------------------------------------------------------------------------------ search


class _Search:
    def __init__(
        self,
        builder: Builder,
        judge: Judge,
        budget: Budget,
        units: list[Unit],
        max_runs: int,
    ) -> None:
        self.builder, self.judge, self.budget, self.units = builder, judge, budget, units
        self.max_runs = max_runs
        self.levels = len(builder.ladder)
        self.steps: list[Step] = []
        self.cache: dict[tuple[int, ...], tuple[Measurement, bool]] = {}
        self.best: tuple[tuple[int, ...], Measurement] | None = None
        self.target_db = _ACCURACY_TARGET_DB if budget.target_sqnr_db is None else budget.target_sqnr_db
        self.uniform: Measurement | None = None  # the uniform model, judged (step 1)
        self.testing: GroupTesting | None = None  # the ranking's group testing (step 2)
        self.isolated: np.ndarray | None = None  # [units, outputs] isolated noise, measured or estimated
        held = len(judge.data.held_out)
        self.ranking_samples = None if held <= _RANKING_SAMPLES else _evenly_spaced(held, _RANKING_SAMPLES)

    def passes(self, m: Measurement) -> bool:
        if m.error is not None:
            return False
        if self.budget.target_sqnr_db is not None and not m.sqnr_db >= self.budget.target_sqnr_db:
            return False
        drop = self.judge.drop_points(m)
        return not (
            self.budget.max_accuracy_drop is not None
            and not (drop is not None and drop <= self.budget.max_accuracy_drop + 1e-9)
        )

    def score(self, m: Measurement) -> tuple[float, float]:
        """Higher is better: for the best model when nothing meets the budget."""
        drop = self.judge.drop_points(m)
        return (-(drop if drop is not None else 0.0), m.sqnr_db if math.isfinite(m.sqnr_db) else -1e9)

    def judge_assignment(self, levels: tuple[int, ...], what: str, promotions: int) -> tuple[Measurement, bool]:
        if levels in self.cache:
            return self.cache[levels]
        if self.judge.runs >= self.max_runs:
            raise _OutOfRuns
        recipe = self.builder.recipe_for(self._assignment(levels))
        m = self.judge.measure(self.builder.candidate(recipe))
        ok = self.passes(m)
        self.cache[levels] = (m, ok)
        self.steps.append(Step(what, promotions, m.sqnr_db, self.judge.drop_points(m), m.bytes, ok))
        if self.best is None or self.score(m) > self.score(self.best[1]):
            self.best = (levels, m)
        return m, ok

    def _assignment(self, levels: tuple[int, ...]) -> dict[str, int]:
        return {u.name: level for u, level in zip(self.units, levels, strict=True)}

    # ------------------------------------------------------------------ noise model

    def rank(self) -> tuple[np.ndarray, np.ndarray]:
        """(rho, scale): [units, rungs, outputs] predicted relative noise of each unit on each rung, the first rung
        the unit's noise with only it quantized (by group testing: engine.accuracy.ranking), and the per-output
        factor from the sum of the isolated noises to the uniform model's measured noise."""
        group = GROUP if self.levels == 2 else 1  # several integer rungs: each unit's own figure decides its rung
        # Units whose rung changes no bytes are never measured alone (no decision hangs on them): over-estimating
        # them only promotes them early, at no cost, where under-estimating them hides noise from the prediction.
        cautious = [_stake(u) == 0 for u in self.units]
        proxy = [_proxy(u) for u in self.units]
        testing = GroupTesting(len(self.units), self._group_noise, proxy, group=group, cautious=cautious)
        self.testing = testing
        testing.start(lambda groups: track(groups, f"ranking {len(self.units)} units in {len(groups)} candidates"))
        while True:
            self.isolated = testing.noise()
            rho = self._rho(self.isolated)
            scale = self.interaction_scale(rho)
            order = self.path(rho, scale)
            k = self.predicted_prefix(order, rho, scale)
            deciding = [i for i in self._deciding(order, k) if not testing.alone(i)]
            if deciding:
                # A batch at a time, the most bytes at stake first: the prediction redone after each.
                deciding.sort(key=lambda i: _stake(self.units[i]), reverse=True)
                testing.isolate(deciding[:_BATCH])
                continue
            # The predicted answer's noise is the sum of what it leaves on the first rung: where it splits a group
            # known only together, or keeps one known only as a difference (which noise that does not add up
            # can take to zero), that part's sum is measured (one candidate, not one per member).
            levels = self.levels_after(order, k)
            parts = []
            for group, measured in testing.groups():
                kept = [i for i in group if levels[i] == 0]
                if kept and (len(kept) < len(group) or not measured):
                    parts.append(kept)
            if not parts:
                return rho, scale
            testing.separate(parts)

    def _group_noise(self, members: list[int]) -> np.ndarray:
        """The noise of the candidate with only ``members`` on the first rung, on the ranking's samples."""
        if self.judge.runs >= self.max_runs:
            raise _OutOfRuns
        names = "|".join(anchored(self.units[i].name)[1:-1] for i in members)
        recipe = self.builder.recipe_for({}, exclude=[f"^(?!(?:{names})$)"])
        # Judged and dropped: float ops keep decoded (float32) constants, the same outputs from an interpreter that
        # builds several times faster than with float16 constants behind DEQUANTIZE (engine.api.compress).
        return self.judge.measure(self.builder.candidate(recipe, keep_decoded=True), self.ranking_samples).noise

    def _rho(self, isolated: np.ndarray) -> np.ndarray:
        """Every rung's predicted noise from the first rung's (a refused candidate's infinite noise counts as 1e6)."""
        rho = np.zeros((len(self.units), self.levels, isolated.shape[1]))
        rho[:, 0] = np.where(np.isfinite(isolated), isolated, 1e6)
        for i, unit in enumerate(self.units):
            for level in range(1, self.levels):
                if self.builder.ladder[level] is None:
                    continue
                w0, wl = (unit.weight_sqnr_db[0], unit.weight_sqnr_db[level]) if unit.weight_sqnr_db else (None, None)
                if w0 is None or wl is None or not (math.isfinite(w0) and math.isfinite(wl)):
                    rho[i, level] = rho[i, 0] * 10 ** (-2.4 * level)  # no weight figures: ~24 dB a rung
                else:
                    rho[i, level] = rho[i, 0] * 10 ** ((w0 - wl) / 10)
        return rho

    def interaction_scale(self, rho: np.ndarray) -> np.ndarray:
        """Per output: the uniform model's measured noise over the sum of the isolated noises (clipped)."""
        assert self.uniform is not None
        predicted_uniform = rho[:, 0].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(predicted_uniform > 0, self.uniform.noise / predicted_uniform, 1.0)
        return np.clip(np.nan_to_num(ratio, nan=1.0, posinf=100.0), 0.01, 100.0)

    def _deciding(self, order: list[tuple[int, int]], k: int) -> list[int]:
        """The units the answer (the first ``k`` promotions of ``order``) hangs on most, of those whose rung
        changes the bytes: the last ``_BAND`` it promotes and those holding ``_STAKE_SHARE`` of all the bytes at
        stake."""
        stakes = [_stake(u) for u in self.units]
        last: list[int] = []
        for i, _ in reversed(order[:k]):
            if len(last) == _BAND:
                break
            if stakes[i] and i not in last:
                last.append(i)
        heavy: list[int] = []
        total, covered = sum(stakes), 0
        for i in sorted(range(len(stakes)), key=lambda i: stakes[i], reverse=True):
            if covered >= _STAKE_SHARE * total:
                break
            heavy.append(i)
            covered += stakes[i]
        return list(dict.fromkeys(last + heavy))

    def path(self, rho: np.ndarray, scale: np.ndarray) -> list[tuple[int, int]]:
        """Every promotion (unit index, new rung), greedily by predicted worst-cell noise removed per byte added."""
        n = len(self.units)
        levels = [0] * n
        total = scale * rho[np.arange(n), 0].sum(axis=0)
        order = []
        while True:
            movable = [i for i in range(n) if levels[i] < self.levels - 1]
            if not movable:
                break
            worst = np.unravel_index(int(np.argmax(total)), total.shape)
            best, best_value = None, -np.inf
            for i in movable:
                lv = levels[i]
                gain = scale[worst] * (rho[i, lv][worst] - rho[i, lv + 1][worst])
                cost = max(self.units[i].bytes[lv + 1] - self.units[i].bytes[lv], 0) + _MIN_COST
                value = gain / cost
                if gain <= 0:  # nothing to gain at the worst cell: rank by what it removes everywhere
                    value = -1.0 / (1.0 + float(np.sum(rho[i, lv] - rho[i, lv + 1])) / cost)
                if value > best_value:
                    best, best_value = i, value
            assert best is not None
            total = total - scale * (rho[best, levels[best]] - rho[best, levels[best] + 1])
            levels[best] += 1
            order.append((best, levels[best]))
        return order

    def levels_after(self, order: list[tuple[int, int]], k: int) -> tuple[int, ...]:
        levels = [0] * len(self.units)
        for i, level in order[:k]:
            levels[i] = max(levels[i], level)
        return tuple(levels)

    def predicted_db(self, rho: np.ndarray, scale: np.ndarray, levels: tuple[int, ...]) -> float:
        total = scale * rho[np.arange(len(self.units)), list(levels)].sum(axis=0)
        return noise_db(total)

    def predicted_prefix(self, order: list[tuple[int, int]], rho: np.ndarray, scale: np.ndarray) -> int:
        """The shortest prefix of ``order`` predicted to reach the target SQNR (for an accuracy budget, 30 dB);
        the whole path when none is."""
        levels = [0] * len(self.units)
        for k in range(len(order) + 1):
            if k:
                i, level = order[k - 1]
                levels[i] = max(levels[i], level)
            if self.predicted_db(rho, scale, tuple(levels)) >= self.target_db:
                return k
        return len(order)


def _stake(unit: Unit) -> int:
    """The bytes at stake in a unit's rung: float against the first rung."""
    return abs(unit.bytes[-1] - unit.bytes[0])


def _proxy(unit: Unit) -> float:
    """The ranking's split of a group's noise: the weight's own relative quantization noise on the first rung
    (NaN, unknown, for an op or a weight without the figure: equal shares)."""
    w0 = unit.weight_sqnr_db[0] if unit.weight_sqnr_db else None
    return math.nan if w0 is None or math.isnan(w0) else 10 ** (-w0 / 10)


class _OutOfRuns(Exception):
    pass


def budgeted_compress(
    model_or_path: Model | str | os.PathLike[str],
    recipe: Recipe | dict[str, Any] | str | os.PathLike[str] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    exclude: list[str] | None = None,
    calibration: Any = None,
    target_sqnr: float | None = None,
    max_accuracy_drop: float | None = None,
    labels: Any = None,
    optimize: str = "size",
    save_recipe: str | os.PathLike[str] | None = None,
    holdout: float | int = DEFAULT_HOLDOUT,
    max_runs: int = DEFAULT_MAX_RUNS,
    share_identical_buffers: bool = False,
    passes: Any = None,
    executor: Any = None,
    keep_decoded: bool = False,
    **options: Any,
) -> tuple[Model, Any]:
    """``engine.compress`` with a budget (see the module docstring); returns the final model and its ``Report``,
    whose ``search`` is the `SearchReport`."""
    from engine.api import _recipe, compress

    start = time.perf_counter()
    budget = _check_budget(target_sqnr, max_accuracy_drop, labels, optimize, max_runs)
    source_path = None if isinstance(model_or_path, Model) else Path(model_or_path)
    if source_path is not None and output is not None and same_file(source_path, output):
        raise EngineError(f"output={str(output)!r} is the input file; the input is never overwritten")
    base = _recipe(recipe, exclude, options)
    mode = base.options.get("quantize")
    ladder = ladder_for(mode, "an accuracy budget")
    full_integer = is_full_integer(mode)
    if source_path is not None:
        if not source_path.is_file():
            raise EngineError(f"{source_path}: file not found")
        source = source_path.read_bytes()
    else:
        assert isinstance(model_or_path, Model)
        source = bytes(model_to_bytes(model_or_path))
    float_model = read_model(source)
    fitted = full_integer or base.fits_to_data()
    data = load_data(float_model, calibration, labels, holdout, fitted, "an accuracy budget")
    judge = Judge(source, data)
    if labels is not None:
        judge.check_labels()
    compress_options = {
        k: v for k, v in (("passes", passes), ("executor", executor), ("keep_decoded", keep_decoded or None)) if v
    }
    builder = Builder(source, base, ladder, data.calibration, compress_options)

    if full_integer:
        uniform_model, _ = builder.build(base)
        units = integer_units(builder, uniform_model)
        uniform_bytes = bytes(model_to_bytes(uniform_model))
    else:
        units, _ = weight_units(builder)
        uniform_bytes = builder.candidate(base)
    search = _Search(builder, judge, budget, units, max_runs)
    zero = tuple(0 for _ in units)
    plain = m0 = judge.measure(uniform_bytes)
    ok0 = search.passes(m0)
    search.steps.append(Step(f"uniform {mode}", 0, m0.sqnr_db, judge.drop_points(m0), m0.bytes, ok0))
    equalization = None
    if full_integer and base.options.get("equalize") is None and not ok0:
        equalization = _equalization(builder, search, m0, uniform_bytes)
        if equalization.taken:
            base, m0, ok0 = builder.recipe, equalization.measured, search.passes(equalization.measured)
    search.uniform = m0
    search.cache[zero] = (m0, ok0)
    search.best = (zero, m0)
    report = SearchReport(
        budget={
            "target_sqnr_db": budget.target_sqnr_db,
            "max_accuracy_drop": budget.max_accuracy_drop,
            "describe": budget.describe(),
        },
        mode=str(mode),
        ladder=[rung_name(r) for r in ladder],
        optimize=optimize,
        unit_kind="op" if full_integer else "weight",
        units=len(units),
        data=data.describe(),
        calibration_samples=data.calibration_count,
        held_out_samples=len(data.held_out),
        float_accuracy=judge.float_accuracy,
        uniform=_measured(judge, plain),
    )
    if equalization is not None:
        report.notes.append(equalization.note(judge))
    chosen = zero
    order: list[tuple[int, int]] = []
    first_with: dict[int, int] = {}
    out_of_runs = False
    if not ok0 and units:
        try:
            rho, scale = search.rank()
            predicted_uniform = rho[:, 0].sum(axis=0)
            report.notes.append(
                f"additivity: the {len(units)} isolated noises add up to {noise_db(predicted_uniform):.1f} dB, "
                f"the uniform model measures {m0.sqnr_db:.1f} dB (predictions are scaled by the difference, per "
                "output)"
            )
            report.ranking = _ranking(search)
            order = search.path(rho, scale)
            chosen, first_with = _prefix_search(search, order, rho, scale)
            if search.cache[chosen][1]:
                chosen = _demote(search, chosen, rho, scale)
            chosen = _uniform_rung(search, chosen, rho, scale, report)
        except _OutOfRuns:
            out_of_runs = True
            report.notes.append(f"the run limit (max_runs={max_runs}) was reached; the best model found is used")
    final_ok = search.cache[chosen][1] if chosen in search.cache else False
    if not final_ok:
        assert search.best is not None
        chosen = search.best[0]
    alternative = None
    if full_integer and mode == "int8" and any(chosen) and not out_of_runs:
        alternative = _int16x8(builder, judge, search, report, optimize, chosen)
    if optimize == "latency" and search.cache[chosen][1] and not out_of_runs:
        chosen = _fastest(builder, judge, search, report, chosen, source)
    gradual = None
    if full_integer and alternative is None and not base.options.get("gradual") and not out_of_runs:
        gradual = _gradual(builder, judge, search, report, chosen)

    final_recipe = (
        base.with_options(quantize="int16x8")
        if alternative is not None
        else gradual
        if gradual is not None
        else builder.recipe_for(search._assignment(chosen))
    )
    if alternative is not None:
        report.chosen = "uniform int16x8 (meets the budget in fewer bytes than the int8 assignment)"
    else:
        promoted = sum(1 for level in chosen if level)
        report.chosen = (
            f"uniform {mode}{' with activation equalization' if equalization and equalization.taken else ''} "
            "(meets the budget as it is)"
            if not promoted
            else f"{promoted} of {len(units)} {report.unit_kind}s above {mode}: "
            + ", ".join(f"{n} x {rung_name(ladder[lv])}" for lv, n in _counts(chosen).items() if lv)
        )
        report.assignment = {u.name: rung_name(ladder[level]) for u, level in zip(units, chosen, strict=True) if level}
        report.decisions = _decisions(search, order, chosen, first_with)

    final_options = {**compress_options, "output": output, "share_identical_buffers": share_identical_buffers}
    if data.calibration is not None:
        final_options["calibration"] = data.calibration
    final_source: Any = source_path if source_path is not None else read_model(source)
    model, final_report = compress(final_source, final_recipe, **final_options)
    final_bytes = Path(output).read_bytes() if output is not None else bytes(model_to_bytes(model))
    final = judge.measure(final_bytes)
    report.final = _measured(judge, final)
    report.met = search.passes(final)
    report.recipe = final_recipe.to_dict()
    if save_recipe is not None:
        final_recipe.save(save_recipe)
        if data.calibration is not None:
            np.savez(_calibration_path(save_recipe), **data.calibration)
            report.notes.append(
                f"the recipe reproduces the model with the calibration part it was fitted on: compress --recipe "
                f"{save_recipe} --calibration {_calibration_path(save_recipe)}"
            )
    report.steps = search.steps
    report.runs = judge.runs
    if search.testing is not None:
        report.ranking_runs = search.testing.runs
        report.ranking_samples = len(data.held_out) if search.ranking_samples is None else len(search.ranking_samples)
    report.compress_runs = builder.builds
    report.build_seconds = builder.seconds
    report.judge_seconds = judge.seconds
    report.seconds = time.perf_counter() - start
    final_report.search = report
    return model, final_report


def _calibration_path(recipe_path: str | os.PathLike[str]) -> Path:
    path = Path(recipe_path)
    return path.with_name(path.stem + ".calibration.npz")


def _counts(levels: tuple[int, ...]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for level in levels:
        counts[level] = counts.get(level, 0) + 1
    return dict(sorted(counts.items()))


def _measured(judge: Judge, m: Measurement) -> dict[str, Any]:
    return {
        "sqnr_db": m.sqnr_db,
        "output_sqnr_db": m.output_sqnr_db,
        "accuracy": m.accuracy,
        "accuracy_drop": judge.drop_points(m),
        "bytes": m.bytes,
        "error": m.error,
    }


def _check_budget(target_sqnr: Any, max_accuracy_drop: Any, labels: Any, optimize: Any, max_runs: Any) -> Budget:
    for name, value in (("target_sqnr", target_sqnr), ("max_accuracy_drop", max_accuracy_drop)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise EngineError(f"{name} must be a finite number, not {value!r}")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise EngineError(
            f"max_accuracy_drop is the accuracy points the model may lose, 0 or more, not {max_accuracy_drop!r}"
        )
    if target_sqnr is None and max_accuracy_drop is None:
        raise EngineError("a budget needs target_sqnr (--target-sqnr) or max_accuracy_drop (--max-accuracy-drop)")
    if labels is None and max_accuracy_drop is not None:
        raise EngineError("max_accuracy_drop (--max-accuracy-drop) needs labels (--labels Y): one class per sample")
    if labels is not None and max_accuracy_drop is None:
        raise EngineError("labels (--labels) do nothing without max_accuracy_drop (--max-accuracy-drop)")
    if optimize not in OPTIMIZE:
        raise EngineError(f"unknown optimize {optimize!r} (choose from {', '.join(OPTIMIZE)})")
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise EngineError(f"max_runs must be a positive integer, not {max_runs!r}")
    return Budget(None if target_sqnr is None else float(target_sqnr),
                  None if max_accuracy_drop is None else float(max_accuracy_drop))  # fmt: skip


def _prefix_search(
    search: _Search, order: list[tuple[int, int]], rho: np.ndarray, scale: np.ndarray
) -> tuple[tuple[int, ...], dict[int, int]]:
    """The shortest passing prefix of the promotion path (`shortest_passing_prefix`); also, per path step, the
    prefix length whose measurement first included it."""
    total = len(order)
    predicted = [search.predicted_db(rho, scale, search.levels_after(order, k)) for k in range(total + 1)]

    def check(k: int, how: str) -> tuple[bool, float]:
        m, ok = search.judge_assignment(search.levels_after(order, k), f"path prefix {k}/{total} ({how})", k)
        return ok, m.sqnr_db

    assert search.uniform is not None
    start = next((k for k, db in enumerate(predicted) if db >= search.target_db), total)  # as predicted_prefix
    best_k, judged = shortest_passing_prefix(
        predicted,
        start,  # an accuracy budget: where it reaches 30 dB
        check,
        search.budget.target_sqnr_db,
        uniform_db=search.uniform.sqnr_db,
    )
    first_with = {step: next((k for k in sorted(judged) if k > step), best_k) for step in range(best_k)}
    return search.levels_after(order, best_k), first_with


def shortest_passing_prefix(
    predicted_db: list[float],
    start: int,
    check: Callable[[int, str], tuple[bool, float]],
    target_db: float | None,
    uniform_db: float = -math.inf,
) -> tuple[int, list[int]]:
    """The shortest prefix ``k`` (1..len(predicted_db) - 1) that ``check(k, how)`` passes, assuming longer prefixes
    pass once one does; returns it (the longest when none passes) and the prefixes judged, in order.

    The first probe is ``start`` (the prediction).  With an SQNR target each next probe is *guided*: the shortest
    prefix in the open bracket whose predicted SQNR, corrected by the measured-minus-predicted offset interpolated
    between the prefixes judged so far (``uniform_db`` is prefix 0's), reaches the target.  An accurate prediction
    thus ends in two probes (the answer and one shorter), where bisection takes about log2(length) more.  A guided
    probe is followed by a plain one (doubling while nothing passes, else bisection) after two guided probes in a
    row that did not halve the bracket, so the count stays within a small multiple of bisection's.  Without a
    target (an accuracy budget) every probe is plain."""
    total = len(predicted_db) - 1
    offsets: dict[int, float] = {}
    if math.isfinite(uniform_db) and math.isfinite(predicted_db[0]):
        offsets[0] = uniform_db - predicted_db[0]
    judged: list[int] = []
    lo, hi = 0, None  # the longest failing and the shortest passing prefix so far (prefix 0 fails: the search ran)
    k, how = min(max(start, 1), total), "predicted"
    creeping = 0  # guided probes in a row that did not halve the bracket
    while True:
        width = (total if hi is None else hi) - lo
        ok, measured_db = check(k, how)
        judged.append(k)
        if math.isfinite(measured_db) and math.isfinite(predicted_db[k]):
            offsets[k] = measured_db - predicted_db[k]
        if ok:
            hi = k
        else:
            lo = k
        if (hi is not None and hi - lo <= 1) or (hi is None and lo == total):
            break
        upper = total if hi is None else hi - 1
        plain = min(total, lo + max(1, lo)) if hi is None else (lo + hi) // 2
        halved = 2 * ((total if hi is None else hi) - lo) <= width
        creeping = creeping + 1 if how == "guided" and not halved else 0
        if target_db is not None and creeping < 2:
            points = sorted(offsets)
            correction = np.interp(np.arange(lo + 1, upper + 1), points, [offsets[p] for p in points]) if points else 0
            corrected = np.asarray(predicted_db[lo + 1 : upper + 1]) + correction
            reaching = np.flatnonzero(corrected >= target_db)
            k, how = (lo + 1 + int(reaching[0]) if reaching.size else upper), "guided"
        else:
            k, how = plain, "galloping" if hi is None else "bisection"
    return (hi if hi is not None else total), judged


def _ranking(search: _Search) -> list[dict[str, Any]]:
    """The report's ranking: every unit's isolated noise, most harmful first, and how it is known."""
    assert search.isolated is not None and search.testing is not None
    rows = []
    for i, unit in enumerate(search.units):
        estimate = search.testing.estimate(i)
        rows.append(
            {
                "unit": unit.name,
                "op": unit.op,
                "isolated_sqnr_db": noise_db(search.isolated[i]),
                "isolated_noise": float(np.max(search.isolated[i])) if search.isolated.shape[1] else 0.0,
                "measured_alone": estimate.alone,
                "how": estimate.describe(),
            }
        )
    return sorted(rows, key=lambda r: r["isolated_sqnr_db"])


def _demote(search: _Search, levels: tuple[int, ...], rho: np.ndarray, scale: np.ndarray) -> tuple[int, ...]:
    """Try moving promoted units one rung back down, those saving the most bytes per predicted noise first,
    keeping each that still passes (at most ``_DEMOTIONS`` tries)."""

    def value(i: int) -> float:
        saved = search.units[i].bytes[levels[i]] - search.units[i].bytes[levels[i] - 1]
        added = float(np.max(scale * (rho[i, levels[i] - 1] - rho[i, levels[i]])))
        return saved / max(added, 1e-12)

    candidates = sorted((i for i, lv in enumerate(levels) if lv > 0), key=value, reverse=True)
    current = list(levels)
    for i in candidates[:_DEMOTIONS]:
        if search.units[i].bytes[current[i]] <= search.units[i].bytes[current[i] - 1]:
            continue  # saves nothing (float16 weights stored as float16 already)
        trial = list(current)
        trial[i] -= 1
        _, ok = search.judge_assignment(tuple(trial), f"demote {search.units[i].name}", sum(trial))
        if ok:
            current = trial
    return tuple(current)


def _uniform_rung(
    search: _Search, chosen: tuple[int, ...], rho: np.ndarray, scale: np.ndarray, report: SearchReport
) -> tuple[int, ...]:
    """The lowest uniform rung between the first and float (every unit on it) that meets the budget in fewer bytes
    than ``chosen``, demoted (`_demote`); ``chosen`` when none does (step 5)."""
    answer, ok = search.cache[chosen]
    answer_bytes = answer.bytes if ok else math.inf
    predicted_answer = sum(u.bytes[level] for u, level in zip(search.units, chosen, strict=True)) if ok else math.inf
    for level in range(1, search.levels - 1):  # the ladder's last rung is float, the only None
        if sum(u.bytes[level] for u in search.units) >= predicted_answer:
            continue
        rung = rung_name(search.builder.ladder[level])
        levels = tuple(level for _ in search.units)
        uniform, passed = search.judge_assignment(levels, f"uniform {rung}", sum(levels))
        if passed and uniform.bytes < answer_bytes:
            report.notes.append(
                f"every {report.unit_kind} on {rung} met the budget in {uniform.bytes:,} bytes"
                + (f", fewer than the promotion path's answer ({answer.bytes:,})" if ok else "")
            )
            return _demote(search, levels, rho, scale)
    return chosen


def _decisions(
    search: _Search, order: list[tuple[int, int]], chosen: tuple[int, ...], first_with: dict[int, int]
) -> list[dict[str, Any]]:
    """One entry per unit above its first rung: what it cost in bytes, how much harm it did alone, and the
    measured figures of the first judged candidate that included it."""
    ladder = search.builder.ladder
    isolated = search.isolated
    testing = search.testing
    decisions = []
    for i, level in enumerate(chosen):
        if not level:
            continue
        unit = search.units[i]
        step = next((s for s, (j, lv) in enumerate(order) if j == i and lv == level), None)
        measured = None
        if step is not None and step in first_with:
            measured = search.cache.get(search.levels_after(order, first_with[step]))
        if measured is None:
            measured = search.cache.get(chosen)
        m = measured[0] if measured else None
        decisions.append(
            {
                "unit": unit.name,
                "op": unit.op,
                "from": rung_name(ladder[0]),
                "to": rung_name(ladder[level]),
                "bytes_delta": unit.bytes[level] - unit.bytes[0],
                "path_step": step,
                "isolated_sqnr_db": None if isolated is None else noise_db(isolated[i]),
                "isolated_measured_alone": None if testing is None else testing.alone(i),
                "measured_sqnr_db": None if m is None else m.sqnr_db,
                "measured_drop": None if m is None else search.judge.drop_points(m),
            }
        )
    decisions.sort(key=lambda d: (d["path_step"] is None, d["path_step"]))
    return decisions


@dataclass
class _Equalization:
    """The uniform full-integer model with activation equalization (``equalize``), measured beside the plain one:
    ``taken`` when it meets the budget (it is then the answer)."""

    measured: Measurement
    taken: bool
    plain_sqnr_db: float
    unchanged: bool = False

    def note(self, judge: Judge) -> str:
        if self.unchanged:
            return (
                "activation equalization (--equalize) leaves the uniform model byte for byte the same (no activation "
                "is worth rescaling): not judged again, not taken"
            )
        return (
            "with activation equalization (--equalize) the uniform model measures "
            f"{_figures(_measured(judge, self.measured))}, against {_db(self.plain_sqnr_db)} dB without: "
            + ("taken: it meets the budget" if self.taken else "not taken")
        )


def _equalization(builder: Builder, search: _Search, plain: Measurement, plain_bytes: bytes) -> _Equalization:
    """Measure the uniform model with activation equalization (engine/passes/full_integer/smooth.py, chosen by
    predicted noise, so it may change nothing: then the same bytes, not judged again) and make it the answer when
    it meets the budget: judged, never assumed."""
    equalized = builder.recipe.with_options(equalize=True)
    candidate = builder.candidate(equalized)
    if candidate == plain_bytes:
        return _Equalization(plain, False, plain.sqnr_db, unchanged=True)
    m = search.judge.measure(candidate)
    # Taken only when it meets the budget as it is: an island search from the equalized model measured worse
    # wherever it was tried (hand_landmark_full int8 -> 30 dB: 61 of 63 ops float, 1.38x the input's bytes and
    # 1.62x float latency, against 0.92x and 0.98x from the plain model).
    taken = search.passes(m)
    search.steps.append(Step("uniform, activations equalized", 0, m.sqnr_db, search.judge.drop_points(m), m.bytes,
                             search.passes(m)))  # fmt: skip
    if taken:
        builder.recipe = equalized
    return _Equalization(m, taken, plain.sqnr_db)


def _int16x8(
    builder: Builder, judge: Judge, search: _Search, report: SearchReport, optimize: str, chosen: tuple[int, ...]
) -> Recipe | None:
    """Try the uniform int16x8 model as a whole-model alternative to an int8 assignment with float islands."""
    if optimize == "latency":
        report.notes.append("int16x8 not tried: XNNPACK has no 16x8 kernels, so it is slower than float on a CPU")
        return None
    try:
        recipe = builder.recipe.with_options(quantize="int16x8")
        candidate = builder.candidate(recipe)
    except EngineError as exc:
        report.notes.append(f"int16x8 not tried: {exc}")
        return None
    mixed = search.cache[chosen][0].bytes
    if len(candidate) >= mixed:
        report.notes.append(
            f"uniform int16x8 not judged: its {len(candidate):,} bytes are no fewer than the int8 assignment's "
            f"{mixed:,}, so it could not be taken"
        )
        return None
    # Judged first on a few held-out samples: the builtin 16x8 kernels run 15-42x slower than the int8 candidates,
    # and an SQNR budget that int16x8 misses by a wide margin there is not worth the full judgement.
    held = len(judge.data.held_out)
    if search.budget.max_accuracy_drop is None and held > _SCREEN_SAMPLES:
        screen = judge.measure(candidate, samples=_evenly_spaced(held, _SCREEN_SAMPLES))
        search.steps.append(Step(f"uniform int16x8 (whole-model alternative) on {_SCREEN_SAMPLES} held-out samples",
                                 0, screen.sqnr_db, None, screen.bytes, False))  # fmt: skip
        if screen.error is None and screen.sqnr_db < search.target_db - _SCREEN_MARGIN_DB:
            report.notes.append(
                f"uniform int16x8 tried as a whole-model alternative: worst output SQNR {_db(screen.sqnr_db)} dB on "
                f"{_SCREEN_SAMPLES} of the {held} held-out samples, more than {_SCREEN_MARGIN_DB:g} dB below the "
                "budget: not judged further, not taken"
            )
            return None
    m = judge.measure(candidate)
    ok = search.passes(m)
    search.steps.append(
        Step("uniform int16x8 (whole-model alternative)", 0, m.sqnr_db, judge.drop_points(m), m.bytes, ok)
    )
    better = ok and m.bytes < mixed
    report.notes.append(
        f"uniform int16x8 tried as a whole-model alternative: {_figures(_measured(judge, m))}; "
        + ("taken (smaller than the int8 assignment's " if better else "not taken (the int8 assignment's ")
        + f"{mixed:,} bytes); int16x8 runs in LiteRT's builtin kernels, 15-42x float latency on CPU"
    )
    return recipe if better else None


def _gradual(
    builder: Builder, judge: Judge, search: _Search, report: SearchReport, chosen: tuple[int, ...]
) -> Recipe | None:
    """The chosen full-integer assignment calibrated gradually (``gradual``, engine/passes/full_integer/gradual.py),
    taken when it measures better on the held-out samples: gradual calibration wins on some models and loses on
    others (docs/cli.md), so it is judged, never assumed."""
    recipe = builder.recipe_for(search._assignment(chosen)).with_options(gradual=DEFAULT_GRADUAL_STAGES)
    m = judge.measure(builder.candidate(recipe))
    ok = search.passes(m)
    search.steps.append(Step("chosen assignment, calibrated gradually", sum(chosen), m.sqnr_db, judge.drop_points(m),
                             m.bytes, ok))  # fmt: skip
    current = search.cache[chosen][0]
    better = ok and search.score(m) > search.score(current)
    report.notes.append(
        f"calibrated gradually ({DEFAULT_GRADUAL_STAGES} stages) the same assignment measures "
        f"{_figures(_measured(judge, m))}, against {_db(current.sqnr_db)} dB one-shot: "
        + ("taken" if better else "not taken")
    )
    return recipe if better else None


def _fastest(
    builder: Builder, judge: Judge, search: _Search, report: SearchReport, chosen: tuple[int, ...], source: bytes
) -> tuple[int, ...]:
    """``optimize="latency"``: time the finalists that meet the budget together and keep the fastest."""
    from engine.runtime.latency import median_latency_ms

    finalists = {chosen}
    top = len(builder.ladder) - 1
    # Promoted units on the top rung (float runs at float speed, where intermediate rungs may take slow forms),
    # and every unit one rung up (weight-int4's DEQUANTIZE is left to the builtin kernels by XNNPACK).
    finalists.add(tuple(top if lv else 0 for lv in chosen))
    if top >= 2:
        finalists.add(tuple(max(lv, 1) for lv in chosen))
    passing = []
    for levels in sorted(finalists):
        try:
            _, ok = search.judge_assignment(levels, "latency finalist", sum(levels))
        except _OutOfRuns:
            break
        if ok:
            passing.append(levels)
    blobs = [builder.candidate(builder.recipe_for(search._assignment(lv))) for lv in passing]
    times = median_latency_ms([source, *blobs], _first_inputs(judge), runs=_LATENCY_RUNS)
    float_ms, candidate_ms = times[0], times[1:]
    best = int(np.argmin(candidate_ms))
    report.notes.append(
        "latency (default runtime, 1 thread, median of "
        f"{_LATENCY_RUNS} interleaved runs): float {float_ms:.3g} ms; finalists meeting the budget "
        + ", ".join(
            f"{ms:.3g} ms ({search.cache[lv][0].bytes:,} bytes)" for lv, ms in zip(passing, candidate_ms, strict=True)
        )
        + f"; the fastest is taken ({candidate_ms[best]:.3g} ms)"
    )
    return passing[best]


def _evenly_spaced(count: int, taken: int) -> list[int]:
    """``taken`` positions of ``count`` held-out samples, evenly spaced, the first and last included."""
    return sorted({round(x) for x in np.linspace(0, count - 1, taken)})


def _first_inputs(judge: Judge) -> dict[str, np.ndarray]:
    return {d["name"]: arr for d, arr in zip(judge._inputs, judge.data.held_out[0], strict=True)}
