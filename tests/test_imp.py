"""`ett prune imp`: IMP with rewinding on a width-4 ResNet-8 and a few hundred real CIFAR-10 images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_user_error, make_ticket
from train_util import cifar_subset, needs_cifar

from ettcli.ticket import read_ticket

pytestmark = [needs_cifar, pytest.mark.data]
ARGS = ["--epochs", "2", "--batch-size", "50", "--rewind", "2it", "--quiet"]  # 6 steps an epoch


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("imp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("ETT_RUNS", str(base / "runs"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        yield {"base": base, "root": root}


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted 3-level IMP run."""
    from typer.testing import CliRunner

    from ettcli.cli import app

    out = env["base"] / "ref"
    args = ["prune", "imp", "cifar_resnet_8_4", "--data-root", env["root"], "--levels", "3", *ARGS, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return out, [str(a) for a in args]


def _level(out, level):
    return out / f"level_{level:02d}"


def test_levels_follow_the_ceil_rule_and_masks_nest(reference):
    out, _ = reference
    rows = json.loads((out / "levels.json").read_text())
    assert [r["level"] for r in rows] == [0, 1, 2, 3]
    total = rows[0]["prunable"]
    kept = total
    for r in rows[1:]:
        kept -= math.ceil(0.2 * kept)
        assert r["kept"] == kept and r["sparsity"] == pytest.approx(1 - kept / total)
    prev = None
    for level in range(1, 4):
        masks = read_ticket(_level(out, level) / "ticket.safetensors").masks
        if prev is not None:
            for name, m in masks.items():
                assert not np.any(m.array & ~prev[name].array), name  # masks only shrink
        prev = masks


def test_each_level_prunes_the_smallest_magnitudes_of_the_previous_levels_training(reference):
    out, _ = reference
    for level in range(1, 4):
        before = read_ticket(_level(out, level - 1) / "ticket.safetensors")
        trained = read_ticket(_level(out, level - 1) / "final.safetensors")
        now = read_ticket(_level(out, level) / "ticket.safetensors")
        names = before.prunable()
        alive = np.concatenate([before.mask(n).array.ravel() for n in names])
        mags = np.concatenate([np.abs(trained.array(n).astype(np.float64)).ravel() for n in names])
        kept_now = np.concatenate([now.mask(n).array.ravel() for n in names])
        n_prune = math.ceil(0.2 * alive.sum())
        pruned = alive & ~kept_now
        assert pruned.sum() == n_prune
        # every pruned weight is no larger than every surviving one
        assert mags[pruned].max() <= mags[kept_now].min()


def test_each_level_ticket_is_the_rewind_state_under_its_mask(reference):
    out, _ = reference
    rewind = read_ticket(_level(out, 0) / "rewind.safetensors")
    assert rewind.metadata["ett.rewind_step"] == "2it"
    state = dict(rewind.arrays())
    assert any(k.endswith("running_mean") for k in state)
    for level in range(0, 4):
        t = read_ticket(_level(out, level) / "ticket.safetensors")
        assert t.metadata["ett.rewind_step"] == "2it"
        for name, arr in t.arrays():  # unmasked rewind-step weights, BatchNorm buffers included
            assert np.array_equal(arr, state[name]), (level, name)
        summary = json.loads((_level(out, level) / "summary.json").read_text())
        assert summary["start_step"] == ("0it" if level == 0 else "2it") and summary["end_step"] == "2ep"


def test_rerun_skips_finished_levels_and_more_levels_add_to_the_run(reference, cli):
    out, args = reference
    stamp = (_level(out, 2) / "final.safetensors").stat().st_mtime_ns
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert (_level(out, 2) / "final.safetensors").stat().st_mtime_ns == stamp
    r = cli(*[a if a != "3" else "4" for a in args])
    assert r.exit_code == 0, r.stderr
    rows = json.loads((out / "levels.json").read_text())
    assert [row["level"] for row in rows] == [0, 1, 2, 3, 4] and all(row["already_finished"] for row in rows[:4])
    assert (_level(out, 2) / "final.safetensors").stat().st_mtime_ns == stamp


def test_a_rerun_with_fewer_levels_keeps_the_later_levels_in_levels_json(reference, cli):
    out, args = reference
    before = json.loads((out / "levels.json").read_text())
    assert [row["level"] for row in before][:4] == [0, 1, 2, 3]
    r = cli(*[a if a != "3" else "1" for a in args])
    assert r.exit_code == 0, r.stderr
    after = json.loads((out / "levels.json").read_text())
    assert [row["level"] for row in after] == [row["level"] for row in before]  # levels 2, 3 (...) still listed
    assert after[2:] == before[2:] and all(_level(out, row["level"]).is_dir() for row in after)


def test_kill_in_the_middle_of_a_level_then_rerun_equals_an_uninterrupted_run(env, reference, cli):
    ref, args = reference
    out = env["base"] / "killed"
    code = (
        "import os, sys\n"
        "from ettcli.lottery import imp, ImpSpec\n"
        "from ettcli.train import Hooks, TrainSettings\n"
        "def hooks(level):\n"
        "    return Hooks(step=lambda s: os._exit(137) if level == 2 and s == 9 else None)\n"
        "imp('cifar_resnet_8_4', TrainSettings(data_root=sys.argv[1], epochs=2, batch_size=50), levels=3,\n"
        "    out=sys.argv[2], spec=ImpSpec(rewind='2it'), hooks_for=hooks)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(env["root"]), str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 137, p.stderr
    assert (_level(out, 2) / "checkpoint.pt").is_file() and not (_level(out, 2) / "final.safetensors").exists()
    r = cli(*[a if a != str(ref) else str(out) for a in args])
    assert r.exit_code == 0, r.stderr
    for level in range(4):
        for f in ("ticket.safetensors", "final.safetensors"):
            a, b = read_ticket(_level(ref, level) / f), read_ticket(_level(out, level) / f)
            assert a.fingerprint() == b.fingerprint(), (level, f)


def test_vgg_keeps_its_classifier_dense_and_layerwise_scope_prunes_each_layer_alike(env, cli, tmp_path):
    out = tmp_path / "vgg"
    r = cli(
        "prune",
        "imp",
        "cifar_vgg_11_8",
        "--data-root",
        env["root"],
        "--levels",
        "1",
        *ARGS,
        "--scope",
        "layerwise",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.stderr
    t = read_ticket(_level(out, 1) / "ticket.safetensors")
    assert "fc.weight" not in t.masks and t.mask("fc.weight").kept == t.array("fc.weight").size
    for name, m in t.masks.items():
        assert m.numel - m.kept == math.ceil(0.2 * m.numel), name


def test_bad_inputs(env, cli, tmp_path, reference):
    root = env["root"]
    sparse = tmp_path / "sparse.safetensors"
    make_ticket("cifar_resnet_8_4", 0.5).save(sparse)
    assert_user_error(cli("prune", "imp", sparse, "--data-root", root, *ARGS), "IMP starts from a dense network")
    assert_user_error(cli("prune", "imp", "cifar_resnet_8_4", "--levels", "0", "--data-root", root), "levels 0")
    assert_user_error(cli("prune", "imp", "cifar_resnet_8_4", "--rate", "1.5", "--data-root", root), "rate 1.5")
    assert_user_error(
        cli("prune", "imp", "cifar_resnet_8_4", "--exclude", "fc.bias", "--data-root", root), "cannot exclude 'fc.bias'"
    )
    out, args = reference
    r = cli(*[a if a != "2ep" else "2ep" for a in args], "--lr", "0.05")
    assert_user_error(r, "holds a run with different settings", "settings.lr")
    assert_user_error(
        cli(
            "prune",
            "imp",
            "cifar_resnet_8_4",
            "--rewind",
            "9ep",
            "--data-root",
            root,
            *ARGS[:4],
            "--out",
            tmp_path / "late",
        ),
        "rewind step 9ep (54 iterations) lies past the end of training at 2ep",
        "choose an earlier --rewind",
    )


def test_levels_that_would_empty_the_network_are_refused_and_layer_collapse_is_warned(env, cli, tmp_path):
    root = env["root"]
    many = tmp_path / "many"
    r = cli("prune", "imp", "cifar_resnet_8_4", "--levels", "1000", "--data-root", root, *ARGS, "--out", many)
    assert_user_error(r, "levels 1000: level ", "would keep none of the", "at most ")
    assert not many.exists()

    # layerwise, each tensor loses ceil(20%) a level: the smallest (a 32-weight shortcut) is empty at level 12
    out = tmp_path / "deep"
    args = ["--epochs", "1", "--batch-size", "50", "--rewind", "2it", "--quiet", "--scope", "layerwise"]
    r = cli("prune", "imp", "cifar_resnet_8_4", "--levels", "12", "--data-root", root, *args, "--out", out)
    assert r.exit_code == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "layer collapse" in line]
    emptied = []
    for level in range(1, 13):
        now, was = (
            read_ticket(_level(out, level) / "ticket.safetensors"),
            read_ticket(_level(out, level - 1) / "ticket.safetensors"),
        )
        gone = [n for n, m in now.masks.items() if m.kept == 0 and (n not in was.masks or was.masks[n].kept > 0)]
        if gone:
            emptied.append(f"ett: warning: layer collapse: IMP level {level} keeps no weight in {', '.join(gone)}; "
                           "no signal passes through that layer")  # fmt: skip
    assert said == emptied and emptied and "level 12" in emptied[0]


def test_a_level_prunes_through_the_registry_exactly_as_ett_prune_magnitude_does(reference):
    from ettcli.lottery import prune_level
    from ettcli.pruning import PruneOptions, prune_run

    out, _ = reference
    # level 1 from the dense network: `ett prune magnitude --like LEVEL1` on level 0's training keeps its mask
    level1 = read_ticket(_level(out, 1) / "ticket.safetensors")
    trained = read_ticket(_level(out, 0) / "final.safetensors")
    same = prune_run(trained, "magnitude", PruneOptions(like=level1)).ticket
    for name in level1.prunable():
        assert np.array_equal(same.mask(name).array, level1.mask(name).array), name
    # a later level: the registry's magnitude method within the level before's mask gives the level's mask
    level2 = read_ticket(_level(out, 2) / "ticket.safetensors")
    trained = read_ticket(_level(out, 1) / "final.safetensors")
    masks = prune_level(trained, {n: level1.mask(n) for n in level1.prunable()}, 0.2, "global")
    for name in level2.prunable():
        assert np.array_equal(masks[name].array, level2.mask(name).array), name


def test_train_ticket_returns_the_final_ticket_it_wrote(env, reference, tmp_path):
    from ettcli.train import TrainSettings, train_ticket

    out, _ = reference
    settings = TrainSettings(data_root=str(env["root"]), epochs=2, batch_size=50)
    level = _level(out, 1)
    for folder in (tmp_path / "run", level):  # trained by this call, and found finished
        res = train_ticket(level / "ticket.safetensors", settings, folder=folder)
        assert res.already_finished == (folder == level)
        on_disk = read_ticket(folder / "final.safetensors")
        assert dict(res.ticket.masks) == dict(on_disk.masks) and res.ticket.metadata["ett.step"] == "2ep"
        for name, array in on_disk.arrays():
            assert np.array_equal(res.ticket.array(name), array), name
