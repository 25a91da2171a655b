"""Architecture names, inference from names and shapes, and the torch models built from a spec."""

from __future__ import annotations

import random

import pytest

from ettcli.arch import infer_arch, parse_arch
from ettcli.errors import EttError

CASES = [
    # name, family, stages, width
    ("cifar_resnet_8", "cifar_resnet", (1, 1, 1), 16),
    ("cifar_resnet_20", "cifar_resnet", (3, 3, 3), 16),
    ("cifar_resnet_56", "cifar_resnet", (9, 9, 9), 16),
    ("cifar_resnet_110", "cifar_resnet", (18, 18, 18), 16),
    ("cifar_resnet_32_64", "cifar_resnet", (5, 5, 5), 64),
    ("cifar_resnet_s3-5-7", "cifar_resnet", (3, 5, 7), 16),
    ("cifar_resnet_s1-2_8", "cifar_resnet", (1, 2), 8),
    ("imagenet_resnet_18", "imagenet_resnet", (2, 2, 2, 2), 64),
    ("imagenet_resnet_26", "imagenet_resnet", (2, 3, 4, 3), 64),
    ("imagenet_resnet_34", "imagenet_resnet", (3, 4, 6, 3), 64),
    ("imagenet_resnet_26_bottleneck", "imagenet_resnet", (2, 2, 2, 2), 64),
    ("imagenet_resnet_50", "imagenet_resnet", (3, 4, 6, 3), 64),
    ("imagenet_resnet_101", "imagenet_resnet", (3, 4, 23, 3), 64),
    ("imagenet_resnet_152_16", "imagenet_resnet", (3, 8, 36, 3), 16),
    ("imagenet_resnet_s1-2-3-1_bottleneck_8", "imagenet_resnet", (1, 2, 3, 1), 8),
    ("cifar_vgg_11", "cifar_vgg", (1, 1, 2, 2, 2), 64),
    ("cifar_vgg_13", "cifar_vgg", (2, 2, 2, 2, 2), 64),
    ("cifar_vgg_16_8", "cifar_vgg", (2, 2, 3, 3, 3), 8),
    ("cifar_vgg_19", "cifar_vgg", (2, 2, 4, 4, 4), 64),
    ("cifar_vgg_s1-1-1-1-1", "cifar_vgg", (1, 1, 1, 1, 1), 64),
]


@pytest.mark.parametrize("name, family, stages, width", CASES)
def test_names_parse_and_print_back(name, family, stages, width):
    spec = parse_arch(name)
    assert (spec.family, spec.stages, spec.width) == (family, stages, width)
    assert spec.name == name


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_inference_from_shuffled_keys_gives_the_spec_back(name):
    spec = parse_arch(name, num_classes=100)
    items = [(k, t.shape) for k, t in spec.tensors.items()]
    random.Random(0).shuffle(items)  # key order must not matter
    assert infer_arch(dict(items)) == spec


def test_lexicographic_key_order_does_not_confuse_block_numbering():
    spec = parse_arch("cifar_resnet_110")
    shapes = dict(sorted((k, t.shape) for k, t in spec.tensors.items()))  # blocks.10 before blocks.2
    assert infer_arch(shapes).stages == (18, 18, 18)


def test_inference_takes_plain_names_only():
    spec = parse_arch("imagenet_resnet_34")
    with pytest.raises(EttError, match="match no known family"):  # wrappers are removed before inference
        infer_arch({"model." + k: t.shape for k, t in spec.tensors.items()})


@pytest.mark.parametrize(
    "name",
    [
        "cifar_resnet_20",
        "cifar_resnet_s3-5-7_8",
        "cifar_resnet_110",
        "imagenet_resnet_18",
        "imagenet_resnet_50",
        "imagenet_resnet_26_bottleneck_8",
        "cifar_vgg_11",
        "cifar_vgg_16_8",
        "cifar_vgg_19",
    ],
)
def test_models_have_exactly_the_spec_keys_and_shapes(name):
    from ettcli.models import build_model

    spec = parse_arch(name)
    sd = build_model(spec, seed=0).state_dict()
    assert list(sd) == list(spec.tensors)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: t.shape for k, t in spec.tensors.items()}
    assert infer_arch({k: tuple(v.shape) for k, v in sd.items()}) == spec


