"""Every ticket reader, the ett writer, masks, and `ett convert`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_user_error, make_ticket

from ettcli.errors import EttError
from ettcli.mask import Mask
from ettcli.stfile import Source
from ettcli.ticket import Ticket, read_ticket


def _same(a: Ticket, b: Ticket) -> None:
    assert a.arch == b.arch
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        np.testing.assert_array_equal(a.array(name), b.array(name))
    assert set(a.masks) == set(b.masks)
    for name in a.masks:
        assert a.masks[name] == b.masks[name]


def test_ett_ticket_round_trip(tmp_path):
    t = make_ticket("cifar_resnet_8_4", 0.6)
    t.metadata["ett.dataset"] = "cifar10"
    t.save(tmp_path / "t.safetensors")
    back = read_ticket(tmp_path / "t.safetensors")
    _same(t, back)
    assert back.metadata["ett.arch"] == "cifar_resnet_8_4" and back.metadata["ett.format"] == "1"
    assert back.metadata["ett.dataset"] == "cifar10"
    assert abs(back.sparsity() - 0.6) < 1e-4
    # masks are stored as bool X_mask beside X
    from safetensors.numpy import load_file

    raw = load_file(tmp_path / "t.safetensors")
    assert raw["blocks.1.conv2.weight_mask"].dtype == np.bool_
    assert "bn.weight_mask" not in raw


def test_plain_state_dict_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    model = build_model(parse_arch("cifar_vgg_11_8"), seed=3)
    save_file(model.state_dict(), tmp_path / "plain.safetensors")
    t = read_ticket(tmp_path / "plain.safetensors")
    assert t.arch.name == "cifar_vgg_11_8" and t.sparsity() == 0.0 and not t.masks
    np.testing.assert_array_equal(t.array("layers.4.conv.weight"), model.state_dict()["layers.4.conv.weight"].numpy())


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_pth_state_dict_with_wrapper_prefixes(tmp_path, prefix):
    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    sd = build_model(parse_arch("cifar_resnet_8_4"), seed=1).state_dict()
    path = tmp_path / "model.pth"
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    t = read_ticket(path)
    assert t.arch.name == "cifar_resnet_8_4"
    np.testing.assert_array_equal(t.array("fc.weight"), sd["fc.weight"].numpy())


def test_pth_refuses_pickled_objects(tmp_path, cli):
    import argparse

    path = tmp_path / "evil.pth"
    torch.save({"x": argparse.Namespace(cmd="anything")}, path)  # an arbitrary object, not a tensor
    with pytest.raises(EttError, match="pickled Python object"):
        read_ticket(path)
    assert_user_error(cli("inspect", path), "evil.pth", "argparse.Namespace", "model.state_dict()")


def test_torch_prune_state_dict(tmp_path):
    import torch.nn.utils.prune as prune

    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    model = build_model(parse_arch("cifar_resnet_8_4"), seed=2)
    prune.l1_unstructured(model.blocks[1].conv1, "weight", amount=0.5)
    prune.random_unstructured(model.fc, "weight", amount=0.3)
    sd = model.state_dict()
    assert "blocks.1.conv1.weight_orig" in sd and "blocks.1.conv1.weight" not in sd
    for path in (tmp_path / "pruned.pt", tmp_path / "pruned.safetensors"):
        if path.suffix == ".pt":
            torch.save(sd, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, path)
        t = read_ticket(path)
        assert set(t.masks) == {"blocks.1.conv1.weight", "fc.weight"}
        np.testing.assert_array_equal(t.array("blocks.1.conv1.weight"), sd["blocks.1.conv1.weight_orig"].numpy())
        assert t.masks["blocks.1.conv1.weight"].kept == sd["blocks.1.conv1.weight_mask"].sum().item()
        assert abs(t.masks["blocks.1.conv1.weight"].sparsity - 0.5) < 1e-6


def test_convert_may_overwrite_its_input(tmp_path, cli):
    path = tmp_path / "t.safetensors"
    make_ticket("cifar_resnet_8_4", 0.5).save(path)
    before = read_ticket(path)
    before.tensors = {n: Source.of_array(a.copy()) for n, a in before.arrays()}  # detach from the file
    r = cli("convert", path, "-o", path)
    assert r.exit_code == 0, r.stderr
    _same(before, read_ticket(path))
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_mask_values():
    m = Mask.from_values(np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    assert (m.kept, m.numel, m.density, m.sparsity) == (1, 4, 0.25, 0.75)
    with pytest.raises(EttError, match="not binary"):
        Mask.from_values(np.array([0, 2, 1]))
    shuffled = Mask(np.arange(100) % 3 == 0).shuffled(np.random.default_rng(0))
    assert shuffled.kept == 34 and shuffled != Mask(np.arange(100) % 3 == 0)


@pytest.mark.parametrize("with_numpy", [False, True])
def test_a_mask_read_as_bytes_is_the_same_value_as_one_built_from_an_array(with_numpy):
    import pickle

    def of_bytes(raw, shape, name="mask"):
        return Mask.from_bytes(raw, shape, name, with_numpy=with_numpy)

    values = np.random.default_rng(0).random((3, 5, 7)) < 0.3
    from_array = Mask(values)
    from_bytes = of_bytes(values.tobytes(), values.shape)
    assert from_bytes == from_array and from_array == from_bytes
    assert (from_bytes.kept, from_bytes.numel, from_bytes.shape) == (int(values.sum()), 105, (3, 5, 7))
    assert (from_bytes.kept, from_bytes.density) == (int(values.sum()), values.mean())  # counted once, kept
    np.testing.assert_array_equal(from_bytes.array, values)
    assert not from_bytes.array.flags.writeable  # as a mask read from a file always was
    assert bytes(from_bytes.buffer()) == values.tobytes() == bytes(from_array.buffer())
    assert pickle.loads(pickle.dumps(from_bytes)) == from_array
    assert pickle.loads(pickle.dumps(from_array)) == from_bytes
    assert from_bytes != of_bytes(values.tobytes(), (5, 3, 7))  # same bytes, another shape
    flipped = bytearray(values.tobytes())
    flipped[0] ^= 1
    assert from_bytes != of_bytes(bytes(flipped), values.shape)
    with pytest.raises(EttError, match="'w_mask' holds byte values other than 0 and 1"):
        of_bytes(b"\x00\x01\x02", (3,), "w_mask")
    with pytest.raises(EttError, match="3 bytes for its shape"):
        of_bytes(b"\x00\x01\x01", (2, 2))


def test_a_bool_mask_byte_other_than_0_or_1_in_a_file_is_refused(tmp_path, cli):
    from ettcli.stfile import read_header

    path = tmp_path / "t.safetensors"
    make_ticket("cifar_resnet_20", sparsity=0.5).save(path)
    info = read_header(path).tensors["blocks.0.conv1.weight_mask"]
    with open(path, "r+b") as fh:
        fh.seek(info.start + 5)
        fh.write(b"\x07")
    with pytest.raises(EttError, match="'blocks.0.conv1.weight_mask' holds byte values other than 0 and 1"):
        read_ticket(path)
    assert_user_error(cli("inspect", str(path)), "holds byte values other than 0 and 1")
    # ett stretch checks masks as bytes, without numpy: the same refusal
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ettcli",
            "stretch",
            str(path),
            "--to",
            "resnet-32",
            "-o",
            str(tmp_path / "o.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "holds byte values other than 0 and 1" in res.stderr, res.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_metadata_that_contradicts_the_tensors_is_refused(tmp_path):
    t = make_ticket("cifar_resnet_8_4")
    t.save(tmp_path / "t.safetensors")
    from ettcli.stfile import read_header, write_file

    h = read_header(tmp_path / "t.safetensors")
    write_file(
        tmp_path / "lie.safetensors",
        [(n, Source.of_file(h.path, i)) for n, i in h.tensors.items()],
        {**h.metadata, "ett.arch": "cifar_resnet_20"},
    )
    with pytest.raises(EttError, match="metadata says ett.arch=cifar_resnet_20"):
        read_ticket(tmp_path / "lie.safetensors")


def test_load_model_and_masked_state_dict_give_a_ready_masked_network(tmp_path):
    import torch
    from conftest import make_ticket

    import ettcli

    ticket = make_ticket("cifar_resnet_8_4", 0.6)
    path = tmp_path / "t.safetensors"
    ticket.save(path)
    model = ettcli.load_model(path)
    params = dict(model.named_parameters())
    sd = ticket.masked_state_dict()
    for name, mask in ticket.masks.items():
        assert torch.all(params[name].detach()[torch.from_numpy(~mask.array)] == 0), name
        assert torch.all(sd[name][torch.from_numpy(~mask.array)] == 0)
        kept = torch.from_numpy(mask.array)
        assert torch.equal(sd[name][kept], torch.from_numpy(np.array(ticket.array(name)))[kept])
    from ettcli.models import build_model

    fresh = build_model(ticket.arch, seed=None, init=False)
    fresh.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
