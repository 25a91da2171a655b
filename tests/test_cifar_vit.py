"""The CIFAR ViT family: torchvision's VisionTransformer on 32x32 images, patch 4, named, initialised and
transformed by ett (no data needed here; training on real images is in test_cifar_vit_train.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_user_error
from torchvision.models.vision_transformer import VisionTransformer

import ettcli
from ettcli.arch import infer_arch, parse_arch
from ettcli.errors import EttError
from ettcli.models import init_ticket
from ettcli.ticket import Ticket, read_ticket


def torchvision_vit(layers: int, width: int, heads: int, seed: int, classes: int = 10) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(32, 4, layers, heads, width, 2 * width, num_classes=classes)


@pytest.mark.parametrize(
    ("name", "layers", "width", "heads"), [("cifar_vit_6", 6, 256, 4), ("cifar_vit_4_64", 4, 64, 4)]
)
def test_init_equals_torchvisions_own_seeded_init(name, layers, width, heads):
    spec = parse_arch(name)
    assert (spec.family, spec.stages, spec.width, spec.name) == ("cifar_vit", (layers,), width, name)
    ticket = init_ticket(spec, seed=3)
    ref = torchvision_vit(layers, width, heads, seed=3).state_dict()
    assert list(ticket.arch.tensors) == list(ref)  # torchvision's names, in its order
    for key, value in ticket.arrays():
        assert torch.equal(torch.from_numpy(np.array(value)), ref[key]), key
    assert ticket.metadata["ett.init"].startswith("torchvision VisionTransformer")


def test_vit_lite_6_4_has_the_published_parameter_count():
    spec = parse_arch("cifar_vit_6")
    model = ettcli.load_model(init_ticket(spec, seed=0))
    assert model.encoder.layers[0].self_attention.num_heads == 4
    assert model.encoder.layers[0].mlp[0].out_features == 512  # MLP ratio 2
    n = sum(p.numel() for p in model.parameters())
    assert 3.15e6 < n < 3.25e6  # ViT-Lite-6/4: 3.19 M (Hassani et al. 2021)


def test_a_torchvision_state_dict_is_recognised_as_cifar_vit_and_others_are_not():
    sd = torchvision_vit(3, 32, 4, seed=0).state_dict()
    assert infer_arch({k: tuple(v.shape) for k, v in sd.items()}).name == "cifar_vit_3_32"
    torch.manual_seed(0)
    other = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10).state_dict()  # patch 8: a plain torchvision ViT
    assert infer_arch({k: tuple(v.shape) for k, v in other.items()}).family == "torchvision_vit"


def test_init_cli_and_inspect(cli, tmp_path):
    out = tmp_path / "v.safetensors"
    r = cli("init", "cifar_vit_4_64", "-o", out, "--seed", "1")
    assert r.exit_code == 0, r.stderr
    assert "cifar_vit_4_64" in r.stdout
    t = read_ticket(out)
    assert t.arch.name == "cifar_vit_4_64" and t.sparsity() == 0.0
    # the patch embedding and the head are prunable but left dense; LayerNorm, biases, tokens never prunable
    assert set(t.arch.fam.left_dense(t.arch)) == {"conv_proj.weight", "heads.head.weight"}
    prunable = set(t.prunable())
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in prunable
    assert not any("ln" in n or "pos_embedding" in n or "class_token" in n or n.endswith("bias") for n in prunable)
    r = cli("init", "cifar_vit_4_62", "-o", tmp_path / "bad.safetensors")
    assert_user_error(r, "width 62", "multiple of 4")
    assert not (tmp_path / "bad.safetensors").exists()


def test_stretch_and_squeeze_keep_torchvision_names_and_load_strictly(tmp_path):
    ticket = init_ticket(parse_arch("cifar_vit_4_64"), seed=0)
    rng = np.random.default_rng(0)
    ticket = ticket.with_masks({n: rng.random(ticket.tensors[n].shape) < 0.5 for n in ticket.prunable()})
    for target, layers in (("vit-8", 8), ("vit-2", 2)):
        op = ettcli.stretch if layers > 4 else ettcli.squeeze
        out = op(ticket, target)
        path = tmp_path / f"{layers}.safetensors"
        out.save(path)
        back = read_ticket(path)
        assert back.arch.name == f"cifar_vit_{layers}_64"
        model = torchvision_vit(layers, 64, 4, seed=9)
        model.load_state_dict(back.masked_state_dict(), strict=True)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        # each target layer is a copy of a source layer, mask included
        for name in back.prunable():
            if "encoder_layer" not in name:
                assert np.array_equal(back.array(name), ticket.array(name))
        src_layers = {i: ticket.array(f"encoder.layers.encoder_layer_{i}.mlp.0.weight").tobytes() for i in range(4)}
        for j in range(layers):
            assert back.array(f"encoder.layers.encoder_layer_{j}.mlp.0.weight").tobytes() in src_layers.values()


def test_bad_names_are_refused():
    with pytest.raises(EttError, match="at least one layer"):
        parse_arch("cifar_vit_0")
    with pytest.raises(EttError, match="multiple of 64"):
        parse_arch("cifar_vit_6_300")
    assert parse_arch("cifar_vit_6_384").name == "cifar_vit_6_384"  # 6 heads of 64 (CCT-14's shape)
    assert isinstance(init_ticket(parse_arch("cifar_vit_1_8"), 0), Ticket)


def test_vit_recipe_warms_up_then_decays_by_cosine_to_zero():
    from ettcli.recipe import recipe_for

    r = recipe_for("cifar10", "cifar_vit")
    assert (r.name, r.optimizer, r.schedule, r.label_smoothing, r.decay) == ("vit", "adamw", "cosine", 0.1, "matrices")
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay, str(r.warmup)) == (200, 128, 5.5e-4, 0.06, "10ep")
    per = 391
    warm, total = 10 * per, 200 * per
    assert r.lr_at(0, per) == 0.0
    assert r.lr_at(warm // 2, per) == pytest.approx(r.lr / 2)
    assert r.lr_at(warm, per) == pytest.approx(r.lr)
    mid = (warm + total) // 2
    assert r.lr_at(mid, per) == pytest.approx(r.lr / 2, rel=1e-3)
    assert r.lr_at(total - 1, per) < 1e-9
    lrs = [r.lr_at(i, per) for i in range(warm, total, 97)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never rises after the warmup
    # --epochs keeps the shape: 10 of 200 epochs of warmup is 1 of 20
    assert str(r.scaled(20, per).warmup) == "1ep"
    # other families keep their dataset's recipe; a recipe named explicitly wins over both
    assert recipe_for("cifar10", "cifar_resnet").name == "cifar"
    assert recipe_for("cifar10", "cifar_vit", "cifar").name == "cifar"
    with pytest.raises(EttError, match="unknown training recipe 'nope'"):
        recipe_for("cifar10", "cifar_vit", "nope")


def test_open_lth_recipes_keep_their_run_identity():
    from ettcli.recipe import RECIPES

    # the fields recipes gained for the ViT appear only where they differ from open_lth's
    assert set(RECIPES["cifar"].as_dict()) == {
        "name", "epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "warmup"
    }  # fmt: skip
    assert RECIPES["vit"].as_dict()["optimizer"] == "adamw"


def test_vit_optimizer_decays_weight_matrices_only():
    from ettcli.recipe import RECIPES
    from ettcli.train import make_optimizer

    ticket = init_ticket(parse_arch("cifar_vit_2_16"), seed=0)
    model = ettcli.load_model(ticket)
    opt = make_optimizer(model, RECIPES["vit"], ticket.arch, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == set(ticket.prunable())  # matrices and the patch kernel; never LayerNorm, biases, tokens
    assert "encoder.pos_embedding" not in decayed and "class_token" not in decayed
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    sgd = make_optimizer(model, RECIPES["cifar"], ticket.arch, "cpu")
    assert isinstance(sgd, torch.optim.SGD) and all(g["weight_decay"] == 1e-4 for g in sgd.param_groups)


@pytest.mark.parametrize("method", ["snip", "grasp", "grasp-abs", "synflow", "magnitude", "random"])
def test_one_shot_methods_hit_exact_counts_on_a_vit(method):
    """The scorers run the LayerNorm + attention network (GraSP's double backward included) and keep exactly
    the asked number of weights; the patch embedding and the head stay dense."""
    from ettcli.pruning import METHODS, prune_run

    spec = parse_arch("cifar_vit_2_16")
    ticket = init_ticket(spec, seed=0)
    rng = np.random.default_rng(0)
    arrays = dict(ticket.arrays())
    head = rng.standard_normal(arrays["heads.head.weight"].shape).astype(np.float32)  # as after some training
    ticket = Ticket.from_arrays({**arrays, "heads.head.weight": head}, {}, {})
    data = None
    if METHODS[method].data:
        data = rng.standard_normal((20, 3, 32, 32)).astype(np.float32), np.arange(20) % 10
    total, _ = ticket.counts()
    out = prune_run(ticket, method, sparsity=0.73, data=data).ticket
    assert out.counts() == (total, round(0.27 * total))
    assert "conv_proj.weight" not in out.masks and "heads.head.weight" not in out.masks
    assert set(out.masks) == set(ticket.prunable()) - {"conv_proj.weight", "heads.head.weight"}


def test_synflow_help_states_its_caveat_on_layernorm_and_attention(cli):
    r = cli("prune", "synflow", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "LayerNorm" in text and "positively homogeneous" in text


def test_milestones_on_the_vit_recipe_are_warned_about():
    from ettcli.errors import EttWarning
    from ettcli.recipe import customise, recipe_for

    with pytest.warns(EttWarning, match="milestones 5ep change nothing"):
        customise(recipe_for("cifar10", "cifar_vit"), 391, milestones="5ep")


def test_a_stated_head_count_holds_through_a_canonical_target_name_and_a_fresh_initialisation(tmp_path):
    """cifar_vit's rule gives 4 heads at width 64; a ticket stating 8 keeps them when stretched to a canonical
    name, and a network initialised at that spec is built and recorded with 8 too."""
    ticket = init_ticket(parse_arch("cifar_vit_2_64"), seed=0).with_heads(8)
    out = ettcli.stretch(ticket, "cifar_vit_4_64")
    assert out.arch.heads == 8 and out.metadata["ett.heads"] == "8"
    out.save(tmp_path / "v4.safetensors")
    model = ettcli.load_model(tmp_path / "v4.safetensors")
    assert model.encoder.layers.encoder_layer_3.self_attention.num_heads == 8
    fresh = init_ticket(out.arch, seed=1)
    assert fresh.arch.heads == 8 and fresh.metadata["ett.heads"] == "8"
    assert init_ticket(parse_arch("cifar_vit_4_64"), seed=1).arch.heads is None  # the rule, nothing stated