@pytest.mark.parametrize(
    "name, ctor",
    [
        ("imagenet_resnet_18", "resnet18"),
        ("imagenet_resnet_34", "resnet34"),
        ("imagenet_resnet_50", "resnet50"),
        ("imagenet_resnet_101", "resnet101"),
    ],
)
def test_imagenet_resnets_match_torchvision_layout(name, ctor):
    import torchvision

    tv = getattr(torchvision.models, ctor)(weights=None).state_dict()
    spec = parse_arch(name, num_classes=1000)
    assert {k: tuple(v.shape) for k, v in tv.items()} == {k: t.shape for k, t in spec.tensors.items()}
    assert infer_arch({k: tuple(v.shape) for k, v in tv.items()}) == spec


def test_models_run_forward():
    import torch

    from ettcli.models import build_model

    x = torch.randn(2, 3, 32, 32)
    for name in ("cifar_resnet_8_4", "cifar_vgg_11_8", "imagenet_resnet_18_8"):
        assert build_model(parse_arch(name), seed=0)(x).shape == (2, 10)


def test_open_lth_initialisation_and_seed():
    import torch

    from ettcli.models import build_model

    spec = parse_arch("cifar_resnet_20")
    a, b, c = (build_model(spec, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.4.conv1.weight"], c["blocks.4.conv1.weight"])
    w = a["blocks.4.conv2.weight"]  # 32x32x3x3: Kaiming normal, fan-in 288, std sqrt(2/288)
    assert abs(w.std().item() - (2 / 288) ** 0.5) < 0.01
    gamma, beta = a["blocks.4.bn1.weight"], a["blocks.4.bn1.bias"]
    assert gamma.min() >= 0 and gamma.max() <= 1 and gamma.std() > 0.1
    assert torch.count_nonzero(beta) == 0


@pytest.mark.parametrize(
    "short, source, expected",
    [
        ("resnet-56", "cifar_resnet_20_32", "cifar_resnet_56_32"),
        ("resnet56", "cifar_resnet_20", "cifar_resnet_56"),
        ("resnet-34", "imagenet_resnet_26", "imagenet_resnet_34"),
        ("resnet-101", "imagenet_resnet_50", "imagenet_resnet_101"),
        ("vgg-19", "cifar_vgg_16_8", "cifar_vgg_19_8"),
    ],
)
def test_short_names_follow_the_source(short, source, expected):
    assert parse_arch(short, like=parse_arch(source)).name == expected


@pytest.mark.parametrize(
    "name, like, fragment",
    [
        ("resnet-56", None, "needs a source ticket"),
        ("vgg-19", "cifar_resnet_20", "source is cifar_resnet_20 (family cifar_resnet)"),
        ("resnet-34", "imagenet_resnet_50", "no standard imagenet_resnet of depth 34 with bottleneck"),
        ("cifar_resnet_21", None, "depth 6n+2"),
        ("cifar_vgg_12", None, "no standard cifar_vgg of depth 12"),
        ("densenet_121", None, "not an architecture name"),
    ],
)
def test_bad_names_are_refused_clearly(name, like, fragment):
    with pytest.raises(EttError) as exc:
        parse_arch(name, like=parse_arch(like) if like else None)
    assert fragment in str(exc.value)


def test_inference_names_the_broken_tensor():
    spec = parse_arch("cifar_resnet_20")
    shapes = {k: t.shape for k, t in spec.tensors.items()}
    missing = dict(shapes)
    del missing["blocks.4.bn2.running_var"]
    with pytest.raises(EttError, match="missing tensor 'blocks.4.bn2.running_var'"):
        infer_arch(missing)
    extra = dict(shapes, **{"blocks.4.extra.weight": (3,)})
    with pytest.raises(EttError, match="unexpected tensor 'blocks.4.extra.weight'"):
        infer_arch(extra)
    wrong = dict(shapes, **{"blocks.4.conv2.weight": (32, 32, 5, 5)})
    with pytest.raises(
        EttError, match=r"'blocks.4.conv2.weight' has shape \[32, 32, 5, 5\], expected \[32, 32, 3, 3\]"
    ):
        infer_arch(wrong)
    with pytest.raises(EttError, match="match no known family"):
        infer_arch({"encoder.layer.0.weight": (4, 4)})
