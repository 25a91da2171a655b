"""A tiny CIFAR ViT (2 layers, width 16) trained, pruned by IMP, transferred and compared on real CIFAR-10 images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import make_ticket
from train_util import cifar_subset, needs_cifar

from ettcli import prune
from ettcli.ticket import read_ticket

pytestmark = [needs_cifar, pytest.mark.data]
ARCH = "cifar_vit_2_16"
BATCH = ["--batch-size", "50"]  # 300 training images: 6 steps an epoch


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("vit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("ETT_RUNS", str(base / "runs"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        ticket = base / "vit_50.safetensors"
        # random half of every matrix inside the layers; the zero-initialised head and the patch embedding dense
        prune(make_ticket(ARCH, seed=1), "random", sparsity=0.5, seed=1).save(ticket)
        yield {"base": base, "root": root, "ticket": ticket}


def _train(cli, ticket, root, out, *extra):
    r = cli("train", ticket, "--data-root", root, *BATCH, "--out", out, "--json", *extra)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_tiny_vit_learns_with_its_recipe_and_keeps_its_masks(env, cli, tmp_path):
    out = tmp_path / "run"
    summary = _train(cli, env["ticket"], env["root"], out, "--epochs", "8", "--lr", "3e-3")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1, rows
    assert summary["precision"] in ("bf16", "fp32")  # auto: bf16 where the CPU has it natively
    recipe = json.loads((out / "config.json").read_text())["identity"]["recipe"]
    assert (recipe["name"], recipe["optimizer"], recipe["schedule"], recipe["decay"]) == (
        "vit", "adamw", "cosine", "matrices"
    )  # fmt: skip
    assert recipe["label_smoothing"] == 0.1 and recipe["lr"] == 3e-3
    src, final = read_ticket(env["ticket"]), read_ticket(out / "final.safetensors")
    assert final.arch.name == ARCH and set(final.masks) == set(src.masks)
    for name, mask in src.masks.items():
        assert np.array_equal(final.masks[name].array, mask.array), name
        assert not np.any(final.array(name)[~mask.array]), name  # pruned weights exactly zero
        assert np.any(final.array(name) != src.array(name)), name  # the kept ones trained
    assert summary["sparsity"] == pytest.approx(src.sparsity())


def test_an_interrupted_vit_run_resumes_to_the_uninterrupted_weights(env, cli, tmp_path):
    """AdamW's moments and the cosine schedule resume from the checkpoint exactly."""
    from ettcli.train import Hooks, Interrupted, TrainSettings, train_ticket

    ref, out = tmp_path / "ref", tmp_path / "cut"
    _train(cli, env["ticket"], env["root"], ref, "--epochs", "2", "--precision", "fp32")
    settings = TrainSettings(data_root=str(env["root"]), epochs=2, batch_size=50, precision="fp32")
    with pytest.raises(Interrupted):
        train_ticket(env["ticket"], settings, folder=out, hooks=Hooks(stop=lambda step: step == 8))
    _train(cli, env["ticket"], env["root"], out, "--epochs", "2", "--precision", "fp32")
    a, b = read_ticket(ref / "final.safetensors"), read_ticket(out / "final.safetensors")
    for name, value in a.arrays():
        assert np.array_equal(value, b.array(name)), name


def test_imp_levels_follow_the_ceil_rule_over_the_vits_matrices(env, cli, tmp_path):
    out = tmp_path / "imp"
    args = ["prune", "imp", ARCH, "--data-root", env["root"], "--levels", "2", "--epochs", "1", *BATCH]
    r = cli(*args, "--rewind", "2it", "--out", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    rows = json.loads((out / "levels.json").read_text())
    assert [r["level"] for r in rows] == [0, 1, 2]
    level0 = read_ticket(out / "level_00" / "ticket.safetensors")
    pruned = [n for n in level0.prunable() if n not in ("conv_proj.weight", "heads.head.weight")]
    kept = sum(int(np.prod(level0.tensors[n].shape)) for n in pruned)
    for row in rows[1:]:
        kept -= math.ceil(0.2 * kept)  # 20% of the remaining weights of the layers' matrices, rounded up
        t = read_ticket(out / f"level_{row['level']:02d}" / "ticket.safetensors")
        assert sum(t.masks[n].kept for n in pruned) == kept, row
        assert row["kept"] == t.counts()[1], row
    last = read_ticket(out / "level_02" / "ticket.safetensors")
    assert set(last.masks) == set(pruned)  # patch embedding and head left dense
    assert last.metadata["ett.rewind_step"] == "2it"

    # a level's ticket stretched to 4 layers trains from its rewind step with its masks kept
    from ettcli import stretch

    deep = stretch(last, "vit-4")
    path = tmp_path / "vit4.safetensors"
    deep.save(path)
    summary = _train(cli, path, env["root"], tmp_path / "deep", "--epochs", "1")
    final = read_ticket(tmp_path / "deep" / "final.safetensors")
    assert final.arch.name == "cifar_vit_4_16" and summary["start_step"] == "2it"
    for name, mask in deep.masks.items():
        assert np.array_equal(final.masks[name].array, mask.array), name
        assert not np.any(final.array(name)[~mask.array]), name
    assert summary["sparsity"] == pytest.approx(deep.sparsity())


def test_lmc_on_a_vit_says_there_is_no_batchnorm_to_reestimate(env, cli, tmp_path):
    out = tmp_path / "lmc"
    args = ["lmc", env["ticket"], "--data-root", env["root"], "--epochs", "1", *BATCH, "--alphas", "3"]
    r = cli(*args, "--train-images", "0", "--out", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    assert "no BatchNorm to re-estimate" in " ".join(r.stdout.split())  # the table title, wrapped
    assert "has no BatchNorm layers" in r.stderr
    record = json.loads((out / "lmc.json").read_text())
    assert record["bn_layers"] == 0 and len(record["alphas"]) == 3
