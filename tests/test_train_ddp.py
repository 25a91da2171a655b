"""Two gloo processes under torchrun: DistributedDataParallel on CPU, files written by rank 0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, make_ticket
from train_util import cifar_subset, needs_cifar

from ettcli.ticket import read_ticket


@needs_cifar
@pytest.mark.data
def test_two_gloo_ranks_train_one_epoch(tmp_path, tmp_path_factory):
    root = cifar_subset(tmp_path_factory.getbasetemp())
    ticket = tmp_path / "t.safetensors"
    make_ticket("cifar_resnet_8_4", sparsity=0.5).save(ticket)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "ETT_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "ettcli", "train", str(ticket), "--data-root", str(root), "--epochs", "1"]
    cmd += ["--batch-size", "60", "--device", "cpu", "--out", str(out), "--json"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0 alone reports
    s = summaries[0]
    assert s["world_size"] == 2 and s["steps"] == 5 and 0.0 <= s["final_test_accuracy"] <= 1.0
    assert np.isfinite(s["final_test_loss"]) and s["final_test_loss"] < 10
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["train_accuracy"] > 0.0
    src, final = read_ticket(ticket), read_ticket(out / "final.safetensors")
    for name, mask in src.masks.items():
        assert np.array_equal(final.masks[name].array, mask.array)
        assert np.all(final.array(name)[~mask.array] == 0)
    assert any(not np.array_equal(final.array(n), src.array(n)) for n in src.masks)
