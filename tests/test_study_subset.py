"""`--subset N`: a class-balanced training subset, the same for every seed, part of the run's identity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_ticket
from train_util import cifar_subset, needs_cifar

from ettcli.data import InMemory, get_dataset
from ettcli.errors import EttError
from ettcli.train import training_subset


def fake(per_class: int, classes: int = 10) -> InMemory:
    y = np.repeat(np.arange(classes), per_class)
    i = np.arange(len(y))
    x = np.stack([i % 256, i // 256], axis=1).astype(np.uint8).reshape(-1, 1, 1, 2)  # each image says its index
    return InMemory(x, y, x[:5], y[:5], [str(c) for c in range(classes)], "test")


def test_subset_is_class_balanced_and_fixed():
    ds = get_dataset("cifar10")
    a, b = training_subset(fake(30), ds, 103), training_subset(fake(30), ds, 103)
    counts = np.bincount(a.train_y, minlength=10)
    assert counts.tolist() == [11, 11, 11] + [10] * 7  # 103 = 10 each, one more for the first 3 classes
    assert np.array_equal(a.train_x, b.train_x)  # the same images every time
    ids = a.train_x[:, 0, 0, 0].astype(int) + 256 * a.train_x[:, 0, 0, 1].astype(int)
    assert len(set(ids.tolist())) == 103 and np.array_equal(a.train_y, ids // 30)  # no image twice, labels kept
    with pytest.raises(EttError, match="fewer than the 31"):
        training_subset(fake(30), ds, 310)


@needs_cifar
@pytest.mark.data
def test_train_with_subset_records_it_in_the_identity(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))
    root = cifar_subset(tmp_path.parent)
    ticket = tmp_path / "t.safetensors"
    make_ticket("cifar_resnet_8_4", 0.5).save(ticket)
    args = ["train", ticket, "--data-root", root, "--epochs", "1", "--batch-size", "50", "--quiet", "--json"]
    r = cli(*args, "--subset", "100", "--out", tmp_path / "sub")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 2  # 100 images at batch 50
    assert json.loads((tmp_path / "sub" / "config.json").read_text())["identity"]["subset"] == 100
    r = cli(*args, "--out", tmp_path / "full")
    assert json.loads(r.stdout)["steps"] == 6
    assert "subset" not in json.loads((tmp_path / "full" / "config.json").read_text())["identity"]
