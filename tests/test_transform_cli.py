"""``ett plan``, ``ett stretch`` and ``ett squeeze`` through the real CLI (typer's CliRunner)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_user_error
from transform_util import all_arrays, write_labelled

from ettcli.stfile import read_header, sha256_file
from ettcli.ticket import read_ticket


@pytest.fixture
def r20(tmp_path):
    path = tmp_path / "r20.safetensors"
    write_labelled(path, "cifar_resnet_20_4", density=0.2)
    return path


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_plan_text(cli, r20):
    res = cli("plan", r20, "--to", "resnet-32")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "plan cifar_resnet_20_4 -> cifar_resnet_32_4 (stretch, preset interpolate)" in out
    assert "stage 3: 3 -> 5 blocks" in out
    assert "block 1   -> 1, 2" in out and "replicated x2" in out
    assert "mapping: 0:0;1:1,2;2:3,4" in out
    assert "global" in out and "stage 1" in out and "%" in out
    res = cli("plan", r20, "--to", "resnet-8")
    assert "-> dropped" not in res.stdout and "dropped: 1, 2" in res.stdout
    assert "mapping: 0:0" in res.stdout and "preset interleave" in res.stdout


def test_plan_json(cli, r20):
    res = cli("plan", r20, "--stages", "5,5,5", "--order", "append", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)  # one JSON object and nothing else
    assert info["mapping"] == "0:0;1:1,3;2:2,4" and info["verb"] == "stretch" and info["preset"] == "append"
    assert info["source"] == "cifar_resnet_20_4" and info["target"] == "cifar_resnet_32_4"
    st = info["stages"][0]
    assert st["fill"] == [0, 1, 2, 1, 2] and st["targets"] == {"0": [0], "1": [1, 3], "2": [2, 4]}
    assert st["replicated"] == [1, 2] and st["dropped"] == []
    ticket = read_ticket(r20)
    assert info["source_sparsity"] == pytest.approx(ticket.sparsity())
    assert 0 < info["target_sparsity"] < 1
    res = cli("plan", r20, "--to", "resnet-14", "--drop", "head", "--json")
    info = json.loads(res.stdout)
    assert info["mapping"] == "0:0;2:1" and info["stages"][2]["dropped"] == [1]


def test_stretch_writes_the_target_and_reports_sparsity(cli, r20, tmp_path):
    res = cli("stretch", r20, "--to", "resnet-56")
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "r20_to_cifar_resnet_56_4.safetensors"
    assert out.exists() and files(tmp_path) == ["r20.safetensors", out.name]
    assert f"wrote {out}" in res.stdout and "plan: 0:0;1:1,2,3,4;2:5,6,7,8" in res.stdout
    lines = res.stdout.splitlines()
    assert lines[2].split() == ["sparsity", "cifar_resnet_20_4", "cifar_resnet_56_4"]
    assert [line.split()[0] for line in lines[3:]] == ["stage", "stage", "stage", "global", "kept"]
    ticket = read_ticket(out)
    source = read_ticket(r20)
    assert f"{100 * source.sparsity():.2f}%" in lines[6] and f"{100 * ticket.sparsity():.2f}%" in lines[6]
    meta = read_header(out).metadata
    assert meta["ett.format"] == "1" and meta["ett.arch"] == "cifar_resnet_56_4" and meta["ett.version"]
    assert meta["ett.plan"] == "0:0;1:1,2,3,4;2:5,6,7,8" and meta["ett.source_sha256"] == sha256_file(r20)
    assert meta["ett.source"] == str(r20) and meta["ett.source_arch"] == "cifar_resnet_20_4"
    assert meta["ett.command"] == f"ett stretch {r20} --to resnet-56" and meta["ett.preset"] == "interpolate"
    assert meta["ett.rewind_step"] == "1000it" and meta["ett.dataset"] == "cifar10"
    assert list(read_header(out).tensors)[:3] == ["conv.weight", "conv.weight_mask", "bn.weight"]
    assert [n for n in read_header(out).tensors if not n.endswith("_mask")] == list(ticket.arch.tensors)


@pytest.mark.parametrize("order,drop", [("interpolate", "interleave"), ("append", "tail")])
def test_cli_round_trip_in_place(cli, r20, tmp_path, order, drop):
    before = all_arrays(read_ticket(r20))
    work = tmp_path / "work.safetensors"
    work.write_bytes(r20.read_bytes())
    res = cli("stretch", work, "--to", "cifar_resnet_44", "--order", order, "-o", work)
    assert res.exit_code == 0, res.stderr
    assert read_ticket(work).arch.name == "cifar_resnet_44_4"
    res = cli("squeeze", work, "--stages", "3,3,3", "--drop", drop, "-o", work)
    assert res.exit_code == 0, res.stderr
    after = all_arrays(read_ticket(work))
    assert list(after) == list(before)
    assert all(after[n].tobytes() == before[n].tobytes() for n in before)
    assert files(tmp_path) == ["r20.safetensors", "work.safetensors"]


def test_stretch_random_copies(cli, r20, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli("stretch", r20, "--to", "resnet-32", "-o", a).exit_code == 0
    res = cli("stretch", r20, "--to", "resnet-32", "--random-copies", "3", "-o", b)
    assert res.exit_code == 0 and "random copies (seed 3)" in res.stdout
    ta, tb = read_ticket(a), read_ticket(b)
    assert read_header(b).metadata["ett.random_copies"] == "3"
    for name in ta.arch.tensors:
        np.testing.assert_array_equal(ta.array(name), tb.array(name))
    assert ta.masks["blocks.1.conv1.weight"] == tb.masks["blocks.1.conv1.weight"]  # first copy
    second_a, second_b = ta.masks["blocks.2.conv1.weight"], tb.masks["blocks.2.conv1.weight"]
    assert second_a.kept == second_b.kept and second_a != second_b
    assert ta.counts() == tb.counts()


def test_squeeze_vgg_and_imagenet(cli, tmp_path):
    vgg = tmp_path / "v.safetensors"
    write_labelled(vgg, "cifar_vgg_19_4")
    res = cli("squeeze", vgg, "--to", "vgg-16", "--drop", "tail", "-o", tmp_path / "v16.safetensors")
    assert res.exit_code == 0, res.stderr
    assert "plan: 0:0;1:1|0:0;1:1|0:0;1:1;2:2|0:0;1:1;2:2|0:0;1:1;2:2" in res.stdout
    assert read_ticket(tmp_path / "v16.safetensors").arch.name == "cifar_vgg_16_4"
    r26 = tmp_path / "r26.safetensors"
    write_labelled(r26, "imagenet_resnet_26_4")
    res = cli(
        "stretch", r26, "--to", "resnet-34", "--mapping", "0:0;1:1,2|0:0;1:1,2;2:3|0:0;1:1,2;2:3,4;3:5|0:0;1:1;2:2"
    )
    assert res.exit_code == 0, res.stderr
    assert "explicit mapping" in res.stdout
    assert read_ticket(tmp_path / "r26_to_imagenet_resnet_34_4.safetensors").arch.name == "imagenet_resnet_34_4"


BAD = [
    # (verb, extra args, fragments of the one-line error)
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0;1:1;2:3,4"], ["stage 1", "position 2", "filled by no block"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0;1:1,2;2:2,3,4"], ["stage 1", "'2:2,3,4'", "filled twice"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0,1;1:2;2:3,4"], ["'0:0,1'", "position 0 and only there"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "1:1,2;2:3,4"], ["stage 1", "block 0 is not mapped"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0;1:1,2;2:3,7"], ["'2:3,7'", "out of range"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0;1:1,2;5:3,4"], ["'5:3,4'", "block 5 is out of range"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0;1:1,2;2:3,4|0:0;1:1,2;2:3,4"], ["2 stage mappings"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "0:0;1:1,2;2:3+4"], ["'2:3+4'", "malformed"]),
    ("stretch", ["--to", "cifar_resnet_32_8"], ["keeps the width"]),
    ("stretch", ["--to", "resnet-8"], ["use 'ett squeeze'"]),
    ("squeeze", ["--to", "resnet-56"], ["use 'ett stretch'"]),
    ("stretch", ["--to", "vgg-19"], ["names a vgg"]),
    ("stretch", ["--to", "cifar_vgg_19"], ["keeps the family"]),
    ("stretch", ["--to", "imagenet_resnet_18"], ["into imagenet_resnet_18 (family imagenet_resnet)"]),
    ("stretch", ["--to", "resnet-32", "--random-copies", "-5"], ["random-copies seed is -5", "0 or more"]),
    ("squeeze", ["--to", "resnet-14", "--random-copies", "-1"], ["random-copies seed is -1"]),
    ("stretch", ["--to", "resnet-32", "--mapping", "1:0;0:1,2,3,4"], ["block 0 (the stage's first block) must map"]),
    ("stretch", ["--stages", "5,5"], ["keeps the number of stages"]),
    ("stretch", ["--to", "resnet-32", "--order", "append", "--mapping", "0:0;1:1,2;2:3,4"], ["not both"]),
    ("stretch", [], ["name the target"]),
    ("stretch", ["--to", "resnet-33"], ["6n+2"]),
    ("squeeze", ["--to", "resnet-14", "-o", "nowhere/x.safetensors"], ["does not exist"]),
]


@pytest.mark.parametrize("verb,args,fragments", BAD, ids=[" ".join(b[1]) or "no target" for b in BAD])
def test_bad_plans_exit_2_with_one_line_and_no_file(cli, r20, tmp_path, verb, args, fragments):
    before = files(tmp_path)
    res = cli(verb, r20, *args, "-o", tmp_path / "out.safetensors") if "-o" not in args else cli(verb, r20, *args)
    assert_user_error(res, *fragments)
    assert files(tmp_path) == before  # no output, no temporary file


def test_bad_plan_on_plan_command_and_missing_source(cli, r20, tmp_path):
    assert_user_error(cli("plan", r20, "--to", "resnet-32", "--mapping", "0:0;1:1,1;2:3,4"), "filled twice")
    assert_user_error(cli("plan", r20, "--to", "resnet-56", "--drop", "tail"), "use 'ett stretch'")
    assert_user_error(cli("plan", r20, "--to", "resnet-56", "--order", "append", "--drop", "tail"), "not both")
    assert_user_error(cli("stretch", tmp_path / "missing.safetensors", "--to", "resnet-32"), "no such file")
    res = cli("stretch", r20, "--to", "resnet-32", "--order", "sideways")
    assert res.exit_code == 2 and "'sideways' is not one of 'interpolate'," in res.stderr
    res = cli("stretch", r20, "--to", "resnet-32", "--random-copies", "x")
    assert res.exit_code == 2 and "'x' is not a valid int" in res.stderr
    assert files(tmp_path) == ["r20.safetensors"]


def test_help_lists_the_presets(cli):
    res = cli("stretch", "--help")
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for name in ("interpolate", "append", "--random-copies", "--mapping"):
        assert name in text
    text = " ".join(cli("squeeze", "--help").stdout.split())
    assert all(name in text for name in ("interleave", "tail", "head", "known to hurt"))


def test_wording_of_family_specific_errors(cli, tmp_path):
    vgg = tmp_path / "v.safetensors"
    write_labelled(vgg, "cifar_vgg_11_4")
    r = cli("stretch", vgg, "--to", "vgg-12")
    assert_user_error(r, "cifar_vgg_s1-1-2-2-2", "--stages 1,1,2,2,2")  # 5 stages, as a VGG has
    r26 = tmp_path / "r26.safetensors"
    write_labelled(r26, "imagenet_resnet_26_4")
    r = cli("plan", r26, "--to", "resnet-34", "--mapping", "0:0;1:1,2|1:0;0:1,2;2:3|0:0;1:1,2;2:3,4;3:5|0:0;1:1;2:2")
    assert_user_error(r, "stage 2", "block 0 (the stage's first, downsampling block)")
    r = cli("stretch", r26, "--to", "vgg-19")
    assert_user_error(r, "names a vgg, but the source is imagenet_resnet_26_4 (family imagenet_resnet)")
