"""`ett train` end to end on a few hundred real CIFAR-10 images with a width-4 ResNet-8."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_user_error, make_ticket
from train_util import cifar_subset, needs_cifar, needs_cuda

from ettcli.recipe import customise, recipe_for
from ettcli.ticket import read_ticket

pytestmark = [needs_cifar, pytest.mark.data]
BATCH = ["--batch-size", "50"]  # 300 training images: 6 steps an epoch


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The CIFAR subset, a shared decode cache, and a sparse ticket, for the whole module."""
    base = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("ETT_RUNS", str(base / "runs"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        ticket = base / "r8_80.safetensors"
        make_ticket("cifar_resnet_8_4", sparsity=0.8, seed=1).save(ticket)
        yield {"base": base, "root": root, "ticket": ticket}


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted 2-epoch run that the resume tests compare against."""
    from typer.testing import CliRunner

    from ettcli.cli import app

    out = env["base"] / "ref"
    args = ["train", env["ticket"], "--data-root", env["root"], "--epochs", "2", *BATCH, "--out", out, "--quiet"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return out, args


def _weights(path):
    return dict(read_ticket(path).arrays())


def test_tiny_network_learns_on_real_images(env, cli, tmp_path):
    ticket = tmp_path / "dense.safetensors"
    assert cli("init", "cifar_resnet_8_4", "-o", ticket).exit_code == 0
    out = tmp_path / "run"
    r = cli("train", ticket, "--data-root", env["root"], "--epochs", "15", *BATCH, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)  # stdout holds the summary and nothing else
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and [row["epoch"] for row in rows] == list(range(1, 16))
    assert rows[-1]["train_accuracy"] > 0.3, rows[-1]  # chance is 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
    assert summary["final_train_accuracy"] == rows[-1]["train_accuracy"]
    assert summary["final_test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(row["test_accuracy"] for row in rows)
    assert summary["best_test_accuracy"] > 0.15
    assert summary["sparsity"] == 0.0 and summary["epochs"] == 15 and summary["images_per_second"] > 0
    assert summary["device"].startswith("cpu") and summary["precision"] in ("bf16", "fp32")
    for key in ("epoch", "step", "lr", "train_loss", "test_loss", "images_per_second", "elapsed_seconds"):
        assert key in rows[0]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["identity"]["recipe"]["milestones"] == ["7ep3it", "11ep2it"]  # 45 and 67.5 (rounded to even) of 90 steps


def test_pruned_weights_stay_zero_in_final_file_and_checkpoint(env, reference):
    out, _ = reference
    src = read_ticket(env["ticket"])
    final = read_ticket(out / "final.safetensors")
    assert set(final.tensors) == set(src.tensors) and set(final.masks) == set(src.masks)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    changed = 0
    for name, mask in src.masks.items():
        assert np.array_equal(final.masks[name].array, mask.array)
        w = final.array(name)
        assert np.all(w[~mask.array] == 0), name
        # the checkpoint is written right after the last evaluation, so the evaluated weights were zero too
        assert torch.all(ck["model"][name][~torch.from_numpy(np.array(mask.array))] == 0), name
        changed += int(np.sum(w[mask.array] != src.array(name)[mask.array]))
    assert changed > 0  # the kept weights did train
    assert final.metadata["ett.dataset"] == "cifar10" and "ett.test_accuracy" in final.metadata
    assert json.loads(final.metadata["ett.recipe"])["epochs"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.8, abs=1e-3)


def _settings(args):
    """The TrainSettings and folder that the reference CLI arguments describe."""
    from ettcli.train import TrainSettings

    return TrainSettings(data_root=str(args[args.index("--data-root") + 1]), epochs=2, batch_size=50)


def test_stop_request_then_rerun_gives_the_uninterrupted_weights(env, reference, cli):
    from ettcli.train import Hooks, Interrupted, train_ticket

    ref, args = reference
    out = env["base"] / "interrupted"
    with pytest.raises(Interrupted) as info:  # mid-way through the second epoch
        train_ticket(env["ticket"], _settings(args), folder=out, hooks=Hooks(stop=lambda step: step == 8))
    assert info.value.step == "1ep2it" and info.value.signum is None
    assert (out / "checkpoint.pt").is_file() and not (out / "final.safetensors").exists()
    r = cli(*[a if a != ref else out for a in args])
    assert r.exit_code == 0, r.stderr
    a, b = _weights(ref / "final.safetensors"), _weights(out / "final.safetensors")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    ra = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    strip = ("images_per_second", "elapsed_seconds")
    assert [{k: v for k, v in x.items() if k not in strip} for x in ra] == [
        {k: v for k, v in x.items() if k not in strip} for x in rb
    ]


def test_hard_kill_after_an_epoch_then_rerun_gives_the_same_weights(env, reference, cli):
    ref, args = reference
    out = env["base"] / "killed"
    code = (
        "import os, sys\n"
        "from ettcli.train import Hooks, TrainSettings, train_ticket\n"
        "def kill(step):\n"
        "    if step == 9:\n"
        "        os._exit(137)\n"
        "train_ticket(sys.argv[1], TrainSettings(data_root=sys.argv[2], epochs=2, batch_size=50),\n"
        "             folder=sys.argv[3], hooks=Hooks(step=kill))\n"
    )
    child_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", code, str(env["ticket"]), str(env["root"]), str(out)]
    p = subprocess.run(argv, env=child_env, capture_output=True, text=True)
    assert p.returncode == 137, p.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 finished and checkpointed
    assert (out / "lock").exists()  # the killed process's lock is left behind: stale, and taken over
    r = cli(*[str(a if a != ref else out) for a in args])
    assert r.exit_code == 0, r.stderr
    assert not (out / "lock").exists()
    a, b = _weights(ref / "final.safetensors"), _weights(out / "final.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_run_another_live_process_is_training_is_refused_and_left_alone(env, reference, cli):
    ref, args = reference
    out = env["base"] / "busy"
    code = (
        "import pathlib, sys, time\n"
        "from ettcli.train import Hooks, TrainSettings, train_ticket\n"
        "out = pathlib.Path(sys.argv[3])\n"
        "def wait(step):\n"
        "    if step == 3:\n"
        "        (out.parent / 'busy.at3').write_text('')\n"
        "        while not (out.parent / 'busy.go').exists():\n"
        "            time.sleep(0.05)\n"
        "train_ticket(sys.argv[1], TrainSettings(data_root=sys.argv[2], epochs=2, batch_size=50),\n"
        "             folder=out, hooks=Hooks(step=wait))\n"
    )
    child_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", code, str(env["ticket"]), str(env["root"]), str(out)]
    child = subprocess.Popen(argv, env=child_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.parent / "busy.at3").exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out.parent / "busy.at3").exists(), child.stderr.read() if child.poll() is not None else "timeout"
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        r = cli(*[str(a if a != ref else out) for a in args])
        assert_user_error(r, f"{out}: another process is training this run", f"pid {child.pid}", "another folder")
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    finally:
        (out.parent / "busy.go").write_text("")
        assert child.wait(timeout=120) == 0, child.stderr.read()
    assert not (out / "lock").exists()  # given back at the end
    r = cli(*[str(a if a != ref else out) for a in args])
    assert r.exit_code == 0 and "already finished" in r.stdout, r.stderr
    a, b = _weights(ref / "final.safetensors"), _weights(out / "final.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_finished_run_is_reported_not_redone_and_other_settings_are_refused(reference, cli):
    out, args = reference
    before = (out / "final.safetensors").stat().st_mtime_ns
    r = cli(*args[:-1], "--json")  # the same command, with --json instead of --quiet
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["already_finished"] is True and info["final_test_accuracy"] >= 0
    assert (out / "final.safetensors").stat().st_mtime_ns == before
    r = cli(*args)
    assert "already finished" in r.stdout
    r = cli(*args, "--lr", "0.2")
    assert_user_error(r, "holds a run with different settings (recipe.lr: 0.1 there, 0.2 now)", "choose another folder")
    weights = _weights(out / "final.safetensors")
    r = cli(*args, "--force")
    assert r.exit_code == 0 and "already finished" not in r.stdout, r.stderr
    assert (out / "final.safetensors").stat().st_mtime_ns != before
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # redone, not appended to
    again = _weights(out / "final.safetensors")
    assert all(np.array_equal(weights[k], again[k]) for k in weights)  # CPU training is deterministic


def test_training_starts_at_the_rewind_step(env, cli, tmp_path):
    ticket = read_ticket(env["ticket"])
    ticket.metadata["ett.rewind_step"] = "1ep2it"
    path = tmp_path / "rewound.safetensors"
    ticket.save(path)
    out = tmp_path / "run"
    r = cli("train", path, "--data-root", env["root"], "--epochs", "3", *BATCH, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["start_step"] == "1ep2it" and summary["steps"] == 3 * 6 - 8
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in rows] == [2, 3]
    recipe = customise(recipe_for("cifar10"), 6, epochs=3, batch_size=50)
    assert rows[0]["lr"] == pytest.approx(recipe.lr_at(11, 6))  # the last step of epoch 2 (milestone at 2ep)
    assert rows[1]["lr"] == pytest.approx(0.001)
    r = cli("train", path, "--data-root", env["root"], "--epochs", "1", *BATCH, "--from-step", "0it", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 6
    r = cli("train", path, "--data-root", env["root"], "--epochs", "1", *BATCH, "--out", tmp_path / "x")
    assert_user_error(r, "starts at step 1ep2it", "more epochs")


def test_bad_inputs_give_one_line_and_exit_2(env, cli, tmp_path):
    t = env["ticket"]
    root = env["root"]
    assert_user_error(cli("train", t, "--data-root", tmp_path / "nowhere"), "data root", "does not exist")
    partial = tmp_path / "partial"
    shutil.copytree(root, partial)
    for cls in ("cat", "dog", "frog"):
        shutil.rmtree(partial / "train" / cls)
    assert_user_error(cli("train", t, "--data-root", partial), "found 7 of 10 class folders under", "train")
    assert_user_error(cli("train", t, "--dataset", "mnist", "--data-root", root), "unknown dataset 'mnist'")
    assert_user_error(cli("train", t, "--data-root", root, "--epochs", "0"), "epochs 0")
    wide = tmp_path / "c100.safetensors"
    make_ticket("cifar_resnet_8_4", num_classes=100).save(wide)
    assert_user_error(cli("train", wide, "--data-root", root), "classifier has 100 outputs", "cifar10 has 10 classes")
    assert_user_error(cli("train", t, "--dataset", "cifar100", "--data-root", root), "cifar100 has 100 classes")
    from safetensors.numpy import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"encoder.proj.weight": np.zeros((4, 4), np.float32)}, str(odd))
    r = cli("train", odd, "--data-root", root)
    assert_user_error(r)
    assert_user_error(cli("train", t, "--data-root", root, "--device", "tpu"), "device tpu")


@needs_cuda
@pytest.mark.gpu
def test_gpu_run_with_auto_precision(env, cli, tmp_path):
    out = tmp_path / "gpu"
    r = cli("train", env["ticket"], "--data-root", env["root"], "--epochs", "2", *BATCH, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["device"].startswith("cuda") and summary["precision"] in ("bf16", "fp16")
    final = read_ticket(out / "final.safetensors")
    for name, mask in final.masks.items():
        assert np.all(final.array(name)[~mask.array] == 0)


def test_real_ctrl_c_writes_a_checkpoint_and_exits_130(env, tmp_path):
    import signal
    import time

    out = tmp_path / "sig"
    args = [sys.executable, "-m", "ettcli", "train", str(env["ticket"]), "--data-root", str(env["root"])]
    args += ["--epochs", "300", *BATCH, "--out", str(out), "--quiet"]
    child_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(args, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted by SIGINT at step" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 6 <= ck["loop"]["step"] < 300 * 6
    assert not (out / "final.safetensors").exists()


def _level_folder(folder, ticket):
    """An open_lth level folder (mask.pth + the start-step model) holding ``ticket``."""
    folder.mkdir(parents=True)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ticket.arrays()}
    torch.save(state, folder / "model_ep0_it0.pth")
    masks = {n: torch.from_numpy(ticket.mask(n).array.astype(np.int32)) for n in ticket.prunable()}
    torch.save(masks, folder / "mask.pth")
    return folder


def test_two_open_lth_levels_train_as_two_runs(env, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_RUNS", str(tmp_path / "runs"))
    l3 = _level_folder(tmp_path / "lottery" / "level_3" / "main", make_ticket("cifar_resnet_8_4", 0.488, seed=3))
    l5 = _level_folder(tmp_path / "lottery" / "level_5" / "main", make_ticket("cifar_resnet_8_4", 0.672, seed=3))
    outs = []
    for level in (l3, l5):
        r = cli("train", level, "--data-root", env["root"], "--epochs", "1", *BATCH, "--json")
        assert r.exit_code == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["already_finished"] is False
        outs.append(info["out"])
    assert outs[0] != outs[1]
    assert "level_3-main" in outs[0] and "level_5-main" in outs[1]
    assert json.loads(r.stdout)["sparsity"] == pytest.approx(0.672, abs=1e-3)
    # the identity follows the content: the same level with other weights is another run
    again = cli("train", l3, "--data-root", env["root"], "--epochs", "1", *BATCH, "--json")
    assert json.loads(again.stdout)["already_finished"] is True
    torch.save(torch.load(l5 / "mask.pth"), l3 / "mask.pth")  # level 3's weights under level 5's mask
    changed = cli("train", l3, "--data-root", env["root"], "--epochs", "1", *BATCH, "--json")
    assert changed.exit_code == 0 and json.loads(changed.stdout)["already_finished"] is False
    assert json.loads(changed.stdout)["out"] not in outs


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_write_a_checkpoint_like_ctrl_c(env, tmp_path, signame):
    import signal
    import time

    out = tmp_path / "sig"
    args = [sys.executable, "-m", "ettcli", "train", str(env["ticket"]), "--data-root", str(env["root"])]
    args += ["--epochs", "300", *BATCH, "--out", str(out), "--quiet"]
    p = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    signum = getattr(signal, signame)
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signum, err
    assert f"interrupted by {signame} at step" in err and "Traceback" not in err
    assert not list(out.glob(".*.tmp")) and not (out / "final.safetensors").exists()
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 6 <= ck["loop"]["step"] < 300 * 6


def test_non_finite_options_and_losses_are_refused(env, cli, tmp_path):
    t, root = env["ticket"], env["root"]
    for flag, value in (("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan")):
        out = tmp_path / f"bad{value}"
        assert_user_error(cli("train", t, "--data-root", root, flag, value, "--out", out), "finite")
        assert not out.exists()
    out = tmp_path / "diverged"
    r = cli("train", t, "--data-root", root, "--epochs", "2", *BATCH, "--lr", "1e30", "--out", out, "--quiet")
    assert_user_error(r, "loss became non-finite at step", "(epoch 1)", "lower learning rate")
    assert not (out / "final.safetensors").exists() and not (out / "summary.json").exists()
    assert "NaN" not in (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else True


def test_a_loss_that_turns_non_finite_keeps_the_last_good_checkpoint(env, tmp_path):
    from ettcli.errors import EttError
    from ettcli.feeders import MemoryFeeder
    from ettcli.train import train_ticket

    class PoisonedSecondEpoch(MemoryFeeder):
        def batches(self, epoch, start=0):
            for i, (x, y) in enumerate(super().batches(epoch, start)):
                yield (x * float("nan") if epoch == 1 and i == 2 else x), y

    import ettcli.train as core

    original = core.MemoryFeeder
    core.MemoryFeeder = PoisonedSecondEpoch
    try:
        with pytest.raises(EttError, match=r"non-finite at step 1ep2it \(epoch 2\)"):
            train_ticket(env["ticket"], _settings(["--data-root", env["root"]]), folder=tmp_path / "run")
    finally:
        core.MemoryFeeder = original
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["loop"]["step"] == 6  # epoch 1's checkpoint, the last good one
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "NaN" not in lines[0]


def test_refusals_leave_no_run_folder(env, cli, tmp_path):
    ticket = read_ticket(env["ticket"])
    path = tmp_path / "late.safetensors"
    ticket.metadata["ett.rewind_step"] = "9ep"
    ticket.save(path)
    out = tmp_path / "run"
    assert_user_error(cli("train", path, "--data-root", env["root"], "--epochs", "2", *BATCH, "--out", out))
    assert not out.exists()
    r = cli(
        "train", env["ticket"], "--data-root", env["root"], "--epochs", "2", *BATCH, "--stop-at", "3ep", "--out", out
    )
    assert_user_error(r, "stop step 3ep", "not past the end of training (2ep)")
    assert not out.exists()
    assert_user_error(cli("train", env["ticket"], "--data-root", env["root"], "--workers", "-1"), "workers -1")


def test_recipe_follows_the_dataset_and_is_printed(env, cli, tmp_path):
    ticket = tmp_path / "r10.safetensors"
    make_ticket("imagenet_resnet_10_8", sparsity=0.5).save(ticket)  # an ImageNet-family ticket on CIFAR-10
    out = tmp_path / "run"
    r = cli("train", ticket, "--dataset", "cifar10", "--data-root", env["root"], "--epochs", "1", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines()[0].startswith("recipe cifar (open_lth's CIFAR recipe): 1 epoch, batch 128, SGD lr 0.1")
    recipe = json.loads((out / "config.json").read_text())["identity"]["recipe"]
    assert (recipe["name"], recipe["batch_size"], recipe["lr"], recipe["warmup"]) == ("cifar", 128, 0.1, "0it")


def test_stop_at_writes_a_rewind_ticket_that_trains_on_from_there(env, cli, tmp_path):
    dense = tmp_path / "dense.safetensors"
    make_ticket("cifar_resnet_8_4", seed=2).save(dense)
    out = tmp_path / "rewind"
    r = cli(
        "train", dense, "--data-root", env["root"], "--epochs", "2", *BATCH, "--stop-at", "8it", "--out", out, "--json"
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 8 and json.loads(r.stdout)["end_step"] == "1ep2it"
    rewound = read_ticket(out / "final.safetensors")
    assert rewound.metadata["ett.rewind_step"] == "1ep2it"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == ["1ep", "1ep2it"] and rows[-1]["epoch"] == pytest.approx(8 / 6, abs=1e-4)
    r = cli("train", out / "final.safetensors", "--data-root", env["root"], "--epochs", "2", *BATCH, "--json")
    assert json.loads(r.stdout)["start_step"] == "1ep2it" and json.loads(r.stdout)["steps"] == 4


def test_threads_and_precision_choices(env, cli, tmp_path, monkeypatch):
    from ettcli.train import resolve_precision

    r = cli("train", env["ticket"], "--data-root", env["root"], "--epochs", "1", *BATCH, "--threads", "1", "--json")
    assert json.loads(r.stdout)["device"] == "cpu (1 threads)"
    assert_user_error(cli("train", env["ticket"], "--data-root", env["root"], "--threads", "0"), "threads 0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))  # V100: no native bf16
    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert resolve_precision("auto", "cuda") == "bf16"


def test_masks_follow_the_parameters_memory_layout():
    from ettcli.models import Masker, model_from_ticket

    ticket = make_ticket("cifar_resnet_8_4", 0.7)
    model = model_from_ticket(ticket).to(memory_format=torch.channels_last)
    masker = Masker(model, ticket.masks)
    for p, m in zip(masker.params, masker.masks):
        assert m.stride() == p.stride() and m.dtype == p.dtype
    masker.apply()
    for name, mask in ticket.masks.items():
        assert torch.all(dict(model.named_parameters())[name].detach()[torch.from_numpy(~mask.array)] == 0)
