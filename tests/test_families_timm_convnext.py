"""timm's ConvNeXt (v1 and v2) as a family: inference from the state dicts of tiny real timm models, the
downsampling fixed in place between stages, no block fixed (the first block of a stage may be replicated,
moved or dropped), stretch and squeeze with explicit mappings and default plans, strict loads and forward
passes at the target stage lengths, the CLI, and the tensor-only pruning methods' exact counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_user_error
from family_util import check_mapping, mapped, masked_ticket, state

import ettcli
from ettcli.errors import EttError
from ettcli.plan import make_plan
from ettcli.ticket import Ticket, read_ticket
from ettcli.transform import transform

timm = pytest.importorskip("timm")

DIMS = (8, 16, 24, 32)


VARIANTS = {  # timm model name -> options: 1x1-conv MLPs (atto), v2's GRN without layer scale, linear MLPs
    "v1": ("convnext_atto", {}),
    "v2": ("convnextv2_atto", {}),
    "linear": ("convnext_tiny", {"conv_mlp": False, "head_norm_first": True}),
}


def convnext(depths, seed: int = 0, variant: str = "v1") -> torch.nn.Module:
    torch.manual_seed(seed)
    name, options = VARIANTS[variant]
    return timm.create_model(name, pretrained=False, depths=tuple(depths), dims=DIMS, num_classes=10, **options)


def block(s: int, b: int) -> str:
    return f"stages.{s}.blocks.{b}."


def run(model: torch.nn.Module, ticket: Ticket) -> torch.Tensor:
    model.load_state_dict(state(ticket), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    return out


# --- inference --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inferred_with_its_stages_and_the_downsampling_fixed_between_them(variant):
    t = masked_ticket(convnext((2, 2, 3, 2), variant=variant))
    spec = t.arch
    assert (spec.family, spec.stages, spec.width, spec.num_classes) == ("timm_convnext", (2, 2, 3, 2), 8, 10)
    assert spec.block == ("v2" if variant == "v2" else "v1")
    assert spec.name == ("timm_convnext_s2-2-3-2_v2_8" if variant == "v2" else "timm_convnext_s2-2-3-2_8")
    fixed = {n for n, x in spec.tensors.items() if x.role == "fixed"}
    assert fixed == {n for n in t.tensors if ".downsample." in n} and "stages.3.downsample.1.weight" in fixed
    assert not any(n.startswith("stages.0.downsample") for n in t.tensors)  # stage 0 has none in timm
    assert not any(spec.is_fixed(s, u) for s, u in spec.units())
    prunable = set(t.prunable())
    for leaf in ("conv_dw", "mlp.fc1", "mlp.fc2"):
        assert f"stages.2.blocks.2.{leaf}.weight" in prunable
    assert "stages.1.downsample.1.weight" in prunable and "stages.1.downsample.0.weight" not in prunable
    never = [n for n in t.tensors if n.endswith(("bias", "gamma", "norm.weight", "grn.weight"))]
    assert never and not prunable & set(never)
    assert spec.fam.left_dense(spec) == ("stem.0.weight", "head.fc.weight")
    assert set(spec.tensors) == set(convnext((2, 2, 3, 2), variant=variant).state_dict())


def test_standard_depths_name_timms_variants():
    src = masked_ticket(convnext((2, 2, 6, 2)))
    assert src.arch.name == "timm_convnext_12_8"
    assert make_plan(src, "convnext-18").target.stages == (3, 3, 9, 3)
    assert make_plan(src, "convnext-36").target.stages == (3, 3, 27, 3)
    with pytest.raises(EttError, match="no standard timm_convnext of depth 20"):
        make_plan(src, "convnext-20")


# --- transforms -------------------------------------------------------------------------------------------
MAPPINGS = [  # (source stages, target stages, mapping): the first block replicated, moved and dropped
    ((2, 2, 3, 2), (3, 3, 5, 2), "0:0,1;1:2|1:0,1;0:2|0:0;1:1,2;2:3,4|1:0;0:1"),
    ((2, 2, 3, 2), (1, 2, 2, 1), "1:0|0:0;1:1|2:0;0:1|0:0"),
    ((1, 1, 1, 1), (2, 3, 1, 2), "0:0,1|0:0,1,2|0:0|0:0,1"),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("depths", "to", "mapping"), MAPPINGS)
def test_explicit_mapping_follows_every_block_and_loads_at_the_target_stages(tmp_path, variant, depths, to, mapping):
    src = masked_ticket(convnext(depths, variant=variant))
    src.save(tmp_path / "src.safetensors")
    src = read_ticket(tmp_path / "src.safetensors")
    out = transform(src, stages=to, mapping=mapping)
    check_mapping(src, out, mapping, block)
    out.save(tmp_path / "out.safetensors")
    again = read_ticket(tmp_path / "out.safetensors")
    assert again.arch.stages == to and mapped(again.metadata["ett.plan"], 4) == mapped(mapping, 4)
    model = convnext(to, seed=5, variant=variant)
    assert set(model.state_dict()) == set(again.tensors)
    run(model, again)


def test_default_plans_spread_every_block_of_a_stage():
    src = masked_ticket(convnext((2, 2, 3, 2)))
    assert make_plan(src, stages="2,2,9,2").mapping == "0:0;1:1|0:0;1:1|0:0,1,2;1:3,4,5;2:6,7,8|0:0;1:1"
    assert make_plan(src, stages="4,2,6,2", order="append").mapping == "0:0,2;1:1,3|0:0;1:1|0:0,3;1:1,4;2:2,5|0:0;1:1"
    assert make_plan(src, stages="1,1,2,1").mapping == "0:0|0:0|0:0;2:1|0:0"
    assert make_plan(src, stages="1,2,2,1", drop="head").mapping == "1:0|0:0;1:1|1:0;2:1|1:0"
    single = masked_ticket(convnext((1, 1, 1, 1)))
    out = ettcli.stretch(single, stages="2,2,3,2")  # a stage of one block grows: its block is replicated
    assert out.metadata["ett.plan"] == "0:0,1|0:0,1|0:0,1,2|0:0,1"
    check_mapping(single, out, out.metadata["ett.plan"], block)
    run(convnext((2, 2, 3, 2)), out)
    back = ettcli.squeeze(out, stages="1,1,1,1")
    assert back.metadata["ett.plan"] == "0:0|0:0|0:0|0:0"
    for name in single.tensors:
        assert (back.array(name) == single.array(name)).all(), name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ett_builds_the_timm_model_at_the_target_stages(variant):
    from ettcli.models import load_model

    out = ettcli.stretch(masked_ticket(convnext((2, 2, 2, 2), variant=variant)), "convnext-18")
    model = load_model(out)
    reference = convnext((3, 3, 9, 3), variant=variant)
    assert type(model) is type(reference) and [len(s.blocks) for s in model.stages] == [3, 3, 9, 3]
    reference.load_state_dict(model.state_dict(), strict=True)
    w = model.stages[2].blocks[8].mlp.fc1.weight
    assert torch.count_nonzero(w) == out.masks["stages.2.blocks.8.mlp.fc1.weight"].kept
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x))  # nothing of a ConvNeXt's computation is outside the weights


def test_other_families_still_hold_their_first_unit_in_place():
    resnet = Ticket.from_arrays(
        {k: np.zeros(t.shape, np.float32) for k, t in ettcli.parse_arch("cifar_resnet_8_4").tensors.items()}
    )
    with pytest.raises(EttError, match="must map to position 0 and only there"):
        make_plan(resnet, stages="2,2,2", mapping="0:0,1|0:0;1:1|0:0;1:1")


# --- the CLI ----------------------------------------------------------------------------------------------
def test_inspect_plan_stretch_and_squeeze_on_the_command_line(cli, tmp_path):
    path = tmp_path / "convnext.safetensors"
    masked_ticket(convnext((2, 2, 3, 2))).save(path)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["stages"], info["arch"]) == ("timm_convnext", [2, 2, 3, 2], "timm_convnext_s2-2-3-2_8")
    assert 0.3 < info["sparsity"] < 0.7
    mapping = "0:0,1;1:2|1:0,1;0:2|0:0;1:1,2;2:3,4|1:0;0:1"
    r = cli("plan", path, "--stages", "3,3,5,2", "--mapping", mapping)
    assert r.exit_code == 0, r.stderr
    assert "block 0   -> 0, 1" in r.stdout and "kept (first unit)" not in r.stdout
    out = tmp_path / "big.safetensors"
    r = cli("stretch", path, "--stages", "3,3,5,2", "--mapping", mapping, "-o", out)
    assert r.exit_code == 0, r.stderr
    run(convnext((3, 3, 5, 2)), read_ticket(out))
    small = tmp_path / "small.safetensors"
    r = cli("squeeze", path, "--stages", "1,1,1,1", "--mapping", "1:0|0:0|2:0|1:0", "-o", small)
    assert r.exit_code == 0, r.stderr
    check_mapping(read_ticket(path), read_ticket(small), "1:0|0:0|2:0|1:0", block)
    run(convnext((1, 1, 1, 1)), read_ticket(small))


def test_a_mapping_that_leaves_a_position_empty_is_refused(cli, tmp_path):
    path = tmp_path / "convnext.safetensors"
    masked_ticket(convnext((2, 2, 2, 2))).save(path)
    r = cli(
        "stretch",
        path,
        "--stages",
        "2,2,3,2",
        "--mapping",
        "0:0;1:1|0:0;1:1|1:1,2|0:0;1:1",
        "-o",
        tmp_path / "x.safetensors",
    )
    assert_user_error(r, "stage 3", "position 0", "filled by no block")
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_from_a_torch_state_dict(cli, tmp_path):
    pt = tmp_path / "convnext.pt"
    torch.save(convnext((1, 1, 2, 1), variant="v2").state_dict(), pt)
    r = cli("convert", pt, "-o", tmp_path / "convnext.safetensors")
    assert r.exit_code == 0, r.stderr
    t = read_ticket(tmp_path / "convnext.safetensors")
    assert t.arch.name == "timm_convnext_s1-1-2-1_v2_8" and not t.masks


# --- pruning ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "random", "uniform", "erk"])
def test_tensor_only_pruning_keeps_exact_counts_and_leaves_stem_and_head_dense(method):
    dense = Ticket.from_arrays({k: v.numpy() for k, v in convnext((2, 2, 2, 2)).state_dict().items()}, {}, {})
    total, _ = dense.counts()
    out = ettcli.prune(dense, method, sparsity=0.73)
    assert out.counts() == (total, round(0.27 * total))
    for name in ("stem.0.weight", "head.fc.weight"):
        assert name not in out.masks or out.masks[name].kept == out.masks[name].numel, (method, name)
    assert out.masks["stages.2.blocks.1.conv_dw.weight"].kept < 24 * 49
    every = ettcli.prune(dense, method, sparsity=0.5, exclude=[])
    assert every.counts() == (total, round(0.5 * total))
    assert every.masks["stem.0.weight"].kept < every.masks["stem.0.weight"].numel
