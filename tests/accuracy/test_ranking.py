"""Group testing for the budgeted search's ranking (engine.accuracy.ranking), on synthetic noise tables where a
group's noise is the sum of its members' (the additivity the search assumes): loud units are found and their
noise recovered exactly, quiet groups cost one candidate, and the estimates always add up to what was measured.
Also the judge's sample subset, which the ranking candidates are judged on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.accuracy.candidates import Judge, load_data
from engine.accuracy.ranking import GroupTesting
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from engine.runtime.litert import as_float, interpreter, invoke
from tests.accuracy.models import small_net


class Table:
    """A synthetic noise table [units, outputs]; ``measure`` sums the rows of a group and records the groups."""

    def __init__(self, noise: np.ndarray) -> None:
        self.noise = np.asarray(noise, dtype=np.float64)
        self.calls: list[list[int]] = []

    def measure(self, members: list[int]) -> np.ndarray:
        self.calls.append(list(members))
        return self.noise[members].sum(axis=0)


def _heavy_table(units: int = 128, heavy: tuple[int, ...] = (5, 40, 41, 99), outputs: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = rng.uniform(1e-6, 1e-5, (units, outputs))
    for i in heavy:
        noise[i] = rng.uniform(0.05, 0.5, outputs)
    return noise


def test_group_testing_finds_the_heavy_units() -> None:
    heavy = (5, 40, 41, 99)
    table = Table(_heavy_table(heavy=heavy))
    testing = GroupTesting(128, table.measure, loud=1e-3, group=16)
    testing.start()
    estimates = testing.noise()
    # Each heavy unit ends alone (measured, or its group's noise minus the rest's) with its noise exact.
    for i in heavy:
        assert testing.estimate(i).group == 1
        assert np.allclose(estimates[i], table.noise[i], rtol=1e-9)
    # 8 groups, and a bisection (one candidate a level: the other half is a difference) per heavy unit's group.
    assert testing.runs == len(table.calls) < 8 + 4 * 4 + 1
    assert testing.runs < 128 // 4
    # The quiet ones share their groups' noise; everything adds up to what the groups measured.
    assert np.allclose(estimates.sum(axis=0), table.noise.sum(axis=0))
    quiet = [i for i in range(128) if i not in heavy]
    assert np.all(estimates[quiet].max(axis=1) < 1e-3)


def test_shares_follow_the_proxy_and_isolation_measures_alone() -> None:
    noise = np.array([[1.0], [2.0], [3.0], [4.0]]) * 1e-4
    table = Table(noise)
    proxy = [1.0, 1.0, 2.0, np.nan]  # NaN: unknown, counts as the mean of the known ones
    testing = GroupTesting(4, table.measure, proxy, loud=1.0, group=4)
    testing.start()
    assert table.calls == [[0, 1, 2, 3]]
    total = noise.sum()
    expected = np.array([1.0, 1.0, 2.0, 4 / 3]) / (1 + 1 + 2 + 4 / 3) * total
    assert np.allclose(testing.noise()[:, 0], expected)
    assert not any(testing.alone(i) for i in range(4))
    assert testing.estimate(0).describe() == "estimated: a share of the noise of a group of 4"

    assert testing.isolate([2]) == 1
    assert table.calls[-1] == [2]
    assert testing.alone(2) and testing.estimate(2).describe() == "measured alone"
    estimates = testing.noise()[:, 0]
    assert estimates[2] == pytest.approx(3e-4)
    rest = total - 3e-4  # the others share what the group measured beyond unit 2
    assert np.allclose(estimates[[0, 1, 3]], np.array([1.0, 1.0, 4 / 3]) / (10 / 3) * rest)
    assert testing.isolate([2]) == 0  # already alone: no candidate

    testing.isolate([0, 1])
    assert testing.alone(0) and testing.alone(1)
    # Unit 3 is what is left of the group: known by difference, not measured alone.
    assert not testing.alone(3) and testing.estimate(3).group == 1
    assert "minus its other members'" in testing.estimate(3).describe()
    assert testing.noise()[3, 0] == pytest.approx(4e-4)


def test_separating_a_part_measures_it_together_and_leaves_the_rest_the_difference() -> None:
    """What the search asks where its answer splits a group: the part's noise as one candidate (exact as a sum),
    the rest the group's minus it (a group known only as a difference may be measured whole); anything else is
    refused."""
    noise = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]) * 1e-4
    table = Table(noise)
    testing = GroupTesting(6, table.measure, group=3)
    testing.start()
    assert testing.groups() == [([0, 1, 2], True), ([3, 4, 5], True)]
    assert testing.separate([[0, 2], [4]]) == 2
    assert table.calls[-2:] == [[0, 2], [4]]
    assert sorted(testing.groups()) == [([0, 2], True), ([1], False), ([3, 5], False), ([4], True)]
    estimates = testing.noise()[:, 0]
    assert estimates[[0, 2]].sum() == pytest.approx(4e-4) and estimates[1] == pytest.approx(2e-4)
    assert estimates[4] == pytest.approx(5e-4) and testing.alone(4)
    assert estimates[[3, 5]].sum() == pytest.approx(10e-4)
    assert not testing.alone(1) and testing.estimate(1).group == 1  # the group's noise minus the part's
    assert estimates.sum() == pytest.approx(noise.sum())
    for bad in ([0, 2], [1, 3]):  # a whole group measured as it is; members of two groups
        with pytest.raises(ValueError, match="not a part of one group that is not measured as it is"):
            testing.separate([bad])
    assert testing.separate([[3, 5]]) == 1  # a difference measured: no rest
    assert testing.groups()[-1] == ([3, 5], True) and table.calls[-1] == [3, 5]
    assert testing.noise()[[3, 5], 0].sum() == pytest.approx(10e-4)


def test_a_refused_candidate_is_bisected_down_to_its_culprit() -> None:
    """A candidate the runtime refuses measures inf: halves are then measured (a difference of infinities says
    nothing) until the unit that breaks it is alone; the others keep finite estimates."""
    noise = np.full((8, 1), 1e-6)
    noise[6] = np.inf
    for cautious in (None, [True] * 8):
        table = Table(noise)
        testing = GroupTesting(8, table.measure, group=8, cautious=cautious)  # nothing loud but the refused group
        testing.start()
        estimates = testing.noise()
        assert np.isinf(estimates[6, 0]) and testing.alone(6)
        assert np.all(np.isfinite(np.delete(estimates, 6, axis=0)))
        assert np.allclose(np.delete(estimates, 6, axis=0).sum(), 7e-6)


def test_cautious_units_keep_their_share_when_a_difference_vanishes() -> None:
    """Sub-additive noise (a group measures half what its members measure alone): once two of four units are
    measured alone, the group's remainder is zero; cautious units keep their share of the group instead."""
    noise = np.full((4, 1), 1e-4)

    def measure(members: list[int]) -> np.ndarray:
        return noise[members].sum(axis=0) * (1.0 if len(members) == 1 else 0.5)

    plain = GroupTesting(4, measure, group=4)
    plain.start()
    plain.isolate([0, 1])
    assert np.array_equal(plain.noise()[:, 0], [1e-4, 1e-4, 0.0, 0.0])

    cautious = GroupTesting(4, measure, group=4, cautious=[False, False, True, True])
    cautious.start()
    cautious.isolate([0, 1])
    assert np.allclose(cautious.noise()[:, 0], [1e-4, 1e-4, 5e-5, 5e-5])
    cautious.isolate([2])  # measured alone, a cautious unit is its measurement
    assert np.allclose(cautious.noise()[:, 0], [1e-4, 1e-4, 1e-4, 5e-5])


