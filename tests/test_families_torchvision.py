"""torchvision's VisionTransformer and SwinTransformer as families: inference from their own state dicts,
stretch and squeeze (explicit mappings and default plans), masks, strict loads and forward passes at the
target depth, the prunable tensors and the tensor-only pruning methods."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_user_error
from family_util import check_units_follow, masked_ticket, state
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import ettcli
from ettcli.errors import EttError, EttWarning
from ettcli.plan import make_plan
from ettcli.ticket import Ticket, read_ticket
from ettcli.transform import transform


def vit(layers: int, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def swin(depths: list[int], seed: int = 0) -> SwinTransformer:
    torch.manual_seed(seed)
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=depths, num_heads=[1, 1, 2, 2], window_size=[2, 2], num_classes=10
    )


# --- ViT ---------------------------------------------------------------------------------------------------
def test_vit_is_inferred_with_its_layers_and_prunable_tensors():
    t = masked_ticket(vit(3))
    spec = t.arch
    assert (spec.family, spec.stages, spec.width, spec.num_classes) == ("torchvision_vit", (3,), 16, 10)
    assert spec.name == "torchvision_vit_3_16"
    prunable = set(t.prunable())
    assert "encoder.layers.encoder_layer_2.self_attention.in_proj_weight" in prunable  # fused q, k, v
    assert "encoder.layers.encoder_layer_0.mlp.3.weight" in prunable
    assert {"conv_proj.weight", "heads.head.weight"} <= prunable  # prunable, left dense by default
    for never in ("class_token", "encoder.pos_embedding", "encoder.ln.weight", "conv_proj.bias"):
        assert never not in prunable
    assert not any(n.endswith(("ln_1.weight", "in_proj_bias")) for n in prunable)
    assert spec.fam.left_dense(spec) == ("conv_proj.weight", "heads.head.weight")


@pytest.mark.parametrize(
    ("layers", "to", "mapping"),
    [(3, 5, "0:0;1:1,3;2:2,4"), (3, 4, "0:0;1:3;2:1,2"), (5, 3, "0:0;3:1;4:2"), (4, 2, "0:0;2:1")],
)
def test_vit_transform_with_an_explicit_mapping(tmp_path, layers, to, mapping):
    src = masked_ticket(vit(layers))
    path = tmp_path / "vit.safetensors"
    src.save(path)
    src = read_ticket(path)
    plan = make_plan(src, stages=(to,), mapping=mapping)
    out = transform(src, stages=(to,), mapping=mapping)
    check_units_follow(src, out, plan)
    out.save(tmp_path / "out.safetensors")
    again = read_ticket(tmp_path / "out.safetensors")
    assert again.arch.stages == (to,) and again.metadata["ett.plan"] == mapping
    model = vit(to, seed=5)
    model.load_state_dict(state(again), strict=True)
    assert set(model.state_dict()) == set(again.tensors)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_default_plans_keep_the_first_layer_and_replicate_the_others():
    src = masked_ticket(vit(3))
    assert make_plan(src, "vit-5").mapping == "0:0;1:1,2;2:3,4"
    assert make_plan(src, "vit-5", order="append").mapping == "0:0;1:1,3;2:2,4"
    deep = masked_ticket(vit(6))
    assert make_plan(deep, "vit-3", verb="squeeze").mapping == "0:0;1:1;4:2"
    assert make_plan(deep, stages="3", drop="tail").mapping == "0:0;1:1;2:2"


def test_vit_built_by_ett_at_the_target_depth_runs_the_ticket():
    from ettcli.models import load_model

    out = ettcli.stretch(masked_ticket(vit(2)), "vit-4")
    model = load_model(out)
    assert isinstance(model, VisionTransformer) and len(model.encoder.layers) == 4
    w = model.encoder.layers.encoder_layer_3.self_attention.in_proj_weight
    assert torch.count_nonzero(w) == out.masks["encoder.layers.encoder_layer_3.self_attention.in_proj_weight"].kept
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vit_inspect_and_cli_stretch(cli, tmp_path):
    path = tmp_path / "vit.safetensors"
    masked_ticket(vit(3)).save(path)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["stages"], info["arch"]) == ("torchvision_vit", [3], "torchvision_vit_3_16")
    assert 0.3 < info["sparsity"] < 0.7
    out = tmp_path / "vit6.safetensors"
    r = cli("stretch", path, "--stages", "6", "--mapping", "0:0;1:1,2,3;2:4,5", "-o", out)
    assert r.exit_code == 0, r.stderr
    vit(6).load_state_dict(state(read_ticket(out)), strict=True)
    r = cli("squeeze", out, "--to", "vit-2", "-o", tmp_path / "vit2.safetensors")
    assert r.exit_code == 0, r.stderr
    assert read_ticket(tmp_path / "vit2.safetensors").metadata["ett.plan"] == "0:0;1:1"


def test_vit_convert_from_a_torch_state_dict(cli, tmp_path):
    pt = tmp_path / "vit.pt"
    torch.save(vit(2).state_dict(), pt)
    r = cli("convert", pt, "-o", tmp_path / "vit.safetensors")
    assert r.exit_code == 0, r.stderr
    assert read_ticket(tmp_path / "vit.safetensors").arch.name == "torchvision_vit_2_16"


def test_vit_magnitude_pruning_leaves_patch_embedding_and_head_dense(cli, tmp_path):
    path = tmp_path / "vit.safetensors"
    Ticket.from_arrays({k: v.numpy() for k, v in vit(2).state_dict().items()}, {}, {}).save(path)
    out = tmp_path / "pruned.safetensors"
    for method in ("magnitude", "random", "uniform", "erk"):
        r = cli("prune", method, path, "--sparsity", "0.5", "-o", out)
        assert r.exit_code == 0, (method, r.stderr)
        t = read_ticket(out)
        assert "conv_proj.weight" not in t.masks and "heads.head.weight" not in t.masks, method
        assert abs(t.sparsity() - 0.5) < 0.1, (method, t.sparsity())
        assert t.masks["encoder.layers.encoder_layer_1.mlp.0.weight"].kept < 32 * 16


def test_vit_names_need_a_source():
    with pytest.raises(EttError, match="read from its state dict"):
        ettcli.parse_arch("torchvision_vit_12")


# --- Swin ---------------------------------------------------------------------------------------------------
def test_swin_is_inferred_with_merging_fixed_between_stages():
    t = masked_ticket(swin([2, 2, 4, 2]))
    spec = t.arch
    assert (spec.family, spec.stages, spec.width, spec.block) == ("torchvision_swin", (2, 2, 4, 2), 8, "v1")
    fixed = [n for n, x in spec.tensors.items() if x.role == "fixed"]
    assert "features.2.reduction.weight" in fixed and "features.6.norm.bias" in fixed
    assert "features.2.reduction.weight" in t.prunable()
    for never in ("features.1.0.attn.relative_position_bias_table", "features.3.1.norm1.weight", "norm.weight"):
        assert never not in t.prunable()
    assert swin([2, 2, 6, 2]).state_dict().keys() == ettcli.stretch(t, "swin-12").arch.tensors.keys()


def test_swin_transform_with_an_explicit_mapping_loads_and_runs():
    src = masked_ticket(swin([2, 2, 4, 2]))
    mapping = "0:0;1:1|0:0;1:1|0:0;1:1,3,5;2:2,4,6;3:7|0:0;1:1"
    plan = make_plan(src, stages="2,2,8,2", mapping=mapping)
    out = transform(src, stages="2,2,8,2", mapping=mapping)
    check_units_follow(src, out, plan)
    model = swin([2, 2, 8, 2], seed=3)
    model.load_state_dict(state(out), strict=True)
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    back = ettcli.squeeze(out, stages="2,2,4,2", mapping="0:0;1:1|0:0;1:1|0:0;1:1;2:2;7:3|0:0;1:1")
    for name in src.tensors:
        assert np.array_equal(back.array(name), src.array(name)), name


def test_swin_default_plans_keep_each_blocks_parity():
    src = masked_ticket(swin([2, 2, 6, 2]))
    for kwargs in ({"stages": "2,2,18,2"}, {"stages": "2,2,12,2", "order": "append"}, {"stages": "2,2,4,2"}):
        plan = make_plan(src, **kwargs)
        for row in plan.fill:
            assert all(i % 2 == j % 2 for j, i in enumerate(row)), (kwargs, plan.mapping)
    assert make_plan(src, "swin-24").target.stages == (2, 2, 18, 2)


def test_swin_mapping_that_moves_parity_is_warned_about(cli, tmp_path):
    path = tmp_path / "swin.safetensors"
    masked_ticket(swin([2, 2, 4, 2])).save(path)
    out = tmp_path / "out.safetensors"
    mapping = "0:0;1:1|0:0;1:1|0:0;1:1,2;2:3;3:4,5|0:0;1:1"
    r = cli("stretch", path, "--stages", "2,2,6,2", "--mapping", mapping, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "ett: warning:" in r.stderr and "parity" in r.stderr and "stage 3 block 1 -> position 2" in r.stderr
    swin([2, 2, 6, 2]).load_state_dict(state(read_ticket(out)), strict=True)


def test_swin_v2_is_recognised_and_built(tmp_path):
    from torchvision.models import swin_transformer as sw

    from ettcli.models import build_model

    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[2, 2, 2, 2],
        num_heads=[1, 1, 2, 2],
        window_size=[2, 2],
        num_classes=10,
        block=sw.SwinTransformerBlockV2,
        downsample_layer=sw.PatchMergingV2,
    )
    t = masked_ticket(model)
    assert t.arch.block == "v2" and t.arch.name == "torchvision_swin_s2-2-2-2_v2_8"
    with pytest.warns(EttWarning, match="parity"):  # a stage of 2 has no even block to copy to position 2
        out = ettcli.stretch(t, stages="2,2,4,2")
    built = build_model(out.arch, seed=None, init=False)
    built.load_state_dict(state(out), strict=True)
    built.eval()
    assert built(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_swin_unit_of_another_shape_is_refused_naming_it(cli, tmp_path):
    sd = {k: v.numpy() for k, v in swin([2, 2, 2, 2]).state_dict().items()}
    sd["features.3.1.mlp.0.weight"] = np.zeros((8, 16), np.float32)
    path = tmp_path / "odd.safetensors"
    from safetensors.numpy import save_file

    save_file(sd, str(path))
    assert_user_error(cli("inspect", path), "features.3.1.mlp.0.weight", "features.3.0.mlp.0.weight", "same shapes")


def test_swin_inspect_counts_parameters_without_its_index_buffers(cli, tmp_path):
    model = swin([2, 2, 2, 2])
    path = tmp_path / "swin.safetensors"
    masked_ticket(model).save(path)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["total_params"] == sum(p.numel() for p in model.parameters())
    rows = {t["name"]: t for t in info["tensors"]}
    assert rows["features.5.1.attn.relative_position_index"]["buffer"]
    assert not rows["features.5.1.attn.relative_position_bias_table"]["buffer"]


def test_transformer_names_are_refused_in_one_line_where_they_cannot_be_resolved(cli, tmp_path):
    assert_user_error(cli("init", "torchvision_vit_12", "-o", tmp_path / "v.safetensors"), "read from its state dict")
    path = tmp_path / "vit.safetensors"
    masked_ticket(vit(2)).save(path)
    out = tmp_path / "out.safetensors"
    assert_user_error(cli("stretch", path, "--to", "resnet-56", "-o", out), "names a resnet", "torchvision_vit_2_16")
    assert_user_error(cli("stretch", path, "--stages", "3,3", "-o", out), "gives 2 stages", "has 1")
    assert not out.exists()


def test_vit_is_built_with_torchvisions_own_head_count_and_an_assumed_one_is_said(monkeypatch):
    """The weights do not hold the head count: vit_h_14's width (1280) has 16 heads of size 80 in
    torchvision, not 1280 / 64; a width torchvision has no ViT of is built with head size 64, with a warning."""
    from ettcli.families import _heads
    from ettcli.models import load_model

    monkeypatch.setattr(_heads, "_WARNED", set())
    torch.manual_seed(0)
    huge = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=16, hidden_dim=1280, mlp_dim=8)
    ticket = Ticket.from_arrays({k: v.numpy() for k, v in huge.state_dict().items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error", EttWarning)
        model = load_model(ticket)
    assert model.encoder.layers.encoder_layer_0.self_attention.num_heads == 16
    huge.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), huge(x), atol=1e-5)  # the same function as the network it came from

    small = masked_ticket(vit(2))  # 2 heads of size 8 at width 16
    with pytest.warns(EttWarning, match="torchvision has no model of width 16; building with 1 head. "):
        model = load_model(small)
    assert model.encoder.layers.encoder_layer_0.self_attention.num_heads == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", EttWarning)
        load_model(small)  # said once per process


def test_convert_heads_states_the_count_and_a_bad_one_is_refused_in_one_line(cli, tmp_path):
    from ettcli.models import load_model

    src = tmp_path / "vit.safetensors"
    masked_ticket(vit(2)).save(src)  # 2 heads at width 16: not what ett would assume (1)
    out = tmp_path / "vit2h.safetensors"
    r = cli("convert", src, "--heads", "2", "-o", out)
    assert r.exit_code == 0, r.stderr
    ticket = read_ticket(out)
    assert ticket.metadata["ett.heads"] == "2"
    with warnings.catch_warnings():
        warnings.simplefilter("error", EttWarning)
        assert load_model(ticket).encoder.layers.encoder_layer_0.self_attention.num_heads == 2

    bad = tmp_path / "bad.safetensors"
    assert_user_error(cli("convert", src, "--heads", "3", "-o", bad), "divides the width (16)")
    assert not bad.exists()
    resnet = tmp_path / "r20.safetensors"
    assert cli("init", "cifar_resnet_20", "-o", resnet).exit_code == 0
    assert_user_error(
        cli("convert", resnet, "--heads", "4", "-o", bad), "only torchvision_vit", "cifar_resnet_20 has none to state"
    )
    assert not bad.exists()
