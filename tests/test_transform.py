"""Transforms as library calls: round trips, strict loading into torch models, what travels with a unit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_ticket
from transform_util import all_arrays, labelled_ticket, unit_code, write_labelled

import ettcli
from ettcli.errors import EttError
from ettcli.plan import make_plan
from ettcli.ticket import read_ticket
from ettcli.transform import apply_plan, predict_sparsity, squeeze, stretch, transform

ROOT = Path(__file__).resolve().parent.parent

PAIRS = [
    # source, target, stretch order, the squeeze that undoes it
    ("cifar_resnet_20_8", "resnet-56", "interpolate", "interleave"),
    ("cifar_resnet_20_8", "resnet-44", "append", "tail"),
    ("cifar_resnet_14_4", "cifar_resnet_s4-7-9_4", "interpolate", "interleave"),
    ("cifar_resnet_14_4", "cifar_resnet_s4-7-9_4", "append", "tail"),
    ("imagenet_resnet_18_8", "resnet-34", "interpolate", "interleave"),
    ("imagenet_resnet_26_8", "resnet-34", "append", "tail"),
    ("imagenet_resnet_26_bottleneck_8", "imagenet_resnet_50_8", "interpolate", "interleave"),
    ("cifar_vgg_16_8", "vgg-19", "interpolate", "interleave"),
    ("cifar_vgg_16_8", "vgg-19", "append", "tail"),
]


@pytest.mark.parametrize("src,dst,order,drop", PAIRS, ids=[f"{p[0]}-{p[1]}-{p[2]}" for p in PAIRS])
def test_stretch_then_squeeze_gives_the_source_back(tmp_path, src, dst, order, drop):
    source = write_labelled(tmp_path / "src.safetensors", src)
    up = stretch(source, dst, order=order)
    up.save(tmp_path / "up.safetensors")
    deep = read_ticket(tmp_path / "up.safetensors")
    assert deep.arch == up.arch and deep.arch.name != source.arch.name
    back = squeeze(deep, source.arch.name, drop=drop)
    back.save(tmp_path / "back.safetensors")
    again = read_ticket(tmp_path / "back.safetensors")
    a, b = all_arrays(source), all_arrays(again)
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    assert again.metadata["ett.arch"] == source.arch.name


CASES = [
    ("cifar_resnet_20_8", "resnet-56"),
    ("imagenet_resnet_18_8", "resnet-34"),
    ("imagenet_resnet_26_bottleneck_8", "imagenet_resnet_50_8"),
    ("cifar_vgg_16_8", "vgg-19"),
    ("cifar_resnet_56_4", "resnet-20"),
    ("imagenet_resnet_26_8", "resnet-18"),
]


@pytest.mark.parametrize("src,dst", CASES)
def test_loads_strictly_into_a_fresh_target_model(tmp_path, src, dst):
    import torch

    from ettcli.models import build_model

    path = tmp_path / "src.safetensors"
    make_ticket(src, sparsity=0.8).save(path)
    source = read_ticket(path)
    target = transform(source, dst)
    target.save(tmp_path / "dst.safetensors")
    written = read_ticket(tmp_path / "dst.safetensors")
    model = build_model(written.arch, seed=123)
    state = {n: torch.from_numpy(np.array(a)) for n, a in written.arrays()}
    model.load_state_dict(state, strict=True)
    plan = make_plan(source.arch, dst)
    loaded = model.state_dict()
    assert list(loaded) == list(written.arch.tensors) == list(written.tensors)
    for name, (src_name, _) in plan.tensor_sources().items():
        np.testing.assert_array_equal(loaded[name].numpy(), source.array(src_name), err_msg=name)
        if src_name in source.masks:
            assert written.masks[name] == source.masks[src_name]
    assert len(written.masks) == sum(t.prunable for t in written.arch.tensors.values())


@pytest.mark.parametrize(
    "src,dst", [("cifar_resnet_20_4", "resnet-44"), ("imagenet_resnet_26_4", "resnet-34"), ("cifar_vgg_19_4", "vgg-11")]
)
def test_masks_and_batchnorm_buffers_travel_with_their_units(tmp_path, src, dst):
    source = write_labelled(tmp_path / "src.safetensors", src)
    plan = make_plan(source.arch, dst)
    target = apply_plan(source, plan)
    target.save(tmp_path / "dst.safetensors")
    out = read_ticket(tmp_path / "dst.safetensors")
    for name, t in out.arch.tensors.items():
        value = out.array(name)
        if t.role == "unit":
            expected = unit_code(
                source.arch.tensors[source.arch.unit_prefix(t.stage, plan.fill[t.stage][t.unit]) + t.local]
            )
            assert expected == 1000 + 100 * t.stage + plan.fill[t.stage][t.unit]
        else:
            expected = unit_code(t)
        if name.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and int(value) == int(expected), name
        else:
            assert np.all(np.floor(value) == expected), name  # weights, biases, gamma/beta, running stats
        src_name = plan.tensor_sources()[name][0]
        if t.prunable:
            assert out.masks[name] == source.masks[src_name], name


def test_random_copies_shuffle_only_later_copies(tmp_path):
    source = write_labelled(tmp_path / "src.safetensors", "cifar_resnet_20_8", density=0.4)
    plan = make_plan(source.arch, "resnet-56")
    plain = apply_plan(source, plan)
    ctrl = apply_plan(source, plan, random_copies=7)
    same = apply_plan(source, plan, random_copies=7)
    units = plan.unit_sources()
    shuffled = 0
    for name, (src_name, copy) in plan.tensor_sources().items():
        assert ctrl.tensors[name] == plain.tensors[name]  # weights still copied
        if name not in ctrl.masks:
            continue
        assert ctrl.masks[name] == same.masks[name]  # seeded
        a, b = ctrl.masks[name], source.masks[src_name]
        if copy == 0:
            assert a == b, name
        else:
            assert a.kept == b.kept and a != b, name
            shuffled += 1
        t = plan.target.tensors[name]
        if t.role == "unit":
            assert units[(t.stage, t.unit)][1] == copy
    assert shuffled == 2 * 3 * 3 * 2  # 2 convs in each of the 3 extra copies of 2 blocks in 3 stages
    assert predict_sparsity(source, plan).kept == ctrl.counts()[1] == plain.counts()[1]
    assert ctrl.metadata["ett.random_copies"] == "7"


def test_predicted_sparsity_matches_the_written_ticket(tmp_path):
    path = tmp_path / "r20.safetensors"
    make_ticket("cifar_resnet_20_8", sparsity=0.79).save(path)
    source = read_ticket(path)
    for dst in ("resnet-56", "resnet-32", "resnet-8"):
        plan = make_plan(source.arch, dst)
        pred = predict_sparsity(source, plan)
        out = apply_plan(source, plan)
        assert pred.sparsity == pytest.approx(out.sparsity(), abs=0)
        assert pred.stages == pytest.approx(tuple(out.stage_sparsity()), abs=0)


def test_tensors_are_streamed_from_the_source_file(tmp_path):
    path = tmp_path / "src.safetensors"
    write_labelled(path, "cifar_resnet_20_8")
    out = stretch(path, "resnet-32")
    assert all(src.path == path and src.array is None for src in out.tensors.values())
    meta = out.metadata
    assert meta["ett.plan"] == "0:0;1:1,2;2:3,4" and meta["ett.transform"] == "stretch"
    assert meta["ett.preset"] == "interpolate" and meta["ett.source_arch"] == "cifar_resnet_20_8"
    assert meta["ett.rewind_step"] == "1000it" and meta["ett.dataset"] == "cifar10"
    from ettcli.stfile import sha256_file

    assert meta["ett.source_sha256"] == sha256_file(path)


def test_output_may_replace_the_input(tmp_path):
    path = tmp_path / "t.safetensors"
    source = write_labelled(path, "cifar_resnet_20_8")
    before = all_arrays(source)
    stretch(path, "resnet-32").save(path)
    assert read_ticket(path).arch.name == "cifar_resnet_32_8"
    squeeze(path, "resnet-20").save(path)
    after = all_arrays(read_ticket(path))
    assert all(before[n].tobytes() == after[n].tobytes() for n in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_in_memory_tickets_and_explicit_mappings():
    source = labelled_ticket("cifar_resnet_20_4")
    out = stretch(source, stages="4,4,4", mapping="0:0;2:1,3;1:2")
    assert out.arch.name == "cifar_resnet_26_4"
    assert out.metadata["ett.plan"] == "0:0;1:2;2:1,3" and "ett.preset" not in out.metadata
    np.testing.assert_array_equal(out.array("blocks.1.conv1.weight"), source.array("blocks.2.conv1.weight"))
    with pytest.raises(EttError, match="use 'ett stretch'"):
        squeeze(source, "resnet-56")
    with pytest.raises(EttError, match="the plan is for cifar_resnet_56"):
        apply_plan(source, make_plan(labelled_ticket("cifar_resnet_56_4").arch, "resnet-20"))


def test_transform_path_never_imports_torch_or_numpy(tmp_path):
    """Transforms copy byte ranges and count masks as bytes: neither torch nor numpy is loaded (start-up time)."""
    path = tmp_path / "r.safetensors"
    write_labelled(path, "cifar_resnet_20_4")
    code = f"""
