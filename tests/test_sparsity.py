"""One sparsity counter: per tensor, per stage and global, the same for tickets, plans and `ett inspect`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transform_util import labelled_ticket

from ettcli.errors import EttError
from ettcli.mask import Mask
from ettcli.plan import make_plan
from ettcli.sparsity import Count, SparsityReport
from ettcli.transform import apply_plan, predict_sparsity


def test_report_counts_by_hand():
    t = labelled_ticket("cifar_resnet_14_4", density=0.4)
    report = t.sparsity_report()
    spec = t.arch
    for name, c in report.tensors.items():
        assert c.total == int(np.prod(spec.tensors[name].shape))
        assert c.kept == int(t.masks[name].array.sum())
    for s in range(3):
        names = [n for n, ts in spec.tensors.items() if ts.prunable and ts.stage == s]
        kept = sum(int(t.masks[n].array.sum()) for n in names)
        total = sum(t.masks[n].numel for n in names)
        assert report.stage_counts[s] == Count(kept, total) and report.stages[s] == 1 - kept / total
    all_kept = sum(int(m.array.sum()) for m in t.masks.values())
    assert report.kept == all_kept and report.total == sum(m.numel for m in t.masks.values())
    assert report.sparsity == pytest.approx(1 - all_kept / report.total) and t.sparsity() == report.sparsity
    assert t.counts() == (report.total, report.kept) and t.stage_sparsity() == list(report.stages)


def test_dense_report():
    report = SparsityReport.of(labelled_ticket("cifar_vgg_11_4").arch, {})
    assert report.sparsity == 0.0 and report.density == 1.0 and report.stages == (0.0,) * 5
    assert Count(0, 0).sparsity == 0.0 and Count(0, 0).density == 1.0


def test_prediction_equals_the_built_ticket(tmp_path):
    t = labelled_ticket("cifar_resnet_20_4", density=0.3)
    plan = make_plan(t.arch, "resnet-44")
    built = apply_plan(t, plan)
    assert predict_sparsity(t, plan) == built.sparsity_report()


def test_inspect_json_uses_the_report(cli, tmp_path):
    t = labelled_ticket("imagenet_resnet_10_4", density=0.25)
    t.save(tmp_path / "t.safetensors")
    info = json.loads(cli("inspect", tmp_path / "t.safetensors", "--json").stdout)
    report = t.sparsity_report()
    assert info["sparsity"] == report.sparsity and info["stage_sparsity"] == list(report.stages)
    assert (info["prunable"], info["kept_prunable"]) == (report.total, report.kept)
    rows = {r["name"]: r for r in info["tensors"]}
    assert all(rows[n]["kept"] == c.kept and rows[n]["sparsity"] == c.sparsity for n, c in report.tensors.items())


def test_with_masks_returns_a_new_validated_ticket():
    t = labelled_ticket("cifar_resnet_8_4")
    name = "blocks.1.conv1.weight"
    shape = t.arch.tensors[name].shape
    new = t.with_masks({name: np.zeros(shape, dtype=np.int64)})  # 0/1 arrays are accepted
    assert set(new.masks) == {name} and new.masks[name].kept == 0 and new.tensors == t.tensors
    assert len(t.masks) > 1  # the original is unchanged
    assert new.with_masks({}).sparsity() == 0.0
    with pytest.raises(EttError, match="never pruned"):
        t.with_masks({"fc.bias": np.ones(t.arch.tensors["fc.bias"].shape, bool)})
    with pytest.raises(EttError, match="has no tensor"):
        t.with_masks({"blocks.9.conv1.weight": np.ones(shape, bool)})
    with pytest.raises(EttError, match="has shape"):
        t.with_masks({name: Mask(np.ones((1, 2), bool))})
    with pytest.raises(EttError, match="not binary"):
        t.with_masks({name: np.full(shape, 0.5)})
