"""`ett lmc`: interpolation, BatchNorm re-estimation, instability, and the command on real CIFAR-10 images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_user_error, make_ticket
from torch import nn
from train_util import cifar_subset, needs_cifar

from ettcli.errors import EttError
from ettcli.lmc import BN_SEED, alpha_grid, bn_indices, instability, interpolate, reset_bn
from ettcli.models import model_from_ticket
from ettcli.ticket import Ticket, read_ticket

R8 = "cifar_resnet_8_4"


def _pair(sparsity=0.5):
    """Two tickets with the same masks and different weights (and different BatchNorm counters)."""
    a = make_ticket(R8, sparsity=sparsity, seed=0)
    other = dict(make_ticket(R8, seed=1).arrays())
    other = {k: (np.full_like(v, 7) if k.endswith("num_batches_tracked") else v) for k, v in other.items()}
    other = {k: (v + 0.5 if k.endswith("running_var") else v) for k, v in other.items()}
    return a, Ticket.from_arrays(other, a.masks, {})


def _network_state(ticket):
    """What the network of a ticket holds (its masks applied)."""
    return {k: v.clone() for k, v in model_from_ticket(ticket).state_dict().items()}


# --- interpolate --------------------------------------------------------------------------------------------
def test_interpolation_endpoints_are_the_networks_exactly_and_masked_weights_stay_zero():
    a, b = _pair()
    sa, sb = _network_state(a), _network_state(b)
    at0, at1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for name in sa:
        assert np.array_equal(at0.array(name), sa[name].numpy()), name
        if name.endswith("num_batches_tracked"):
            assert at1.array(name) == sa[name].numpy() == 0 and sb[name] == 7  # integer buffers: A's
        else:
            assert np.array_equal(at1.array(name), sb[name].numpy()), name
    assert set(at0.masks) == set(a.masks)
    for alpha in [*alpha_grid(11), 0.37, 1.5]:
        mixed = interpolate(a, b, alpha)
        for name, mask in a.masks.items():
            w = mixed.array(name)
            assert np.all(w[~mask.array] == 0), (alpha, name)
            want = (1 - alpha) * sa[name].numpy() + alpha * sb[name].numpy()
            np.testing.assert_allclose(w[mask.array], want[mask.array], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            mixed.array("bn.running_var"),
            (1 - alpha) * sa["bn.running_var"].numpy() + alpha * sb["bn.running_var"].numpy(),
            rtol=1e-6,
        )


def test_interpolation_of_state_dicts_applies_the_given_masks():
    a, b = _pair()
    sa = {k: torch.from_numpy(np.array(v)) for k, v in a.arrays()}  # unmasked rewind values
    sb = {k: torch.from_numpy(np.array(v)) for k, v in b.arrays()}
    mixed = interpolate(sa, sb, 0.5, masks=a.masks)
    assert isinstance(mixed, dict)
    for name, mask in a.masks.items():
        keep = torch.from_numpy(mask.array)
        assert torch.all(mixed[name][~keep] == 0)
        assert torch.equal(mixed[name][keep], torch.lerp(sa[name], sb[name], 0.5)[keep])
    assert torch.equal(interpolate(sa, sb, 0.0)["conv.weight"], sa["conv.weight"])  # no masks: plain lerp


def test_interpolation_refuses_other_masks_and_architectures():
    a, _ = _pair(0.5)
    b = make_ticket(R8, sparsity=0.6, seed=0)
    with pytest.raises(EttError, match="different masks"):
        interpolate(a, b, 0.5)
    with pytest.raises(EttError, match="is cifar_resnet_8_4 but the second ticket is cifar_resnet_14_4"):
        interpolate(a, make_ticket("cifar_resnet_14_4", sparsity=0.5), 0.5)
    sa = {k: torch.from_numpy(np.array(v)) for k, v in a.arrays()}
    with pytest.raises(EttError, match="different tensors"):
        interpolate(sa, {k: v for k, v in sa.items() if k != "fc.bias"}, 0.5)


# --- reset_bn -------------------------------------------------------------------------------------------------
def test_bn_reestimation_equals_the_statistics_computed_directly():
    torch.manual_seed(0)
    model = model_from_ticket(make_ticket(R8, sparsity=0.5, seed=3))
    batches = [torch.randn(16, 3, 32, 32) * 2 + 0.3 for _ in range(4)]
    # the direct computation: every BatchNorm's input in a train-mode forward, then per-batch statistics
    twin = model_from_ticket(make_ticket(R8, sparsity=0.5, seed=3)).train()
    seen: dict[str, list[torch.Tensor]] = {}
    for name, m in twin.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, inp, out, name=name: seen.setdefault(name, []).append(inp[0].detach()))
    with torch.no_grad():
        for x in batches:
            twin(x)
    first_input = [torch.nn.functional.conv2d(x, model.conv.weight, padding=1) for x in batches]  # the stem BN's

    assert reset_bn(model, ((x, None) for x in batches)) == 9  # stem, 3 blocks x 2, 2 shortcuts
    assert not model.training
    bns = dict(model.named_modules())
    for name, inputs in seen.items():
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
        var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
        torch.testing.assert_close(bns[name].running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bns[name].running_var, var, rtol=1e-5, atol=1e-6)
        assert int(bns[name].num_batches_tracked) == 4 and bns[name].momentum == 0.1
    stem = torch.stack([x.mean(dim=(0, 2, 3)) for x in first_input]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, stem, rtol=1e-5, atol=1e-6)
    # the statistics depend on the batches only, not on what the layers held before
    model.bn.running_mean.fill_(5.0)
    before = model.bn.running_var.clone()
    reset_bn(model, batches)
    torch.testing.assert_close(model.bn.running_mean, stem, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.bn.running_var, before)


def test_bn_batches_are_the_first_batches_of_epoch_0_with_or_without_augmentation():
    import itertools

    from ettcli.data import InMemory, get_dataset
    from ettcli.feeders import MemoryFeeder

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    data = InMemory(x, np.arange(40), x[:8], np.arange(8), [], "synthetic")  # labels name the images
    feeder = MemoryFeeder(data, get_dataset("cifar10"), 8, torch.device("cpu"), seed=BN_SEED)
    idx = bn_indices(40, 3, 8)
    augmented = list(itertools.islice(feeder.batches(0), 3))
    plain = list(feeder.plain_train_batches(idx, 8))
    assert len(plain) == 3 and len(set(idx.tolist())) == 24
    for (xa, ya), (xp, yp), i in zip(augmented, plain, idx.split(8)):
        assert torch.equal(ya, yp) and torch.equal(yp, i)  # the same images, in the same batches
        assert torch.equal(xp, feeder.normalise(torch.from_numpy(x[i.numpy()])))  # un-augmented
        assert not torch.equal(xa, xp)  # cropped and flipped
    with pytest.raises(EttError, match="need 48 training images but the dataset has 40"):
        bn_indices(40, 6, 8)


def test_reset_bn_leaves_a_network_without_batchnorm_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).train()
    assert reset_bn(model, [torch.randn(2, 3, 8, 8)]) == 0 and not model.training
    with pytest.raises(EttError, match="no batches"):
        reset_bn(model_from_ticket(make_ticket(R8)), [])


# --- instability --------------------------------------------------------------------------------------------
def test_instability_on_hand_made_error_curves():
    assert instability([10.0, 12.0, 30.0, 14.0, 12.0]) == 30.0 - 11.0
    assert instability([10.0, 11.0, 12.0]) == 1.0  # the higher endpoint counts: never below 0
    assert instability([8.5, 8.5, 8.5, 8.5]) == 0.0
    assert instability([20.0, 5.0, 10.0]) == 5.0
    with pytest.raises(EttError, match="both endpoints"):
        instability([3.0])
    assert alpha_grid(11)[0] == 0.0 and alpha_grid(11)[-1] == 1.0 and alpha_grid(11)[3] == 0.3
    with pytest.raises(EttError, match="at least its two endpoints"):
        alpha_grid(1)


# --- the command: input refused before any work -------------------------------------------------------------
def test_pair_refuses_other_masks_and_architectures(cli, ticket_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_RUNS", str(tmp_path / "runs"))
    a = ticket_file(sparsity=0.5, name="a.safetensors")
    b = ticket_file(sparsity=0.7, name="b.safetensors")
    c = ticket_file("cifar_resnet_14_4", sparsity=0.5, name="c.safetensors")
    out = tmp_path / "lmc"
    assert_user_error(
        cli("lmc", "--pair", a, b, "--out", out), "different masks", "tensors differ, first blocks.0.conv1.weight_mask"
    )
    assert_user_error(cli("lmc", "--pair", a, c, "--out", out), "is cifar_resnet_8_4 but", "is cifar_resnet_14_4")
    assert_user_error(cli("lmc", "--pair", a, a, "--epochs", "2"), "--epochs trains the copies", "drop --epochs")
    assert_user_error(cli("lmc", "run", a, "--pair", a, a), "not both")
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_pair_of_one_network_or_with_an_untrained_end_is_warned_about(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_RUNS", str(tmp_path / "runs"))
    a, b = _pair()
    trained = Ticket.from_arrays(dict(b.arrays()), b.masks, {"ett.step": "2ep", "ett.trained_from_step": "0it"})
    paths = {"a": tmp_path / "a.safetensors", "b": tmp_path / "b.safetensors"}
    a.save(paths["a"])
    trained.save(paths["b"])
    nowhere = tmp_path / "nowhere"  # the warnings come before the data is loaded

    def stderr(x, y):
        r = cli("lmc", "--pair", x, y, "--data-root", nowhere)
        assert r.exit_code == 2
        return r.stderr.splitlines()

    same = stderr(paths["a"], paths["a"])
    assert same[0].startswith("ett: warning: --pair:") and "hold the same weights" in same[0]
    assert same[1].startswith("ett: error:") and len(same) == 2
    untrained = stderr(paths["a"], paths["b"])
    assert f"--pair: {paths['a']} records no training" in untrained[0] and len(untrained) == 2
    both = Ticket.from_arrays(dict(a.arrays()), a.masks, {"ett.step": "2ep"})
    both.save(paths["a"])
    assert len(stderr(paths["a"], paths["b"])) == 1  # two trainings: no warning


def test_bad_options_and_missing_data_give_one_line_and_no_output(cli, ticket_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_RUNS", str(tmp_path / "runs"))
    t = ticket_file()
    nowhere = tmp_path / "nowhere"
    assert_user_error(cli("lmc", t, "--alphas", "1", "--data-root", nowhere), "alphas 1", "at least its two endpoints")
    assert_user_error(cli("lmc", t, "--bn-batches", "0", "--data-root", nowhere), "bn-batches 0", "--no-bn-reset")
    assert_user_error(cli("lmc", t, "--seeds", "3,3", "--data-root", nowhere), "seeds '3,3'", "two different")
    assert_user_error(cli("lmc", t, "--seeds", "a", "--data-root", nowhere), "seeds 'a'")
    assert_user_error(cli("lmc", t, "--train-images", "-1", "--data-root", nowhere), "train-images -1")
    assert_user_error(
        cli("lmc", t, "--bn-data", "test", "--data-root", nowhere), "bn-data 'test'", "augmented or plain"
    )
    assert_user_error(cli("lmc", t, "--data-root", nowhere), "does not exist")
    a, b = (tmp_path / f"{x}.safetensors" for x in "ab")
    for ticket, path in zip(_pair(), (a, b)):  # two networks under one mask (the same one twice is warned about)
        ticket.save(path)
    assert_user_error(cli("lmc", "--pair", a, b, "--data-root", nowhere), "does not exist")
    assert_user_error(cli("lmc", "run"), "give the ticket to train")
    assert not (tmp_path / "runs").exists()


def test_plot_refuses_folders_without_results_and_explains_a_missing_matplotlib(cli, tmp_path, monkeypatch):
    fig = tmp_path / "fig.png"
    assert_user_error(cli("lmc", "plot", tmp_path, "-o", fig), "no lmc.json there")
    (tmp_path / "lmc.json").write_text(json.dumps(_fake_record()))
    assert_user_error(cli("lmc", "plot", tmp_path, "-o", tmp_path / "fig.gif"), "png, .pdf or .svg")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    assert_user_error(cli("lmc", "plot", tmp_path, "-o", fig), "pip install 'ettcli[plots]'")
    assert not fig.exists()


def _fake_record():
    """A written-out measurement's shape, for the plot's input checks only (no values are asserted)."""
    return {"alphas": [0.0, 1.0], "test": {"error": [1.0, 2.0], "instability": 0.5}, "settings": {"bn_reset": True}}


# --- the command on real images -----------------------------------------------------------------------------
# on the CPU, where training and evaluation are deterministic, so endpoint accuracies can be compared exactly
TRAIN = ["--device", "cpu", "--epochs", "2", "--batch-size", "50"]
ARGS = [*TRAIN, "--alphas", "5", "--bn-batches", "2", "--train-images", "120"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("lmc")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("ETT_RUNS", str(base / "runs"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        ticket = base / "r8_80.safetensors"
        make_ticket(R8, sparsity=0.8, seed=1).save(ticket)
        yield {"base": base, "root": root, "ticket": ticket}


def _invoke(*args):
    from typer.testing import CliRunner

    from ettcli.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


@pytest.fixture(scope="module")
def measured(env):
    """The same ticket measured with the BatchNorm reset (training both copies) and without (reusing them)."""
    with_reset = env["base"] / "with"
    r = _invoke("lmc", env["ticket"], "--data-root", env["root"], *ARGS, "--out", with_reset, "--json")
    finals = [env["base"] / "runs" / p for p in sorted(x.name for x in (env["base"] / "runs").iterdir())]
    stamps = {p: (p / "final.safetensors").stat().st_mtime_ns for p in finals if (p / "final.safetensors").exists()}
    without = env["base"] / "without"
    args = ["lmc", "run", env["ticket"], "--data-root", env["root"], *ARGS, "--no-bn-reset", "--out", without]
    text = _invoke(*args)
    return {
        "reset": json.loads(r.stdout),
        "plain": json.loads((without / "lmc.json").read_text()),
        "stamps": stamps,
        "text": text.stdout,
    }


@needs_cifar
@pytest.mark.data
def test_lmc_trains_two_copies_and_writes_the_curves(measured):
    rec = measured["reset"]
    assert rec == json.loads((Path(rec["out"]) / "lmc.json").read_text())
    assert rec["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r["seed"] for r in rec["runs"]] == [0, 1] and not any(r["already_finished"] for r in rec["runs"])
    a, b = (read_ticket(p) for p in rec["tickets"])
    assert any(not np.array_equal(a.array(n), b.array(n)) for n in a.masks)  # the seeds did change the training
    assert rec["settings"]["bn_reset"] and rec["settings"]["bn_batch_size"] == 50 and rec["bn_layers"] == 9
    assert rec["settings"]["bn_data"] == "augmented"
    assert rec["sparsity"] == pytest.approx(0.8, abs=1e-3) and rec["rewind_step"] == "0it"
    for split, images in (("test", 100), ("train", 120)):
        curve = rec[split]
        assert len(curve["accuracy"]) == len(curve["loss"]) == 5
        assert curve["error"] == [100 * (1 - x) for x in curve["accuracy"]]
        assert curve["instability"] == instability(curve["error"]) >= 0
        assert all(round(x * images) == pytest.approx(x * images, abs=1e-6) for x in curve["accuracy"])
    assert rec["train"]["images"] == 120 and set(rec["seconds"]) >= {"bn_reset", "test", "train", "evaluation"}


@needs_cifar
@pytest.mark.data
def test_without_the_reset_the_endpoints_score_exactly_as_their_training_runs_did(measured):
    plain, reset = measured["plain"], measured["reset"]
    assert not plain["settings"]["bn_reset"] and plain["settings"]["bn_batches"] is None
    acc = plain["test"]["accuracy"]
    assert acc[0] == plain["runs"][0]["final_test_accuracy"] and acc[-1] == plain["runs"][1]["final_test_accuracy"]
    assert plain["tickets"] == reset["tickets"]
    # the reset re-estimates the endpoints' statistics too, on other images than training saw last
    assert reset["test"]["loss"][0] != plain["test"]["loss"][0]


@needs_cifar
@pytest.mark.data
def test_a_finished_run_is_reused_not_trained_again(measured):
    plain = measured["plain"]
    assert all(r["already_finished"] for r in plain["runs"])
    assert len(measured["stamps"]) == 2
    for folder, stamp in measured["stamps"].items():
        assert (folder / "final.safetensors").stat().st_mtime_ns == stamp
    text = measured["text"]
    assert "test error " in text and "instability" in text and "alpha" in text and "lmc.json" in text


@needs_cifar
@pytest.mark.data
def test_two_copies_of_one_network_have_instability_zero(env, measured, tmp_path):
    final = measured["reset"]["tickets"][0]
    out = tmp_path / "same"
    options = ["--device", "cpu", "--batch-size", "50", "--bn-batches", "2", "--train-images", "120", "--alphas", "4"]
    options += ["--bn-data", "plain"]  # the default (augmented) runs in the tests above
    _invoke("lmc", "--pair", final, final, "--data-root", env["root"], *options, "--out", out, "-q")
    rec = json.loads((out / "lmc.json").read_text())
    assert rec["runs"] is None and rec["kind"] == "lmc-pair" and rec["settings"]["bn_data"] == "plain"
    for split in ("test", "train"):
        assert rec[split]["instability"] == 0.0
        assert len(set(rec[split]["error"])) == 1 and len(set(rec[split]["loss"])) == 1


@needs_cifar
@pytest.mark.data
def test_a_training_subset_is_where_the_train_error_and_the_statistics_come_from(env, measured, tmp_path):
    from ettcli.lmc import bn_indices, train_subset

    final = measured["reset"]["tickets"][0]
    out = tmp_path / "subset"
    options = ["--device", "cpu", "--batch-size", "50", "--bn-batches", "2", "--alphas", "2", "--subset", "110"]
    _invoke("lmc", "--pair", final, final, "--data-root", env["root"], *options, "--out", out, "-q")
    rec = json.loads((out / "lmc.json").read_text())
    # the copies trained on 110 images: the train evaluation takes all of them and no other
    assert rec["settings"]["subset"] == 110 and rec["settings"]["train_set_size"] == 110
    assert rec["train"]["images"] == 110 == len(train_subset(110, 10_000))
    assert int(bn_indices(110, 2, 50).max()) < 110
    assert "subset" not in measured["reset"]["settings"]  # runs without a subset keep their identity


@needs_cifar
@pytest.mark.data
def test_an_output_folder_of_another_measurement_is_refused(env, measured, cli):
    out = measured["reset"]["out"]
    r = cli("lmc", env["ticket"], "--data-root", env["root"], *ARGS[:-1], "60", "--out", out)
    assert_user_error(r, "holds a run with different settings", "train_images: 120 there, 60 now")


@needs_cifar
@pytest.mark.data
def test_plot_draws_several_measurements_on_one_figure(measured, cli, tmp_path):
    pytest.importorskip("matplotlib")
    fig = tmp_path / "lmc.png"
    folders = [measured["reset"]["out"], measured["plain"]["out"]]
    r = cli("lmc", "plot", *folders, "-o", fig, "--label", "reset", "--label", "no reset")
    assert r.exit_code == 0, r.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 5000
    r = cli("lmc", "plot", measured["reset"]["out"], "-o", tmp_path / "train.svg", "--split", "train")
    assert r.exit_code == 0 and (tmp_path / "train.svg").read_text().startswith("<?xml")