def test_one_unit_a_group_measures_each_alone() -> None:
    table = Table(_heavy_table(units=10, heavy=(5,)))
    testing = GroupTesting(10, table.measure, loud=1e-3, group=1)
    testing.start()
    assert testing.runs == 10 and all(testing.alone(i) for i in range(10))
    assert np.array_equal(testing.noise(), table.noise)


@st.composite
def noise_tables(draw: st.DrawFn) -> tuple[np.ndarray, list[float], float, int]:
    units = draw(st.integers(1, 70))
    outputs = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Log-uniform noise over 8 decades, with exact zeros (lossless units) now and then.
    noise = 10 ** rng.uniform(-8, 0, (units, outputs))
    noise[rng.random(units) < 0.1] = 0.0
    proxy = [float(p) for p in rng.uniform(0, 1, units)]
    loud = 10 ** draw(st.floats(-6, 1))
    group = draw(st.integers(1, 20))
    return noise, proxy, loud, group


@settings(max_examples=200, deadline=None)
@given(noise_tables(), st.data())
def test_group_testing_properties(case: tuple[np.ndarray, list[float], float, int], data: st.DataObject) -> None:
    """For any additive table: never more candidates than units (before isolation), every group left whole is
    quiet, the estimates add up to the truth per output, a loud unit's noise is recovered exactly, and isolating
    any units measures each of them alone and keeps the totals."""
    noise, proxy, loud, group = case
    units = len(noise)
    table = Table(noise)
    testing = GroupTesting(units, table.measure, proxy, loud, group)
    testing.start()
    assert testing.runs <= units
    estimates = testing.noise()
    assert np.allclose(estimates.sum(axis=0), noise.sum(axis=0), rtol=1e-9, atol=1e-15)
    for i in range(units):
        estimate = testing.estimate(i)
        if estimate.group > 1:  # shares a group left whole: a quiet one
            assert noise[testing._leaf_of(i).members].sum(axis=0).max() <= loud * (1 + 1e-9)
        if noise[i].max() > loud:
            assert estimate.group == 1 and np.allclose(estimates[i], noise[i], rtol=1e-6, atol=1e-15)
    chosen = data.draw(st.lists(st.integers(0, units - 1), max_size=5))
    before = testing.runs
    testing.isolate(chosen)
    assert testing.runs - before <= 2 * len(set(chosen))
    for i in chosen:
        assert testing.alone(i) and np.array_equal(testing.noise()[i], noise[i])
    assert np.allclose(testing.noise().sum(axis=0), noise.sum(axis=0), rtol=1e-9, atol=1e-15)


