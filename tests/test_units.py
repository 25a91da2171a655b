"""``--units PATTERN``: any network built of repeated units, read, transformed and written by its own names;
and the error for a network of no known family, which names the families tried and what was recognised."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_user_error
from family_util import state
from safetensors.numpy import save_file
from torch import nn

from ettcli.arch import units
from ettcli.errors import EttError
from ettcli.plan import make_plan
from ettcli.ticket import Ticket, read_ticket


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.ff(self.attn(self.norm(x)))


class Encoder(nn.Module):
    """An encoder of ``n`` blocks under ``encoder.block.{i}``, an embedding before and a head after."""

    def __init__(self, n: int, d: int = 8):
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.encoder = nn.Module()
        self.encoder.block = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.encoder.block:
            x = b(x)
        return self.head(x.mean(1))


class Staged(nn.Module):
    """Stages of blocks under ``stages.{s}.blocks.{b}``, widths growing, downsampling outside the blocks."""

    def __init__(self, depths: list[int], d: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 2, 2)
        self.stages = nn.ModuleList()
        for s, n in enumerate(depths):
            stage = nn.Module()
            stage.downsample = nn.Conv2d(d * 2 ** max(s - 1, 0), d * 2**s, 1) if s else nn.Identity()
            stage.blocks = nn.ModuleList(nn.Conv2d(d * 2**s, d * 2**s, 3, padding=1) for _ in range(n))
            self.stages.append(stage)
        self.head = nn.Linear(d * 2 ** (len(depths) - 1), 10)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage.downsample(x)
            for b in stage.blocks:
                x = x + b(x)
        return self.head(x.mean((2, 3)))


def save_state(model: nn.Module, path, masked: bool = True, seed: int = 0):
    arrays = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    if masked:
        for k in list(arrays):
            if k.endswith("weight") and arrays[k].ndim >= 2:
                arrays[k + "_mask"] = rng.random(arrays[k].shape) < 0.5
    save_file(arrays, str(path))
    return path


def test_units_are_read_transformed_and_load_into_the_network_at_the_target_depth(cli, tmp_path):
    torch.manual_seed(0)
    path = save_state(Encoder(3), tmp_path / "enc.safetensors")
    r = cli("inspect", path, "--units", "encoder.block.{i}", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["stages"], info["arch"]) == ("units", [3], "units_3")
    roles = {t["name"]: t["role"] for t in info["tensors"]}
    assert roles["embed.weight"] == "stem" and roles["head.weight"] == "head"
    assert roles["encoder.block.2.ff.2.weight"] == "unit"
    out = tmp_path / "enc5.safetensors"
    mapping = "0:0;1:1,3;2:2,4"
    r = cli("stretch", path, "--units", "encoder.block.{i}", "--stages", "5", "--mapping", mapping, "-o", out)
    assert r.exit_code == 0, r.stderr
    with units("encoder.block.{i}"):
        src = read_ticket(path)
    dst = read_ticket(out)  # no --units: the ticket carries its pattern
    assert dst.metadata["ett.units"] == "encoder.block.{i}" and dst.arch.name == "units_5"
    sources = {0: 0, 1: 1, 2: 2, 3: 1, 4: 2}
    for name in dst.tensors:
        if name.startswith("encoder.block."):
            j = int(name.split(".")[2])
            from_name = name.replace(f"encoder.block.{j}.", f"encoder.block.{sources[j]}.", 1)
        else:
            from_name = name  # stem and head unchanged
        assert np.array_equal(dst.array(name), src.array(from_name)), name
        assert (name in dst.masks) == (from_name in src.masks)
        if name in dst.masks:
            assert np.array_equal(dst.masks[name].array, src.masks[from_name].array), name
    model = Encoder(5)
    model.load_state_dict(state(dst), strict=True)
    assert model(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 3)
    r = cli("squeeze", out, "--stages", "2", "-o", tmp_path / "enc2.safetensors")
    assert r.exit_code == 0, r.stderr
    Encoder(2).load_state_dict(state(read_ticket(tmp_path / "enc2.safetensors")), strict=True)


def test_stage_and_unit_fields_keep_what_sits_outside_the_units(tmp_path):
    torch.manual_seed(0)
    path = save_state(Staged([2, 3]), tmp_path / "staged.safetensors")
    with units("stages.{s}.blocks.{b}"):
        t = read_ticket(path)
    assert t.arch.stages == (2, 3)
    plan = make_plan(t, stages="4,5")
    assert plan.mapping == "0:0;1:1,2,3|0:0;1:1,2;2:3,4"
    from ettcli.transform import apply_plan

    out = apply_plan(t, plan)
    for name, (src, _) in plan.tensor_sources().items():
        assert np.array_equal(out.array(name), t.array(src)), name
    assert np.array_equal(out.array("stages.1.downsample.weight"), t.array("stages.1.downsample.weight"))
    model = Staged([4, 5])
    model.load_state_dict(state(out), strict=True)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_units_of_a_stage_that_differ_are_refused_naming_the_unit_and_tensor(cli, tmp_path):
    torch.manual_seed(0)
    sd = {k: v.numpy() for k, v in Encoder(3).state_dict().items()}
    sd["encoder.block.2.ff.0.weight"] = np.zeros((32, 8), np.float32)
    save_file(sd, str(tmp_path / "odd.safetensors"))
    r = cli("inspect", tmp_path / "odd.safetensors", "--units", "encoder.block.{i}")
    assert_user_error(r, "'encoder.block.2.ff.0.weight' has shape [32, 8]", "'encoder.block.0.ff.0.weight' has [16, 8]")
    del sd["encoder.block.2.ff.0.weight"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    r = cli("inspect", tmp_path / "missing.safetensors", "--units", "encoder.block.{i}")
    assert_user_error(r, "'encoder.block.2' has no 'ff.0.weight'")


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("encoder.block.{n}", "unknown field '{n}'"),
        ("encoder.block", "give {i} alone"),
        ("decoder.layer.{i}", "no key matches the unit pattern 'decoder.layer.{i}'"),
    ],
)
def test_bad_unit_patterns_are_refused(cli, tmp_path, pattern, fragment):
    path = save_state(Encoder(2), tmp_path / "enc.safetensors", masked=False)
    out = tmp_path / "out.safetensors"
    assert_user_error(cli("stretch", path, "--units", pattern, "--stages", "3", "-o", out), fragment)
    assert not out.exists()


def test_a_network_of_no_known_family_gets_what_was_recognised(cli, tmp_path):
    """A ViT-style network (blocks.{i}.attn.qkv, but no timm patch embedding) is not mistaken for a CIFAR
    ResNet's blocks.{i}."""
    d = 8
    sd = {
        "cls_token": np.zeros((1, 1, d), np.float32),
        "pos_embed": np.zeros((1, 5, d), np.float32),
        "embed.proj.weight": np.zeros((d, 3, 4, 4), np.float32),
        "norm.weight": np.ones(d, np.float32),
        "head.weight": np.zeros((10, d), np.float32),
    }
    for i in range(2):
        sd[f"blocks.{i}.attn.qkv.weight"] = np.zeros((3 * d, d), np.float32)
        sd[f"blocks.{i}.norm1.weight"] = np.ones(d, np.float32)
    path = tmp_path / "timm_vit.safetensors"
    save_file(sd, str(path))
    r = cli("inspect", path)
    assert_user_error(
        r,
        "match no known family (tried cifar_resnet, imagenet_resnet, cifar_vgg",
        "torchvision_vit",
        "pass --units 'blocks.{i}'",
    )
    assert "missing tensor" not in r.stderr
    r = cli("inspect", path, "--units", "blocks.{i}", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["stages"] == [2]


def test_a_near_miss_names_the_closest_family_and_what_it_lacks():
    sd = {"conv.weight": (16, 3, 3, 3), "fc.weight": (10, 64), "body.0.weight": (16, 16, 3, 3)}
    with pytest.raises(EttError, match=r"closest: cifar_resnet, which has conv.weight, fc.weight but no blocks\.\{i\}"):
        Ticket.from_arrays({k: np.zeros(s, np.float32) for k, s in sd.items()})
