"""A run folder whose run failed before its first checkpoint holds nothing to protect: the corrected command
takes it over. One that holds a checkpoint, metrics or final files is still refused."""

from __future__ import annotations

import pytest
from conftest import assert_user_error, make_ticket
from train_util import cifar_subset, needs_cifar

pytestmark = [needs_cifar, pytest.mark.data]
SHORT = ["--epochs", "1", "--batch-size", "50", "--quiet"]  # 300 images: 6 steps


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("takeover")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("ETT_RUNS", str(base / "runs"))
        root = cifar_subset(tmp_path_factory.getbasetemp())
        ticket = base / "r8.safetensors"
        make_ticket("cifar_resnet_8_4", sparsity=0.5).save(ticket)
        yield {"base": base, "root": root, "ticket": ticket}


def test_a_diverged_first_attempt_does_not_block_the_corrected_command(env, cli):
    out = env["base"] / "trX"
    args = ["train", env["ticket"], "--data-root", env["root"], *SHORT, "--out", out]
    r = cli(*args, "--lr", "1e30")
    assert_user_error(r, "non-finite", "no checkpoint was reached", "lower learning rate")
    assert "checkpoint is kept" not in r.stderr
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()
    r = cli(*args)  # the default learning rate
    assert r.exit_code == 0, r.stderr
    assert (out / "final.safetensors").is_file()
    # now the folder holds a finished run: other settings are refused as before
    assert_user_error(cli(*args, "--lr", "0.2"), "holds a run with different settings")


def test_an_imp_that_failed_on_its_rewind_step_does_not_block_the_corrected_command(env, cli):
    out = env["base"] / "impX"
    args = ["prune", "imp", "cifar_resnet_8_4", "--data-root", env["root"], "--levels", "1", *SHORT, "--out", out]
    assert_user_error(cli(*args), "--rewind")  # the default 1000it lies past the end of a 6-step training
    r = cli(*args, "--rewind", "2it")
    assert r.exit_code == 0, r.stderr
    assert (out / "level_01" / "final.safetensors").is_file()
    assert_user_error(cli(*args, "--rewind", "3it"), "holds a run with different settings", "rewind")
