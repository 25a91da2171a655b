"""Allocation and counting (numpy only): exact top-k with its tie-break, integer counts, ERK as RigL defines it."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from ettcli.errors import EttError
from ettcli.pruning import (
    METHODS,
    counts_from_densities,
    erk_densities,
    global_topk_masks,
    keep_count,
    layerwise_topk_masks,
    topk_flat,
)


@pytest.mark.parametrize("k", [0, 1, 7, 50, 99, 100])
@pytest.mark.parametrize("selector", ["numpy", "torch"])
def test_topk_equals_a_stable_sort_with_many_ties(k, selector, monkeypatch):
    if selector == "numpy":  # the k-th value found by numpy, as in a process that never imported torch
        monkeypatch.setitem(sys.modules, "torch", None)
    else:
        import torch  # noqa: F401
    rng = np.random.default_rng(k)
    values = rng.integers(0, 5, 100).astype(np.float64)  # five distinct values: ties everywhere
    values[3], values[5] = -np.inf, np.inf
    expect = np.zeros(100, dtype=bool)
    expect[np.argsort(-values, kind="stable")[:k]] = True
    got = topk_flat(values, k)
    assert got.sum() == k
    assert np.array_equal(got, expect)


def test_global_topk_breaks_ties_by_tensor_order_then_index():
    scores = {"b": np.ones((2, 3)), "a": np.ones(4)}  # order as given, not alphabetical
    masks = global_topk_masks(scores, 8)
    assert masks["b"].array.all() and masks["b"].shape == (2, 3)
    assert masks["a"].array.tolist() == [True, True, False, False]
    per = layerwise_topk_masks({"x": np.array([3.0, 1.0, 3.0, 2.0])}, {"x": 2})
    assert per["x"].array.tolist() == [True, False, True, False]


def test_keep_count_is_round_of_density_and_refuses_bad_sparsity():
    assert keep_count(1000, 0.8) == 200
    assert keep_count(5036, 0.8) == round(0.2 * 5036) == 1007
    assert keep_count(10, 0.0) == 10
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(EttError, match=r"outside \[0, 1\)"):
            keep_count(100, bad)


def test_counts_from_densities_sum_exactly_and_respect_sizes():
    sizes = {"a": 10, "b": 7, "c": 3}
    for keep in range(0, 21):
        counts = counts_from_densities(sizes, {n: keep / 20 for n in sizes}, keep)
        assert sum(counts.values()) == keep
        assert all(0 <= counts[n] <= sizes[n] for n in sizes)
    # densities that ask for more than the tensor holds are capped and the rest goes elsewhere
    counts = counts_from_densities(sizes, {"a": 0.5, "b": 1.5, "c": 0.0}, 14)
    assert counts["b"] == 7 and sum(counts.values()) == 14


def _rigl_erk(shapes: dict[str, tuple], sparsity: float) -> tuple[dict[str, float], set[str]]:
    """RigL's rule, written out independently: try k = 0, 1, ... densest layers dense until every density <= 1."""
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    by_raw = sorted(set(raw.values()), reverse=True)
    for k in range(len(by_raw) + 1):
        dense = {n for n, r in raw.items() if r in by_raw[:k]}
        rest = [n for n in shapes if n not in dense]
        need = sum(math.prod(shapes[n]) - math.floor(sparsity * math.prod(shapes[n])) for n in rest)
        need -= sum(math.floor(sparsity * math.prod(shapes[n])) for n in dense)
        eps = need / sum(raw[n] * math.prod(shapes[n]) for n in rest)
        if max(eps * raw[n] for n in rest) <= 1:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}, dense
    raise AssertionError("no valid epsilon")


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.98])
def test_erk_densities_equal_rigl_formula(sparsity):
    shapes = {  # a CIFAR-ResNet-like set: stem, two convs, a 1x1 shortcut and a small classifier
        "conv.weight": (16, 3, 3, 3),
        "blocks.0.conv1.weight": (32, 16, 3, 3),
        "blocks.1.conv1.weight": (64, 32, 3, 3),
        "blocks.1.shortcut.0.weight": (64, 32, 1, 1),
        "fc.weight": (10, 64),
    }
    got = erk_densities(shapes, sparsity)
    want, dense = _rigl_erk(shapes, sparsity)
    assert set(got) == set(shapes)
    for n in shapes:
        assert got[n] == pytest.approx(want[n], rel=1e-12), n
    if sparsity == 0.8:
        assert dense == {"fc.weight"} and got["fc.weight"] == 1.0  # the classifier is capped at density 1
        assert got["conv.weight"] < 1.0
    if sparsity == 0.98:
        assert not dense
    assert all(0 < d <= 1 for d in got.values())
    # the kept count is that of the uniform sparsity (RigL's floor per layer)
    kept = sum(got[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(sum(math.prod(s) - math.floor(sparsity * math.prod(s)) for s in shapes.values()))


def test_registry_lists_every_method_and_imports_no_torch():
    assert list(METHODS) == ["magnitude", "random", "reinit", "snip", "grasp", "grasp-abs", "synflow", "uniform", "erk"]
    assert {n for n, m in METHODS.items() if m.data} == {"snip", "grasp", "grasp-abs"}
    assert METHODS["snip"].bn == "train" and METHODS["synflow"].bn == "eval"
    with pytest.raises(EttError, match="unknown pruning method 'obd'; choose one of: magnitude"):
        METHODS.lookup("obd")
    code = (
        "import sys, ettcli.pruning as p\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(p.METHODS['magnitude'].load())\n"
        "assert 'torch' not in sys.modules\n"
        "import ettcli\n"
        "assert ettcli.prune is p.prune and 'torch' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