import sys
import ettcli
t = ettcli.stretch({str(path)!r}, "resnet-32")
t.save({str(tmp_path / "a.safetensors")!r})
ettcli.squeeze({str(tmp_path / "a.safetensors")!r}, "resnet-20", drop="tail")
ettcli.make_plan(ettcli.read_ticket({str(path)!r}), "resnet-44", order="append")
from ettcli.cli import app
for args in (["plan", {str(path)!r}, "--to", "resnet-56", "--json"],
             ["stretch", {str(path)!r}, "--to", "resnet-56", "-o", {str(tmp_path / "b.safetensors")!r}],
             ["squeeze", {str(tmp_path / "b.safetensors")!r}, "--to", "resnet-32"]):
    try:
        app(args)
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
assert "numpy" not in sys.modules, sorted(m for m in sys.modules if m.startswith("numpy"))
assert "pydantic" not in sys.modules  # typer's pydantic coercion is bypassed for plain options (start-up time)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")
    assert (tmp_path / "b_to_cifar_resnet_32_4.safetensors").exists()


def test_lazy_exports():
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ettcli; assert 'ettcli.transform' not in sys.modules; "
            "f = ettcli.stretch, ettcli.squeeze, ettcli.make_plan, ettcli.read_ticket, ettcli.Plan; "
            "assert 'torch' not in sys.modules; assert 'stretch' in dir(ettcli); print(ettcli.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    with pytest.raises(AttributeError):
        ettcli.no_such_thing  # noqa: B018


@pytest.mark.parametrize("in_place", [False, True])
def test_large_sources_are_hashed_while_the_target_is_written(tmp_path, monkeypatch, in_place):
    import ettcli.transform as tr
    from ettcli.stfile import read_header, sha256_file

    monkeypatch.setattr(tr, "OVERLAP_HASH_BYTES", 0)  # take the threaded path for this small ticket
    path = tmp_path / "src.safetensors"
    write_labelled(path, "cifar_resnet_20_4")
    digest = sha256_file(path)
    out = path if in_place else tmp_path / "out.safetensors"
    ticket = read_ticket(path)
    target = apply_plan(ticket, make_plan(ticket.arch, "resnet-32"), hash_source=False)
    assert "ett.source_sha256" not in target.metadata
    tr.save_transformed(target, out, path)
    meta = read_header(out).metadata
    assert meta["ett.source_sha256"] == digest and meta["ett.arch"] == "cifar_resnet_32_4"
    assert b"pending-" not in out.read_bytes()
    assert read_ticket(out).arch.name == "cifar_resnet_32_4"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"src.safetensors", out.name})
