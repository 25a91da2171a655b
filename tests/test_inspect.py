"""`ett inspect` (table and JSON), `ett init`, start-up without torch, and every bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, assert_user_error, make_ticket

from ettcli.ticket import read_ticket

FIXTURE_FACTS = {
    "cifar_resnet_20_l4.safetensors": ("cifar_resnet_20", "cifar_resnet", [3, 3, 3], 1 - 0.8**4),
    "cifar_resnet_20_l10.safetensors": ("cifar_resnet_20", "cifar_resnet", [3, 3, 3], 1 - 0.8**10),
    "cifar_vgg_16_8_l6.safetensors": ("cifar_vgg_16_8", "cifar_vgg", [2, 2, 3, 3, 3], 1 - 0.8**6),
    "imagenet_resnet_18_8_l6.safetensors": ("imagenet_resnet_18_8", "imagenet_resnet", [2, 2, 2, 2], 1 - 0.8**6),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_FACTS))
def test_inspect_json_on_fixtures(cli, name):
    arch, family, stages, sparsity = FIXTURE_FACTS[name]
    r = cli("inspect", FIXTURES / name, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)  # stdout holds exactly one JSON object
    assert (info["arch"], info["family"], info["stages"]) == (arch, family, stages)
    assert abs(info["sparsity"] - sparsity) < 1e-5
    assert info["metadata"]["ett.arch"] == arch
    ticket = read_ticket(FIXTURES / name)
    assert len(info["tensors"]) == len(ticket.arch.tensors)
    by_name = {t["name"]: t for t in info["tensors"]}
    for tname, mask in ticket.masks.items():
        row = by_name[tname]
        assert row["prunable"] and row["masked"]
        assert row["kept"] == mask.kept and abs(row["sparsity"] - mask.sparsity) < 1e-12
        assert row["numel"] == int(np.prod(row["shape"]))
    assert all(not t["prunable"] for t in info["tensors"] if t["name"].endswith(("bias", "running_mean")))
    pruned = sum(t["numel"] - t["kept"] for t in info["tensors"] if t["prunable"])
    assert pruned == info["prunable"] - info["kept_prunable"]
    assert info["kept_params"] == info["total_params"] - pruned


def test_inspect_dense_ticket_reports_zero_sparsity(cli, ticket_file):
    info = json.loads(cli("inspect", ticket_file("cifar_vgg_11_8", 0.0), "--json").stdout)
    assert info["sparsity"] == 0.0 and info["stage_sparsity"] == [0.0] * 5
    assert info["total_params"] == info["kept_params"]


def test_inspect_table_groups_by_stage_and_unit(cli):
    r = cli("inspect", FIXTURES / "cifar_resnet_20_l10.safetensors")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for label in ("stem", "stage 1 block 0", "stage 2 block 0 (downsampling)", "stage 3 block 2", "head"):
        assert label in out, label
    assert "blocks.3.shortcut.0.weight" in out and "downsample" in out
    assert "prunable sparsity 89.26%" in out
    assert "total parameters 272,474" in out


def test_init_writes_a_dense_ticket_that_loads_strictly(cli, tmp_path):
    import torch

    from ettcli.models import build_model

    out = tmp_path / "r.safetensors"
    r = cli("init", "cifar_resnet_s2-3-4_8", "-o", out, "--seed", "5", "--num-classes", "100")
    assert r.exit_code == 0, r.stderr
    t = read_ticket(out)
    assert t.arch.name == "cifar_resnet_s2-3-4_8" and t.arch.num_classes == 100 and t.sparsity() == 0.0
    assert t.metadata["ett.seed"] == "5"
    model = build_model(t.arch, seed=None, init=False)
    model.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in t.arrays()}, strict=True)
    ref = build_model(t.arch, seed=5).state_dict()
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "FIXTURE", "--json"], ["inspect", "FIXTURE"]])
def test_help_and_inspect_do_not_import_torch(argv):
    argv = [str(FIXTURES / "cifar_resnet_20_l4.safetensors") if a == "FIXTURE" else a for a in argv]
    code = (
        "import sys, runpy; sys.argv = ['ett'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('ettcli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not bad, bad[:5]\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "ettcli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("ett ")


# --- bad input: one line on stderr naming the file, exit 2, no traceback -----------------------------------
def _write_raw(path, tensors: dict[str, np.ndarray], dtype_override: dict[str, str] | None = None):
    """A safetensors file written by the reference library (so only ett's validation is under test)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


def _valid_arrays(arch="cifar_resnet_8_4", sparsity=0.5):
    t = make_ticket(arch, sparsity)
    arrays = {n: np.array(a) for n, a in t.arrays()}
    for n, m in t.masks.items():
        arrays[n + "_mask"] = m.array
    return arrays


def test_missing_file(cli, tmp_path):
    assert_user_error(cli("inspect", tmp_path / "nope.safetensors"), "nope.safetensors", "no such file")


def test_truncated_file(cli, tmp_path, ticket_file):
    path = ticket_file()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_user_error(cli("inspect", path), str(path), "truncated")


def test_not_safetensors(cli, tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes about tickets, not a tensor file\n")
    assert_user_error(cli("inspect", path), str(path), "not a safetensors file")


def test_absurd_header_length(cli, tmp_path):
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}" + b"\0" * 64)
    assert_user_error(cli("inspect", path), str(path), "header length field says")


def test_mask_of_the_wrong_shape(cli, tmp_path):
    arrays = _valid_arrays()
    arrays["blocks.1.conv1.weight_mask"] = np.ones((8, 8, 3, 1), dtype=bool)
    path = _write_raw(tmp_path / "shape.safetensors", arrays)
    assert_user_error(cli("inspect", path), str(path), "blocks.1.conv1.weight_mask", "[8, 8, 3, 1]")


def test_non_binary_mask(cli, tmp_path):
    arrays = _valid_arrays()
    m = arrays["blocks.1.conv1.weight_mask"].astype(np.float32)
    m.flat[3] = 0.5
    arrays["blocks.1.conv1.weight_mask"] = m
    path = _write_raw(tmp_path / "soft.safetensors", arrays)
    assert_user_error(cli("inspect", path), str(path), "not binary", "0.5")


def test_mask_without_its_tensor(cli, tmp_path):
    arrays = _valid_arrays()
    arrays["blocks.9.conv1.weight_mask"] = np.ones((8, 8, 3, 3), dtype=bool)
    path = _write_raw(tmp_path / "orphan.safetensors", arrays)
    assert_user_error(cli("inspect", path), str(path), "blocks.9.conv1.weight_mask", "has no tensor")


def test_names_of_no_known_family(cli, tmp_path):
    path = _write_raw(
        tmp_path / "bert.safetensors",
        {
            "encoder.layer.0.attention.weight": np.ones((4, 4), np.float32),
            "pooler.dense.weight": np.ones((4, 4), np.float32),
        },
    )
    assert_user_error(cli("inspect", path), str(path), "match no known family", "expected")


def test_mask_on_a_bias_is_refused(cli, tmp_path):
    arrays = _valid_arrays()
    arrays["fc.bias_mask"] = np.ones(10, dtype=bool)
    path = _write_raw(tmp_path / "bias.safetensors", arrays)
    assert_user_error(cli("inspect", path), str(path), "never pruned")


def test_non_binary_mask_value_is_printed_as_a_plain_number(cli, tmp_path):
    arrays = _valid_arrays()
    m = arrays["blocks.1.conv1.weight_mask"].astype(np.float32)
    m.flat[3] = 0.5
    arrays["blocks.1.conv1.weight_mask"] = m
    r = cli("inspect", _write_raw(tmp_path / "soft.safetensors", arrays))
    assert_user_error(r, "found value 0.5 (1 entries")
    assert "np." not in r.stderr


def test_long_metadata_values_are_cut_in_the_table_and_whole_in_json(cli, ticket_file, tmp_path):
    path = tmp_path / "long.safetensors"
    value = "0123456789" * 100_000  # 1 MB
    read_ticket(ticket_file("cifar_resnet_8_4", 0.5)).save(path, note=value)
    r = cli("inspect", path)
    assert r.exit_code == 0, r.stderr
    out = " ".join(r.stdout.split())  # the table may wrap long lines
    assert "note=0123456789" in out and "... (1,000,000 characters; ett inspect --json shows them in full)" in out
    assert len(r.stdout) < 20_000
    assert json.loads(cli("inspect", path, "--json").stdout)["metadata"]["note"] == value


def test_metadata_is_shown_as_text_not_markup(cli, ticket_file, tmp_path):
    path = tmp_path / "markup.safetensors"
    read_ticket(ticket_file("cifar_resnet_8_4", 0.5)).save(path, note="[/bold] [red]x[/red]")
    r = cli("inspect", path)
    assert r.exit_code == 0, r.stderr
    assert "note=[/bold] [red]x[/red]" in r.stdout


def test_integer_weights_are_read_with_one_warning(cli, tmp_path):
    arrays = _valid_arrays()
    for name in ("conv.weight", "fc.weight"):
        arrays[name] = np.round(arrays[name] * 100).astype(np.int32)
    path = _write_raw(tmp_path / "int.safetensors", arrays)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["arch"] == "cifar_resnet_8_4"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ett: warning: "), r.stderr
    assert "2 conv/linear weight tensors hold integers (e.g. 'conv.weight' is I32)" in lines[0]
    from ettcli.errors import EttWarning

    with pytest.warns(EttWarning, match="hold integers"):
        read_ticket(path)


def test_init_refuses_zero_classes(cli, tmp_path):
    out = tmp_path / "r.safetensors"
    assert_user_error(cli("init", "cifar_resnet_8_4", "--num-classes", "0", "-o", out), "at least 1 output", "not 0")
    assert not out.exists()


def test_init_of_a_network_larger_than_memory_is_one_line(cli, tmp_path):
    out = tmp_path / "big.safetensors"
    r = cli("init", "cifar_resnet_20_100000", "-o", out)
    assert_user_error(r, "cifar_resnet_20_100000", "more than this machine's memory", "smaller width")
    assert list(tmp_path.iterdir()) == []


def test_inspect_labels_only_real_downsampling_units(cli, ticket_file):
    out = cli("inspect", ticket_file("cifar_resnet_14_4", 0.5)).stdout
    assert "stage 1 block 0" in out
    assert "stage 1 block 0 (downsampling)" not in out and "stage 2 block 0 (downsampling)" in out
