"""Recipes, the per-iteration lr schedule, and fast-forwarding the data order to any step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ettcli.data import InMemory, get_dataset
from ettcli.errors import EttError, EttWarning
from ettcli.feeders import MemoryFeeder, iterations_per_epoch
from ettcli.recipe import customise, recipe_for
from ettcli.steps import Step
from ettcli.train import resolve_precision


def test_family_defaults_match_design():
    cifar = recipe_for("cifar10")
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.momentum, cifar.weight_decay) == (160, 128, 0.1, 0.9, 1e-4)
    assert cifar.milestones == (Step(80), Step(120)) and cifar.warmup == Step()
    assert recipe_for("cifar100") == cifar
    imnet = recipe_for("imagenet")
    assert (imnet.epochs, imnet.batch_size, imnet.lr) == (90, 1024, 0.4)
    assert imnet.milestones == (Step(30), Step(60), Step(80)) and imnet.warmup == Step(5)
    assert iterations_per_epoch(50_000, 128) == 391


def test_lr_steps_per_iteration_at_milestones():
    r = recipe_for("cifar10")
    per = 391
    assert r.lr_at(0, per) == 0.1
    assert r.lr_at(80 * per - 1, per) == 0.1
    assert r.lr_at(80 * per, per) == pytest.approx(0.01)
    assert r.lr_at(120 * per, per) == pytest.approx(0.001)
    warm = recipe_for("imagenet")
    assert warm.lr_at(0, 100) == 0.0
    assert warm.lr_at(250, 100) == pytest.approx(0.2)  # half way through 5 epochs of warmup
    assert warm.lr_at(500, 100) == pytest.approx(0.4)


def test_epochs_keep_the_schedule_shape():
    r = customise(recipe_for("cifar10"), 391, epochs=4)
    assert r.epochs == 4 and r.milestones == (Step(2), Step(3))
    odd = customise(recipe_for("cifar10"), 10, epochs=3)  # 1.5 and 2.25 epochs, in iterations
    assert odd.milestones == (Step(1, 5), Step(2, 2))
    w = customise(recipe_for("imagenet"), 100, epochs=18)
    assert w.warmup == Step(1) and w.milestones == (Step(6), Step(12), Step(16))
    explicit = customise(recipe_for("cifar10"), 391, epochs=4, milestones="1ep,500it", lr=0.05, batch_size=64)
    assert explicit.milestones == (Step(1), Step(0, 500)) and explicit.lr == 0.05 and explicit.batch_size == 64
    with pytest.warns(EttWarning, match="not in order"):
        customise(recipe_for("cifar10"), 391, epochs=4, milestones="3ep,1ep")
    with pytest.warns(EttWarning, match="9ep is at or past the end of training"):
        customise(recipe_for("cifar10"), 391, epochs=4, milestones="2ep,9ep")
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": float("nan")}, {"lr": -1.0}):
        with pytest.raises(EttError, match="finite"):
            customise(recipe_for("cifar10"), 391, **bad)
    with pytest.raises(EttError, match="epochs 0"):
        customise(recipe_for("cifar10"), 391, epochs=0)


def test_precision_choices():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(EttError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")


def _feeder(n=50, batch=8, seed=3, rank=0, world=1):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64)  # label = index, so batches reveal the order
    data = InMemory(x, y, x[:10], y[:10], [], "mem")
    return MemoryFeeder(data, get_dataset("cifar10"), batch, torch.device("cpu"), seed, rank, world)


def test_fast_forward_reproduces_the_uninterrupted_order_and_augmentation():
    f = _feeder()
    assert f.per_epoch == 7  # 50 / 8: the last partial batch of 2 is kept
    full = [(x.clone(), y.clone()) for ep in range(3) for x, y in f.batches(ep)]
    k = 1 * f.per_epoch + 4  # a rewind step of 1ep4it
    ep, it = divmod(k, f.per_epoch)
    tail = [(x, y) for e in range(ep, 3) for x, y in f.batches(e, it if e == ep else 0)]
    assert len(tail) == len(full) - k
    for (xa, ya), (xb, yb) in zip(full[k:], tail):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    # each epoch is a permutation, different per epoch and per seed
    e0 = torch.cat([y for _, y in f.batches(0)])
    e1 = torch.cat([y for _, y in f.batches(1)])
    assert sorted(e0.tolist()) == list(range(50)) and not torch.equal(e0, e1)
    other = torch.cat([y for _, y in _feeder(seed=4).batches(0)])
    assert not torch.equal(e0, other)


def test_batches_are_normalised_channels_last_crops():
    f = _feeder()
    x, y = next(f.batches(0))
    assert x.shape == (8, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    # every output pixel is either zero padding or a pixel of the source image, maybe flipped
    mean = torch.tensor(get_dataset("cifar10").mean).view(1, 3, 1, 1)
    std = torch.tensor(get_dataset("cifar10").std).view(1, 3, 1, 1)
    raw = torch.round((x * std + mean) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    src = f.train_x[y]
    for i in range(len(y)):
        found = False
        for flip in (False, True):
            img = src[i].flip(1) if flip else src[i]
            padded = torch.zeros(40, 40, 3, dtype=torch.uint8)
            padded[4:36, 4:36] = img
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(padded[dy : dy + 32, dx : dx + 32], raw[i]):
                        found = True
        assert found, i


def test_ranks_split_each_batch():
    whole = [y for _, y in _feeder(world=1).batches(0)]
    r0 = [y for _, y in _feeder(rank=0, world=2).batches(0)]
    r1 = [y for _, y in _feeder(rank=1, world=2).batches(0)]
    for w, a, b in zip(whole, r0, r1):
        assert sorted(w.tolist()) == sorted(a.tolist() + b.tolist())
