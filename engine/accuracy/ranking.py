"""Group testing for the ranking of the budgeted search (engine.accuracy.search, step 2): each unit's output noise
alone on its first rung, from fewer candidates than one per unit.

Noise powers of independent rounding errors add, so a candidate with a group of units quantized (every other unit
float) measures about the sum of their isolated noises.  `GroupTesting`:

1. **Groups.**  Consecutive units, up to ``group`` a group, one candidate each.
2. **Loud groups are split.**  A group whose noise (worst output) is above ``loud`` (none by default), or not
   finite (a candidate the runtime refused), is halved: the first half is measured, the second's noise is the
   group's minus the first's (clipped at zero; measured too when the group's noise is not finite: a difference of
   infinities says nothing), recursively, until the culprits are alone.
3. **Shares.**  The noise of a group left whole is shared among its members in proportion to a free proxy (in
   the weight modes, each weight's own quantization noise on the first rung, which the passes report; equal
   shares without one).
4. **Isolation on demand.**  `isolate` measures alone the units a decision depends on (the search asks for those
   its answer hangs on); the rest of their group keeps the group's noise minus theirs, re-shared.  `separate`
   measures a part of a group together (the search: the members its answer leaves quantized, whose noise counts
   only as a sum), the rest likewise keeping the difference.

Real noise powers add only roughly: a unit measured alone often measures more than its share of a group measured
together (int8 ops in a row share the activation between them, which alone is quantized on both sides), so a
difference can reach zero.  A ``cautious`` unit (one the caller will not measure alone) is therefore never
estimated below its share of the last candidate measured with it.

Every unit ends either **measured alone** (a candidate with only it quantized: the search's isolated noise as
before) or **estimated**: a share of a group's noise, or a group's noise minus its other members' (a group
reduced to one unit by subtraction).  ``runs`` counts the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

GROUP = 16


@dataclass(eq=False)
class _Leaf:
    """Units whose noise is known only together: ``noise`` per output; ``measured`` when it is a candidate's
    figure for exactly these units (not a difference of two)."""

    members: list[int]
    noise: np.ndarray
    measured: bool


@dataclass(frozen=True)
class Estimate:
    """How one unit's isolated noise is known: ``alone`` (measured alone), else estimated from a group of
    ``group`` units (``group`` 1: the remainder of a group after its other members were measured)."""

    alone: bool
    group: int

    def describe(self) -> str:
        if self.alone:
            return "measured alone"
        if self.group == 1:
            return "estimated: its group's noise minus its other members'"
        return f"estimated: a share of the noise of a group of {self.group}"


class GroupTesting:
    """The isolated noise of ``count`` units from candidates that quantize groups of them.

    ``measure(members)`` judges the candidate with exactly ``members`` quantized and returns its noise per output
    (relative power, inf where the runtime refused it); ``proxy`` (one non-negative figure per unit, NaN where
    unknown) splits a group's noise among its members; a group whose worst output's noise is above ``loud`` is
    split before sharing.  A ``cautious`` unit is never estimated below its share of the last candidate measured
    with it: for units that will not be measured alone, where an under-estimate costs more than an over-estimate
    (a difference goes to zero when the members measured alone add up to more than they measure together).
    """

    def __init__(
        self,
        count: int,
        measure: Callable[[Sequence[int]], np.ndarray],
        proxy: Sequence[float] | np.ndarray | None = None,
        loud: float = np.inf,
        group: int = GROUP,
        cautious: Sequence[bool] | None = None,
    ) -> None:
        self.count, self._measure, self.loud = count, measure, loud
        self.group = max(1, int(group))
        weights = np.ones(count) if proxy is None else np.asarray(proxy, dtype=np.float64).copy()
        known = np.isfinite(weights) & (weights >= 0)
        weights[~known] = float(np.mean(weights[known])) if known.any() else 1.0
        self._proxy = weights
        self._cautious = np.zeros(count, bool) if cautious is None else np.asarray(cautious, bool)
        self._floor: np.ndarray | None = None  # [units, outputs]: a cautious unit's share of its last measurement
        self._leaves: list[_Leaf] = []
        self.runs = 0

    def run(self, members: Sequence[int]) -> np.ndarray:
        self.runs += 1
        return np.asarray(self._measure(list(members)), dtype=np.float64)

    def start(self, label: Callable[[Iterable[list[int]]], Iterable[list[int]]] | None = None) -> None:
        """Measure the groups and split the loud ones (``label`` may wrap the groups' loop, e.g. a progress bar)."""
        parts = max(1, -(-self.count // self.group))
        groups = [[int(i) for i in part] for part in np.array_split(np.arange(self.count), parts) if len(part)]
        for members in groups if label is None else label(groups):
            self._settle(_Leaf(members, self.run(members), True))

    def _settle(self, leaf: _Leaf) -> None:
        """Keep ``leaf`` whole, or split it while it is loud."""
        stack = [leaf]
        while stack:
            leaf = stack.pop()
            self._note(leaf)
            if len(leaf.members) == 1 or not self._is_loud(leaf.noise):
                self._leaves.append(leaf)
                continue
            half = len(leaf.members) // 2
            first, second = leaf.members[:half], leaf.members[half:]
            a = self.run(first)
            if np.all(np.isfinite(leaf.noise)) and np.all(np.isfinite(a)):
                b, measured = np.maximum(leaf.noise - a, 0.0), False
            else:  # a difference of infinities says nothing
                b, measured = self.run(second), True
            stack += [_Leaf(second, b, measured), _Leaf(first, a, True)]

    def _is_loud(self, noise: np.ndarray) -> bool:
        """Above ``loud`` on some output, or not finite (a refused candidate: split until the culprit is alone)."""
        return bool(noise.size) and (not np.all(np.isfinite(noise)) or float(np.max(noise)) > self.loud)

    def isolate(self, units: Iterable[int]) -> int:
        """Measure each of ``units`` alone unless it already is; returns how many candidates that took."""
        return self.separate([i] for i in units if not self.alone(i))

    def separate(self, parts: Iterable[Sequence[int]]) -> int:
        """Measure each of ``parts`` (units of one group whose noise is known only together: a proper part, or
        the whole group when its noise is a difference, not a measurement) as one candidate; the rest of that
        group keeps the group's noise minus the part's.  Returns how many candidates that took.  Cheaper than
        `isolate` where a decision hangs on the part's noise as a whole."""
        before = self.runs
        for part in parts:
            members = [int(i) for i in part]
            leaf = self._leaf_of(members[0])
            rest = [j for j in leaf.members if j not in members]
            if len(rest) + len(members) != len(leaf.members) or not (rest or not leaf.measured):
                raise ValueError(f"{members} is not a part of one group that is not measured as it is")
            self._leaves.remove(leaf)
            measured = self.run(members)
            self._settle(_Leaf(members, measured, True))
            if not rest:
                continue
            if np.all(np.isfinite(leaf.noise)) and np.all(np.isfinite(measured)):
                self._settle(_Leaf(rest, np.maximum(leaf.noise - measured, 0.0), False))
            else:  # a difference of infinities says nothing
                self._settle(_Leaf(rest, self.run(rest), True))
        return self.runs - before

    def groups(self) -> list[tuple[list[int], bool]]:
        """The units whose noise is known only together, group by group (a unit measured alone is a group), each
        with whether its noise was measured as it is (else it is a difference of two measurements)."""
        return [(list(leaf.members), leaf.measured) for leaf in self._leaves]

    def _shares(self, leaf: _Leaf) -> np.ndarray:
        """[members, outputs]: ``leaf``'s noise shared among its members in proportion to the proxy."""
        weights = self._proxy[leaf.members]
        total = float(weights.sum())
        share = weights / total if total > 0 else np.full(len(leaf.members), 1.0 / len(leaf.members))
        with np.errstate(invalid="ignore"):
            shares = share[:, None] * leaf.noise[None, :]
        shares[np.isnan(shares)] = 0.0  # 0 x inf: a member without share in a refused group
        return shares

    def _note(self, leaf: _Leaf) -> None:
        """Remember the cautious members' shares of a measured leaf (not of a refused group's: it is bisected)."""
        if not leaf.measured or not self._cautious[leaf.members].any():
            return
        if len(leaf.members) > 1 and not np.all(np.isfinite(leaf.noise)):
            return
        if self._floor is None:
            self._floor = np.zeros((self.count, leaf.noise.shape[0]))
        members = np.asarray(leaf.members)
        chosen = self._cautious[members]
        self._floor[members[chosen]] = self._shares(leaf)[chosen]

    def _leaf_of(self, unit: int) -> _Leaf:
        for leaf in self._leaves:
            if unit in leaf.members:
                return leaf
        raise KeyError(unit)

    def alone(self, unit: int) -> bool:
        leaf = self._leaf_of(unit)
        return leaf.measured and len(leaf.members) == 1

    def estimate(self, unit: int) -> Estimate:
        return Estimate(self.alone(unit), len(self._leaf_of(unit).members))

    def noise(self) -> np.ndarray:
        """[units, outputs]: each unit's isolated noise, measured or estimated (a group's shared by the proxy; a
        cautious unit's at least its share of the last candidate measured with it)."""
        outputs = self._leaves[0].noise.shape[0] if self._leaves else 0
        out = np.zeros((self.count, outputs))
        for leaf in self._leaves:
            out[leaf.members] = self._shares(leaf)
        if self._floor is not None:
            out[self._cautious] = np.maximum(out[self._cautious], self._floor[self._cautious])
        return out