# ------------------------------------------------------------------------------------ the judge's subset


def test_judge_measures_on_a_subset_of_the_held_out_samples(tmp_path: Path) -> None:
    """``Judge.measure(candidate, samples)``: the noise pooled over those held-out samples only (error power over
    signal power, both summed over the subset), recomputed here from the candidate's outputs; no accuracy."""
    path, x = small_net(tmp_path)
    data = load_data(read_model(path), x, np.arange(len(x)) % 10, 0.25, False, "test")
    judge = Judge(path.read_bytes(), data)
    model, _ = engine.compress(path, quantize="weight-int4", min_elements=0)
    blob = bytes(model_to_bytes(model))
    everything = judge.measure(blob)
    assert everything.accuracy is not None
    assert np.array_equal(judge.measure(blob, range(len(data.held_out))).noise, everything.noise)
    subset = [0, 5, 17, 40]
    part = judge.measure(blob, subset)
    assert part.accuracy is None and judge.runs == 3
    interp = interpreter(blob, "candidate", preserve_all=False, num_threads=1, xnnpack=True)
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    noise, signal = np.zeros(len(outputs)), np.zeros(len(outputs))
    for s in subset:
        invoke(interp, list(zip(inputs, data.held_out[s], strict=True)), "candidate")
        for k, d in enumerate(outputs):
            reference = judge.reference[s][k]
            noise[k] += float(np.sum((reference - as_float(interp.get_tensor(d["index"]), d)) ** 2))
            signal[k] += float(np.sum(reference**2))
    assert np.allclose(part.noise, noise / signal, rtol=1e-9)
    assert not np.allclose(part.noise, everything.noise, rtol=1e-6)  # a different pool than every sample's
