"""open_lth level folders as open_lth lays them out: reading the rewind point, exporting, round trips."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import assert_user_error, make_ticket

from ettcli.errors import EttError
from ettcli.ticket import read_ticket

ARCH = "cifar_resnet_8_4"

# What open_lth's LotteryDesc.save writes for `lottery --default_hparams=cifar_resnet_20 --rewinding_steps=1000it`
# (Desc.save: each hparams group's `display`, groups sorted by field name); only level_0/main gets one.
HPARAMS_1000IT = """\
Dataset Hyperparameters
    * dataset_name => cifar10
    * batch_size => 128
Model Hyperparameters
    * model_name => cifar_resnet_8_4
    * model_init => kaiming_normal
    * batchnorm_init => uniform
Pretraining Dataset Hyperparameters
    * dataset_name => cifar10
    * batch_size => 128
Pretraining Training Hyperparameters
    * optimizer_name => sgd
    * lr => 0.1
    * training_steps => 1000it
    * momentum => 0.9
    * milestone_steps => 80ep,120ep
    * gamma => 0.1
    * weight_decay => 0.0001
Pruning Hyperparameters
    * pruning_strategy => sparse_global
    * pruning_fraction => 0.2
Training Hyperparameters
    * optimizer_name => sgd
    * lr => 0.1
    * training_steps => 160ep
    * momentum => 0.9
    * milestone_steps => 80ep,120ep
    * gamma => 0.1
    * weight_decay => 0.0001"""


def _state(seed: int) -> dict:
    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    return build_model(parse_arch(ARCH), seed=seed).state_dict()


def _level(folder, steps, mask_seed: int = 0):
    """A level folder as open_lth writes it: mask.pth and one model file per step (seed = position + 1)."""
    folder.mkdir(parents=True)
    states = {}
    for i, (ep, it) in enumerate(steps):
        states[(ep, it)] = _state(i + 1)
        torch.save(states[(ep, it)], folder / f"model_ep{ep}_it{it}.pth")
    g = torch.Generator().manual_seed(mask_seed)
    first = states[steps[0]]
    masks = {k: (torch.rand(v.shape, generator=g) > 0.6).int() for k, v in first.items() if k.endswith("conv2.weight")}
    torch.save(masks, folder / "mask.pth")
    return states, masks


def _same_weights(ticket, state) -> None:
    for name, value in state.items():
        np.testing.assert_array_equal(ticket.array(name), value.numpy(), err_msg=name)


def test_level_without_rewinding_is_read_at_step_0_not_at_its_end(tmp_path):
    folder = tmp_path / "level_2" / "main"
    states, masks = _level(folder, [(0, 0), (160, 0)])
    t = read_ticket(folder)
    assert t.metadata["ett.rewind_step"] == "0it" and t.metadata["ett.source_model"] == "model_ep0_it0.pth"
    _same_weights(t, states[(0, 0)])
    assert set(t.masks) == set(masks)


def test_level_with_rewinding_takes_the_start_step(tmp_path):
    folder = tmp_path / "level_2" / "main"
    states, _ = _level(folder, [(2, 218), (160, 0)])
    for path in (folder, folder.parent):  # the level folder or the level above its main/
        t = read_ticket(path)
        assert t.metadata["ett.rewind_step"] == "2ep218it"
        _same_weights(t, states[(2, 218)])


def test_hparams_log_of_the_replicate_gives_the_rewind_step_and_dataset(tmp_path):
    replicate = tmp_path / "lottery_0123" / "replicate_1"
    _level(replicate / "level_0" / "main", [(2, 218), (160, 0)])
    (replicate / "level_0" / "main" / "hparams.log").write_text(HPARAMS_1000IT)
    states, masks = _level(replicate / "level_3" / "main", [(2, 218), (160, 0)], mask_seed=3)
    # a stray extra model file: the count rule alone could no longer decide, hparams.log still does
    torch.save(_state(9), replicate / "level_3" / "main" / "model_ep80_it0.pth")
    t = read_ticket(replicate / "level_3")
    assert t.metadata["ett.rewind_step"] == "1000it" and t.metadata["ett.dataset"] == "cifar10"
    assert t.metadata["ett.source_model"] == "model_ep2_it218.pth"
    _same_weights(t, states[(2, 218)])
    name = "blocks.1.conv2.weight"
    np.testing.assert_array_equal(t.masks[name].array, masks[name].numpy().astype(bool))


def test_hparams_log_without_rewinding_means_step_0(tmp_path):
    folder = tmp_path / "main"
    states, _ = _level(folder, [(0, 0), (80, 0), (160, 0)])
    text = HPARAMS_1000IT.split("Pretraining Dataset")[0] + "Training Hyperparameters\n    * training_steps => 160ep\n"
    (folder / "hparams.log").write_text(text)
    t = read_ticket(folder)
    assert t.metadata["ett.rewind_step"] == "0it"
    _same_weights(t, states[(0, 0)])


def test_more_than_two_model_files_without_hparams_are_refused_until_a_step_is_named(tmp_path, cli):
    folder = tmp_path / "level_1" / "main"
    states, _ = _level(folder, [(0, 0), (2, 218), (160, 0)])
    with pytest.raises(EttError, match=r"3 model files \(steps 0it, 2ep218it, 160ep\).*--rewind-step"):
        read_ticket(folder)
    assert_user_error(cli("inspect", folder), "steps 0it, 2ep218it, 160ep", "--rewind-step")
    # the step as listed, or the same iteration counted in iterations (2 x 391 + 218 = 1000)
    for step in ("2ep218it", "1000it"):
        out = tmp_path / f"{step}.safetensors"
        r = cli("convert", folder, "--rewind-step", step, "-o", out)
        assert r.exit_code == 0, r.stderr
        t = read_ticket(out)
        assert t.metadata["ett.rewind_step"] == step
        _same_weights(t, states[(2, 218)])
    assert_user_error(cli("convert", folder, "--rewind-step", "5it", "-o", tmp_path / "x.safetensors"), "steps found")
    assert not (tmp_path / "x.safetensors").exists()


def test_source_sha256_of_a_folder_covers_the_mask_and_the_weights(tmp_path):
    folder = tmp_path / "main"
    _level(folder, [(0, 0), (160, 0)])
    before = read_ticket(folder).metadata["ett.source_sha256"]
    expected = hashlib.sha256((folder / "mask.pth").read_bytes() + (folder / "model_ep0_it0.pth").read_bytes())
    assert before == expected.hexdigest()
    masks = torch.load(folder / "mask.pth", weights_only=True)
    masks["blocks.0.conv2.weight"] = 1 - masks["blocks.0.conv2.weight"]  # another ticket, same weights
    torch.save(masks, folder / "mask.pth")
    assert read_ticket(folder).metadata["ett.source_sha256"] != before


def test_export_uses_open_lth_step_names_and_reads_back_the_same_ticket(tmp_path, cli):
    src = tmp_path / "t.safetensors"
    ticket = make_ticket(ARCH, 0.7)
    ticket.metadata["ett.rewind_step"] = "1000it"
    ticket.save(src)
    out = tmp_path / "level"
    r = cli("convert", src, "--open-lth", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "model_ep2_it218.pth" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["hparams.log", "mask.pth", "model_ep2_it218.pth"]
    mask = torch.load(out / "mask.pth", weights_only=True)
    assert all(v.dtype == torch.int32 for v in mask.values()) and len(mask) == len(ticket.prunable())
    back = read_ticket(out)
    assert back.metadata["ett.rewind_step"] == "1000it" and back.metadata["ett.dataset"] == "cifar10"
    assert back.arch == ticket.arch and set(back.masks) == set(ticket.masks)
    for name in ticket.tensors:
        np.testing.assert_array_equal(back.array(name), ticket.array(name))
    for name in ticket.masks:
        assert back.masks[name] == ticket.masks[name]
    # and converting the folder back to a ticket keeps that step
    r = cli("convert", out, "-o", tmp_path / "again.safetensors")
    assert r.exit_code == 0, r.stderr
    assert read_ticket(tmp_path / "again.safetensors").metadata["ett.rewind_step"] == "1000it"


@pytest.mark.parametrize(
    "arch, step, dataset, name",
    [
        ("imagenet_resnet_10_8", "2000it", None, "model_ep1_it748.pth"),  # 1,281,167 / 1024 -> 1252 an epoch
        ("imagenet_resnet_10_8", "5ep", None, "model_ep5_it0.pth"),
        (ARCH, "0it", None, "model_ep0_it0.pth"),
        (ARCH, "500it", "cifar100", "model_ep1_it109.pth"),  # 50,000 / 128 -> 391 an epoch
    ],
)
def test_export_step_names_follow_the_dataset(tmp_path, arch, step, dataset, name):
    from ettcli.open_lth import write_open_lth

    ticket = make_ticket(arch, 0.5)
    ticket.metadata["ett.rewind_step"] = step
    if dataset:
        ticket.metadata["ett.dataset"] = dataset
    assert write_open_lth(ticket, tmp_path / "level").name == name
    assert read_ticket(tmp_path / "level").metadata["ett.rewind_step"] == step


def test_export_into_a_level_folder_is_refused_unless_forced(tmp_path, cli):
    folder = tmp_path / "level_1" / "main"
    _level(folder, [(0, 0), (160, 0)])
    (folder / "checkpoint.pth").write_bytes(b"old optimizer state")
    (folder / "notes.txt").write_text("mine")
    src = tmp_path / "t.safetensors"
    ticket = make_ticket(ARCH, 0.8, seed=5)
    ticket.metadata["ett.rewind_step"] = "2ep218it"
    ticket.save(src)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert_user_error(cli("convert", src, "--open-lth", "-o", folder), "is not empty", "--force")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    r = cli("convert", src, "--open-lth", "-o", folder, "--force")
    assert r.exit_code == 0, r.stderr
    # the old level's files are gone (an old model file beside the new mask would read as one ticket)
    assert sorted(p.name for p in folder.iterdir()) == ["hparams.log", "mask.pth", "model_ep2_it218.pth", "notes.txt"]
    back = read_ticket(folder)
    assert back.metadata["ett.rewind_step"] == "2ep218it"
    for name in ticket.masks:
        assert back.masks[name] == ticket.masks[name]
    np.testing.assert_array_equal(back.array("fc.weight"), ticket.array("fc.weight"))


def test_export_onto_a_file_is_refused_and_leaves_it(tmp_path, cli, ticket_file):
    src = ticket_file()
    target = tmp_path / "level"
    target.write_text("a file, not a folder")
    assert_user_error(cli("convert", src, "--open-lth", "-o", target), "exists and is not a folder")
    assert target.read_text() == "a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, "level"])


def test_rewind_step_and_force_are_refused_where_they_mean_nothing(tmp_path, cli, ticket_file):
    src = ticket_file()
    assert_user_error(cli("inspect", src, "--rewind-step", "1000it"), "open_lth level folder")
    assert_user_error(cli("convert", src, "--force", "-o", tmp_path / "t.safetensors"), "--open-lth")
    assert not (tmp_path / "t.safetensors").exists()
