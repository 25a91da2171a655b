"""`ett train` on ImageNet-style image folders (a tiny generated set) through the DataLoader path."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_ticket
from train_util import write_image_folders

from ettcli.data import DATASETS, DatasetSpec
from ettcli.ticket import read_ticket


def test_folder_dataset_trains_through_the_loader(cli, tmp_path, monkeypatch):
    spec = DatasetSpec("tiny_folders", 3, "folders", 32, 12, 6, test_dirs=("val",), recipe="imagenet")
    monkeypatch.setitem(DATASETS, spec.name, spec)
    root = write_image_folders(tmp_path / "data", ["b", "a", "c"], per_class=4, size=40, splits=("train", "val"))
    ticket = tmp_path / "t.safetensors"
    make_ticket("imagenet_resnet_10_8", sparsity=0.5, num_classes=3).save(ticket)
    out = tmp_path / "run"
    r = cli(
        "train",
        ticket,
        "--dataset",
        "tiny_folders",
        "--data-root",
        root,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, (r.stderr, r.exception)
    s = json.loads(r.stdout)
    assert s["steps"] == 6 and s["epochs"] == 2 and 0.0 <= s["final_test_accuracy"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())["identity"]
    # ImageNet's 90-epoch recipe at 2 epochs of 3 steps: milestones 30/60/80 of 90 and warmup 5 of 90, in steps
    assert cfg["recipe"]["milestones"] == ["2it", "1ep1it", "1ep2it"] and cfg["recipe"]["warmup"] == "0it"
    assert cfg["recipe"]["batch_size"] == 4 and cfg["dataset"] == "tiny_folders"
    src, final = read_ticket(ticket), read_ticket(out / "final.safetensors")
    for name, mask in src.masks.items():
        assert np.all(final.array(name)[~mask.array] == 0)


def test_a_corrupt_image_is_named_in_one_line(cli, tmp_path, monkeypatch):
    from conftest import assert_user_error

    spec = DatasetSpec("tiny_folders", 3, "folders", 32, 12, 6, test_dirs=("val",), recipe="imagenet")
    monkeypatch.setitem(DATASETS, spec.name, spec)
    root = write_image_folders(tmp_path / "data", ["a", "b", "c"], per_class=4, size=40, splits=("train", "val"))
    bad = root / "train" / "b" / "0002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ticket = tmp_path / "t.safetensors"
    make_ticket("imagenet_resnet_10_8", num_classes=3).save(ticket)
    for workers in ("0", "1"):
        args = ["train", ticket, "--dataset", "tiny_folders", "--data-root", root, "--epochs", "1"]
        r = cli(*args, "--batch-size", "4", "--workers", workers, "--out", tmp_path / f"run{workers}", "--quiet")
        assert_user_error(r, str(bad), "cannot decode this image", "replace or remove the file")
