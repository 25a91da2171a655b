"""Wrapper prefixes (Lightning, DDP, torch.compile, nested) for every family, and unsupported ResNet variants."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_user_error
from transform_util import all_arrays, labelled_ticket

from ettcli.arch import parse_arch
from ettcli.errors import EttError
from ettcli.stfile import read_header
from ettcli.ticket import read_ticket

ARCHS = ["cifar_resnet_8_4", "imagenet_resnet_10_4", "cifar_vgg_11_4"]
PREFIXES = ["model.", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "model._orig_mod."]


def _save_wrapped(path, arch: str, prefix: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import save_file

    arrays = all_arrays(labelled_ticket(arch))
    save_file({prefix + k: v for k, v in arrays.items()}, str(path))
    return arrays


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_wrapper_prefixes_are_removed_for_every_family(tmp_path, arch, prefix):
    path = tmp_path / "wrapped.safetensors"
    arrays = _save_wrapped(path, arch, prefix)
    t = read_ticket(path)
    assert t.arch.name == arch and t.arch.prefix == ""
    assert set(t.tensors) == set(parse_arch(arch).tensors)  # the family's plain names
    for name in t.tensors:
        np.testing.assert_array_equal(t.array(name), arrays[name])
    assert {n: m.array.tolist() for n, m in t.masks.items()} == {
        n[: -len("_mask")]: v.tolist() for n, v in arrays.items() if n.endswith("_mask")
    }


@pytest.mark.parametrize("prefix", ["model.", "module._orig_mod."])
def test_wrapped_ticket_stretches_to_plain_names(cli, tmp_path, prefix):
    src = tmp_path / "wrapped.safetensors"
    _save_wrapped(src, "imagenet_resnet_18_4", prefix)
    out = tmp_path / "out.safetensors"
    r = cli("stretch", src, "--to", "resnet-34", "-o", out)
    assert r.exit_code == 0, r.stderr
    names = [n for n in read_header(out).tensors if not n.endswith("_mask")]
    assert names == list(parse_arch("imagenet_resnet_34_4").tensors)


def test_pth_with_lightning_prefix(tmp_path):
    import torch

    from ettcli.models import build_model

    sd = build_model(parse_arch("cifar_vgg_11_4"), seed=1).state_dict()
    torch.save({"model." + k: v for k, v in sd.items()}, tmp_path / "lightning.pth")
    t = read_ticket(tmp_path / "lightning.pth")
    assert t.arch.name == "cifar_vgg_11_4" and "layers.0.conv.weight" in t.tensors


def test_a_prefix_on_some_names_only_is_refused(cli, tmp_path):
    from safetensors.numpy import save_file

    arrays = all_arrays(labelled_ticket("cifar_resnet_8_4"))
    path = tmp_path / "mixed.safetensors"
    save_file({("module." + k if k.startswith("blocks.") else k): v for k, v in arrays.items()}, str(path))
    assert_user_error(cli("inspect", path), str(path), "wrapper prefix 'module.'", "same prefix on every name")


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        ({"groups": 4, "width_per_group": 4}, ["unsupported variant: grouped convolutions", "ResNeXt"]),
        ({"width_per_group": 32}, ["unsupported variant: widened bottlenecks", "Wide ResNet"]),
    ],
)
def test_torchvision_variants_are_named(kwargs, fragments):
    import torch
    from torchvision.models.resnet import Bottleneck, ResNet

    with torch.device("meta"):  # shapes only: nothing is allocated
        model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, **kwargs)
    from ettcli.arch import infer_arch

    with pytest.raises(EttError) as exc:
        infer_arch({k: tuple(v.shape) for k, v in model.state_dict().items()}, "tv.pth")
    for frag in fragments:
        assert frag in str(exc.value)
    with torch.device("meta"):
        plain = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)
    assert infer_arch({k: tuple(v.shape) for k, v in plain.state_dict().items()}).block == "bottleneck"
