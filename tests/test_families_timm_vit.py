"""timm's VisionTransformer and DeiT as a family: inference from the state dicts of tiny real timm models
(the variants timm builds: class token or average pooling, prefix tokens, position embedding or none, layer
scale and q/k norm, DeiT's distillation token and head), stretch and squeeze with explicit mappings and
default plans, strict loads and forward passes at the target depth, the CLI, and the tensor-only pruning
methods' exact counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from family_util import check_mapping, masked_ticket, state

import ettcli
from ettcli.plan import make_plan
from ettcli.ticket import Ticket, read_ticket
from ettcli.transform import transform

timm = pytest.importorskip("timm")

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 10}
VARIANTS = {  # timm model name -> the options of a variant
    "vit": ("vit_tiny_patch16_224", {}),
    "avg-pool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "no-embed-class": ("vit_tiny_patch16_224", {"no_embed_class": True, "reg_tokens": 2}),
    "no-pos-embed": ("vit_tiny_patch16_224", {"pos_embed": "none"}),
    "layer-scale": ("vit_tiny_patch16_224", {"init_values": 1e-5, "qk_norm": True}),
    "deit": ("deit_tiny_distilled_patch16_224", {}),
}


def vit(variant: str, depth: int, seed: int = 0) -> torch.nn.Module:
    name, options = VARIANTS[variant]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, depth=depth, **TINY, **options)


def block(s: int, i: int) -> str:
    return f"blocks.{i}."


def run(model: torch.nn.Module, ticket: Ticket) -> torch.Tensor:
    model.load_state_dict(state(ticket), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    return out


# --- inference --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_inferred_with_its_blocks_and_prunable_tensors(variant):
    t = masked_ticket(vit(variant, 3))
    spec = t.arch
    assert (spec.family, spec.stages, spec.width, spec.num_classes) == ("timm_vit", (3,), 16, 10)
    assert spec.name == ("timm_vit_3_distilled_16" if variant == "deit" else "timm_vit_3_16")
    prunable = set(t.prunable())
    for i in range(3):
        for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            assert f"blocks.{i}.{leaf}.weight" in prunable
    never = [
        n for n in t.tensors if n.endswith(("bias", "token", "pos_embed", "gamma")) or ".norm" in n or "norm." in n
    ]
    assert never and not prunable & set(never)
    heads = {"head.weight", "head_dist.weight"} & set(t.tensors)
    assert spec.fam.left_dense(spec) == ("patch_embed.proj.weight", *sorted(heads))
    assert set(spec.tensors) == set(vit(variant, 3).state_dict())


def test_a_vit_is_not_taken_for_a_cifar_resnet_and_a_resnet_not_for_a_vit():
    from ettcli.arch import infer_arch

    shapes = {k: tuple(v.shape) for k, v in vit("vit", 2).state_dict().items()}
    assert infer_arch(shapes).family == "timm_vit"
    resnet = {k: t.shape for k, t in ettcli.parse_arch("cifar_resnet_8_4").tensors.items()}
    assert infer_arch(resnet).family == "cifar_resnet"


def test_a_vit_without_its_patch_embedding_names_the_closest_family(cli, tmp_path):
    from conftest import assert_user_error
    from safetensors.numpy import save_file

    sd = {k: v.numpy() for k, v in vit("vit", 2).state_dict().items() if not k.startswith("patch_embed.")}
    save_file(sd, str(tmp_path / "odd.safetensors"))
    assert_user_error(cli("inspect", tmp_path / "odd.safetensors"), "closest: timm_vit", "patch_embed.proj.weight")


# --- transforms -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    ("depth", "to", "mapping"),
    [(3, 5, "0:0;1:1,3;2:2,4"), (3, 4, "0:0;1:3;2:1,2"), (5, 3, "0:0;3:1;4:2"), (4, 2, "0:0;2:1")],
)
def test_explicit_mapping_follows_every_block_and_loads_at_the_target_depth(tmp_path, variant, depth, to, mapping):
    src = masked_ticket(vit(variant, depth))
    src.save(tmp_path / "src.safetensors")
    src = read_ticket(tmp_path / "src.safetensors")
    out = transform(src, stages=(to,), mapping=mapping)
    check_mapping(src, out, mapping, block)
    out.save(tmp_path / "out.safetensors")
    again = read_ticket(tmp_path / "out.safetensors")
    assert again.arch.stages == (to,) and again.metadata["ett.plan"] == mapping
    model = vit(variant, to, seed=5)
    assert set(model.state_dict()) == set(again.tensors)
    logits = run(model, again)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_default_plans_keep_the_first_block_and_replicate_the_others():
    src = masked_ticket(vit("vit", 3))
    assert make_plan(src, "vit-5").mapping == "0:0;1:1,2;2:3,4"
    assert make_plan(src, "vit-5", order="append").mapping == "0:0;1:1,3;2:2,4"
    deep = masked_ticket(vit("vit", 6))
    assert make_plan(deep, "vit-3", verb="squeeze").mapping == "0:0;1:1;4:2"
    assert make_plan(deep, stages="3", drop="tail").mapping == "0:0;1:1;2:2"
    out = ettcli.stretch(src, "vit-5")
    check_mapping(src, out, "0:0;1:1,2;2:3,4", block)
    run(vit("vit", 5), out)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ett_builds_the_timm_model_at_the_target_depth(variant):
    from ettcli.models import load_model

    src = masked_ticket(vit(variant, 2))
    out = ettcli.stretch(src, "vit-4")
    model = load_model(out)
    reference = vit(variant, 4)
    assert type(model) is type(reference) and len(model.blocks) == 4
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    qkv = model.blocks[3].attn.qkv.weight
    assert torch.count_nonzero(qkv) == out.masks["blocks.3.attn.qkv.weight"].kept
    model.eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    reference.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 10) and torch.isfinite(y).all()
        if variant == "layer-scale":  # the q/k norm's size gives the head count, so the two compute alike
            assert torch.allclose(y, reference(x))


# --- the CLI ----------------------------------------------------------------------------------------------
def test_inspect_plan_stretch_and_squeeze_on_the_command_line(cli, tmp_path):
    path = tmp_path / "deit.safetensors"
    masked_ticket(vit("deit", 3)).save(path)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["stages"], info["arch"]) == ("timm_vit", [3], "timm_vit_3_distilled_16")
    assert 0.3 < info["sparsity"] < 0.7
    r = cli("plan", path, "--stages", "6")
    assert r.exit_code == 0, r.stderr
    assert "mapping: 0:0;1:1,2,3;2:4,5" in r.stdout
    out = tmp_path / "deit6.safetensors"
    r = cli("stretch", path, "--stages", "6", "--mapping", "0:0;1:1,2,3;2:4,5", "-o", out)
    assert r.exit_code == 0, r.stderr
    run(vit("deit", 6), read_ticket(out))
    r = cli("squeeze", out, "--to", "vit-2", "-o", tmp_path / "deit2.safetensors")
    assert r.exit_code == 0, r.stderr
    two = read_ticket(tmp_path / "deit2.safetensors")
    assert two.metadata["ett.plan"] == "0:0;1:1"
    check_mapping(read_ticket(path), two, "0:0;1:1", block)
    run(vit("deit", 2), two)


def test_convert_from_a_torch_state_dict(cli, tmp_path):
    pt = tmp_path / "vit.pt"
    torch.save(vit("avg-pool", 2).state_dict(), pt)
    r = cli("convert", pt, "-o", tmp_path / "vit.safetensors")
    assert r.exit_code == 0, r.stderr
    t = read_ticket(tmp_path / "vit.safetensors")
    assert t.arch.name == "timm_vit_2_16" and not t.masks
    run(vit("avg-pool", 2), t)


# --- pruning ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "random", "uniform", "erk"])
def test_tensor_only_pruning_keeps_exact_counts_and_leaves_patch_embedding_and_heads_dense(method):
    dense = Ticket.from_arrays({k: v.numpy() for k, v in vit("deit", 2).state_dict().items()}, {}, {})
    total, _ = dense.counts()
    out = ettcli.prune(dense, method, sparsity=0.4)  # the tiny patch embedding holds 40% of the weights
    assert out.counts() == (total, round(0.6 * total))
    for name in ("patch_embed.proj.weight", "head.weight", "head_dist.weight"):
        assert name not in out.masks or out.masks[name].kept == out.masks[name].numel, (method, name)
    assert out.masks["blocks.1.mlp.fc1.weight"].kept < 32 * 16
    every = ettcli.prune(dense, method, sparsity=0.73, exclude=[])
    assert every.counts() == (total, round(0.27 * total))
    assert every.masks["head_dist.weight"].kept < every.masks["head_dist.weight"].numel


def test_prune_on_the_command_line_keeps_the_exact_count(cli, tmp_path):
    path = tmp_path / "vit.safetensors"
    Ticket.from_arrays({k: v.numpy() for k, v in vit("layer-scale", 2).state_dict().items()}, {}, {}).save(path)
    r = cli("prune", "magnitude", path, "--sparsity", "0.9", "--exclude", "none", "-o", tmp_path / "p.safetensors")
    assert r.exit_code == 0, r.stderr
    t = read_ticket(tmp_path / "p.safetensors")
    total, kept = t.counts()
    assert kept == round(0.1 * total) and "patch_embed.proj.weight" in t.masks
    weights = np.concatenate([np.abs(t.array(n)).ravel() for n in t.masks])
    keep = np.concatenate([t.masks[n].array.ravel() for n in t.masks])
    assert weights[keep].min() >= weights[~keep].max()


def test_the_head_count_timm_uses_at_a_width_or_a_warning_where_its_models_differ(monkeypatch):
    """Without a q/k norm the weights do not hold the head count: timm's ViT-H width (1280) is built with its 16
    heads (size 80); at 768 timm has models with 12 and with 16 heads, so the one assumed is said."""
    import warnings

    from ettcli.errors import EttWarning
    from ettcli.families import _heads
    from ettcli.models import load_model

    monkeypatch.setattr(_heads, "_WARNED", set())
    options = {"img_size": 32, "patch_size": 16, "depth": 1, "mlp_ratio": 0.05, "num_classes": 10}
    torch.manual_seed(0)
    huge = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=1280, num_heads=16, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EttWarning)
        model = load_model(masked_ticket(huge))
    assert model.blocks[0].attn.num_heads == 16
    base = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=768, num_heads=12, **options)
    with pytest.warns(EttWarning, match="timm's models of width 768 have 12 or 16 heads; building with 12 heads"):
        model = load_model(masked_ticket(base))
    assert model.blocks[0].attn.num_heads == 12


def test_a_ticket_states_its_head_count_and_every_network_built_of_it_has_that_many(tmp_path, monkeypatch):
    """timm's vit_base_patch16_gap_224 has 16 heads at width 768, where most of timm's ViTs have 12: stated
    with Ticket.with_heads (ett.heads), the count is kept by saving, reading and transforms, used by the
    builder without a warning, and part of the ticket's identity."""
    import warnings

    from ettcli.errors import EttError, EttWarning
    from ettcli.families import _heads
    from ettcli.models import load_model

    monkeypatch.setattr(_heads, "_WARNED", set())
    torch.manual_seed(0)
    options = {"img_size": 32, "patch_size": 16, "depth": 2, "mlp_ratio": 0.05, "num_classes": 10}
    gap = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=768, num_heads=16, **options)
    plain = masked_ticket(gap)
    stated = plain.with_heads(16)
    assert (stated.arch.heads, stated.metadata["ett.heads"]) == (16, "16") and plain.arch.heads is None
    assert stated.fingerprint() != plain.fingerprint()  # a run of one is not a run of the other
    assert stated.arch == plain.arch and stated.arch.name == plain.arch.name  # the same tensors, names and plans
    stated.save(tmp_path / "gap.safetensors")
    back = read_ticket(tmp_path / "gap.safetensors")
    assert back.arch.heads == 16 and back.fingerprint() == stated.fingerprint()
    ettcli.stretch(back, "vit-4").save(tmp_path / "gap4.safetensors")
    deeper = read_ticket(tmp_path / "gap4.safetensors")
    assert deeper.arch.heads == 16 and deeper.metadata["ett.heads"] == "16" and len(deeper.arch.tensors) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", EttWarning)
        model, model4 = load_model(back), load_model(deeper)
    assert model.blocks[0].attn.num_heads == 16 and model4.blocks[3].attn.num_heads == 16
    reference = load_model(plain)  # unstated: 12 heads, with the warning (not raised here)
    assert reference.blocks[0].attn.num_heads == 12
    gap.load_state_dict(stated.masked_state_dict(), strict=True)  # pruned weights at 0, as load_model has them
    gap.eval(), model.eval(), reference.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), gap(x), atol=1e-5)  # the network the ticket came from
        assert not torch.allclose(reference(x), gap(x), atol=1e-3)  # what the assumed count computes instead

    from ettcli.lmc import interpolate

    halfway = interpolate(back, back, 0.5)  # LMC builds the mixed network as the two ends were built
    assert halfway.arch.heads == 16 and load_model(halfway).blocks[0].attn.num_heads == 16
    with pytest.raises(EttError, match="states 16 attention heads .ett.heads. but the second ticket states none"):
        interpolate(back, plain, 0.5)

    with pytest.raises(
        EttError, match=r"ett.heads is '7'; the head count is a whole number that divides the width \(768\)"
    ):
        plain.with_heads(7)
    layer_scale = masked_ticket(vit("layer-scale", 2))  # q/k norm: 2 heads of size 8 at width 16
    with pytest.raises(EttError, match="the q/k norm's size .8. makes 2"):
        load_model(layer_scale.with_heads(4))
