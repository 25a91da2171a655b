"""torch files in and out: .pt/.pth output, files whose suffix lies, refusals in ett's words, zeros as masks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_user_error, make_ticket

from ettcli.ticket import read_ticket


def _same(a, b) -> None:
    assert a.arch == b.arch and list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        np.testing.assert_array_equal(a.array(name), b.array(name))
    assert set(a.masks) == set(b.masks) and all(a.masks[n] == b.masks[n] for n in a.masks)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_output_is_a_state_dict_that_reads_back_the_same(tmp_path, cli, ticket_file, suffix):
    src = ticket_file("cifar_resnet_14_4", 0.6)
    out = tmp_path / f"t{suffix}"
    r = cli("convert", src, "-o", out)
    assert r.exit_code == 0, r.stderr
    sd = torch.load(out, weights_only=True)
    ticket = read_ticket(src)
    assert set(sd) == set(ticket.tensors) | {n + "_mask" for n in ticket.masks}
    assert sd["blocks.1.conv1.weight_mask"].dtype == torch.bool
    np.testing.assert_array_equal(sd["fc.weight"].numpy(), ticket.array("fc.weight"))
    _same(ticket, read_ticket(out))
    # a transform writes one too
    r = cli("stretch", src, "--to", "resnet-20", "-o", tmp_path / f"r20{suffix}")
    assert r.exit_code == 0, r.stderr
    assert read_ticket(tmp_path / f"r20{suffix}").arch.name == "cifar_resnet_20_4"


@pytest.mark.parametrize("name", ["t.bin", "t.ckpt", "t.safetensor", "t"])
def test_unknown_output_suffixes_are_refused(tmp_path, cli, ticket_file, name):
    src = ticket_file()
    for args in (("convert", src), ("init", "cifar_resnet_8_4"), ("stretch", ticket_file("cifar_resnet_14_4"))):
        extra = ("--to", "resnet-20") if args[0] == "stretch" else ()
        assert_user_error(cli(*args, *extra, "-o", tmp_path / name), name, ".safetensors", ".pt/.pth")
    assert not (tmp_path / name).exists()


def test_a_torch_file_named_safetensors_is_read(tmp_path, cli):
    ticket = make_ticket("cifar_resnet_8_4", 0.5)
    sd = {n: torch.from_numpy(np.array(a)) for n, a in ticket.arrays()}
    sd.update({n + "_mask": torch.from_numpy(m.array.copy()) for n, m in ticket.masks.items()})
    torch.save(sd, tmp_path / "model.safetensors")  # torch's zip format under a lying name
    r = cli("inspect", tmp_path / "model.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["arch"] == "cifar_resnet_8_4"
    _same(ticket, read_ticket(tmp_path / "model.safetensors"))


def test_unpicklable_content_is_refused_without_advice_to_unpickle(tmp_path, cli):
    import argparse

    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    model = build_model(parse_arch("cifar_resnet_8_4"), seed=0)
    cases = {
        "model.pt": (model, "ettcli.models.CifarResNet"),  # a whole module instead of its state_dict()
        "args.pt": ({"args": argparse.Namespace(lr=0.1), **model.state_dict()}, "argparse.Namespace"),
    }
    for name, (obj, fragment) in cases.items():
        torch.save(obj, tmp_path / name)
        r = cli("inspect", tmp_path / name)
        assert_user_error(r, name, fragment, "model.state_dict()")
        assert "weights_only" not in r.stderr and "trust" not in r.stderr
    (tmp_path / "cut.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:200])
    assert_user_error(cli("inspect", tmp_path / "cut.pt"), "truncated or damaged")


def test_a_protocol_4_pickle_gets_one_line_and_no_torch_warning(tmp_path):
    """In a real process: torch's warning about the protocol would otherwise reach stderr before the error."""
    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    torch.save(build_model(parse_arch("cifar_resnet_8_4")).state_dict(), tmp_path / "p4.pt", pickle_protocol=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "ettcli", "inspect", str(tmp_path / "p4.pt")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ett: error: "), r.stderr
    assert "protocol" in lines[0] and "torch.save" in lines[0] and "weights_only" not in lines[0]


def test_zeros_of_a_pruned_and_removed_checkpoint_become_masks(tmp_path, cli):
    import torch.nn.utils.prune as prune

    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    model = build_model(parse_arch("cifar_resnet_14_4"), seed=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    prune.global_unstructured([(m, "weight") for m in convs], prune.L1Unstructured, amount=0.7)
    for m in convs:
        prune.remove(m, "weight")  # the mask is folded into the weights: exact zeros, no X_mask
    sd = model.state_dict()
    torch.save(sd, tmp_path / "pruned.pt")
    dense = read_ticket(tmp_path / "pruned.pt")
    assert not dense.masks and dense.sparsity() == 0.0  # what the file says: no masks

    r = cli("inspect", tmp_path / "pruned.pt", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)["tensors"]}
    for name, value in sd.items():
        assert rows[name]["zeros"] == int((value == 0).sum()), name
    table = cli("inspect", tmp_path / "pruned.pt").stdout
    assert "zeros" in table and "--masks-from-zeros" in table

    out = tmp_path / "ticket.safetensors"
    r = cli("convert", tmp_path / "pruned.pt", "--masks-from-zeros", "-o", out)
    assert r.exit_code == 0, r.stderr
    t = read_ticket(out)
    for m_name in [n for n in t.prunable() if n != "fc.weight"]:
        np.testing.assert_array_equal(t.masks[m_name].array, sd[m_name].numpy() != 0)
    assert "fc.weight" not in t.masks  # not pruned, no zeros: stays dense
    zeros = sum(int((sd[n] == 0).sum()) for n in t.prunable())
    total = sum(sd[n].numel() for n in t.prunable())
    assert t.sparsity() == pytest.approx(zeros / total)
