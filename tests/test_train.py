"""`ett train` end to end on a few hundred real CIFAR-10 images with a width-4 ResNet-8."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

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
        mp.delenv("ETT_INTERRUPT_AT_STEP", raising=False)
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
    assert cfg["settings"]["recipe"]["milestones"] == ["7ep3it", "11ep2it"]  # 45 and 67.5 (rounded to even) of 90 steps


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


def test_ctrl_c_then_rerun_gives_the_uninterrupted_weights(env, reference, cli, monkeypatch):
    ref, args = reference
    out = env["base"] / "interrupted"
    args = [a if a != ref else out for a in args]
    monkeypatch.setenv("ETT_INTERRUPT_AT_STEP", "8")  # mid-way through the second epoch
    r = cli(*args)
    assert r.exit_code == 130, (r.stderr, r.exception)
    assert "interrupted at step 1ep2it" in r.stderr and "rerun the same command to resume" in r.stderr
    assert (out / "checkpoint.pt").is_file() and not (out / "final.safetensors").exists()
    monkeypatch.delenv("ETT_INTERRUPT_AT_STEP")
    r = cli(*args)
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
    args = [str(a if a != ref else out) for a in args]
    child_env = {**os.environ, "ETT_KILL_AT_STEP": "9", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "ettcli", *args], env=child_env, capture_output=True, text=True)
    assert p.returncode == 137, p.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 finished and checkpointed
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
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
    assert_user_error(r, "holds a run with different settings", "choose another --out")
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
    recipe = customise(recipe_for("cifar_resnet"), 6, epochs=3, batch_size=50)
    assert rows[0]["lr"] == pytest.approx(recipe.lr_at(11, 6))  # the last step of epoch 2 (milestone at 2ep)
    assert rows[1]["lr"] == pytest.approx(0.001)
    r = cli("train", path, "--data-root", env["root"], "--epochs", "1", *BATCH, "--from-step", "0it", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 6
    r = cli("train", path, "--data-root", env["root"], "--epochs", "1", *BATCH, "--out", tmp_path / "x")
    assert_user_error(r, "starts at step 1ep2it", "--epochs")


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
    assert_user_error(cli("train", t, "--data-root", root, "--epochs", "0"), "--epochs 0")
    wide = tmp_path / "c100.safetensors"
    make_ticket("cifar_resnet_8_4", num_classes=100).save(wide)
    assert_user_error(cli("train", wide, "--data-root", root), "classifier has 100 outputs", "cifar10 has 10 classes")
    assert_user_error(cli("train", t, "--dataset", "cifar100", "--data-root", root), "cifar100 has 100 classes")
    from safetensors.numpy import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"encoder.proj.weight": np.zeros((4, 4), np.float32)}, str(odd))
    r = cli("train", odd, "--data-root", root)
    assert_user_error(r)
    assert_user_error(cli("train", t, "--data-root", root, "--device", "tpu"), "--device tpu")


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
    assert "interrupted at step" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 6 <= ck["step"] < 300 * 6
    assert not (out / "final.safetensors").exists()
