"""FLOPs: dense per-layer counts from torch's flop counter, sparse counts from masks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_ticket
from torch.utils.flop_counter import FlopCounterMode

from ettcli import flops


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))
    flops.clear_cache()
    yield
    flops.clear_cache()


def test_dense_cifar_resnet_20_forward_is_40_8_million_multiply_adds():
    total = flops.forward_flops("cifar_resnet_20")
    assert abs(total - 81.6e6) / 81.6e6 < 0.01  # torch counts a multiply-add as 2 FLOPs
    assert abs(total / 2 - 40.8e6) / 40.8e6 < 0.01


def test_per_layer_counts_add_up_to_a_real_forward_pass():
    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    per = flops.layer_flops("cifar_resnet_20_8")
    model = build_model(parse_arch("cifar_resnet_20_8"), seed=0)
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, 32, 32))
    assert sum(per.values()) == fc.get_total_flops()
    # a 3x3 conv of 8 -> 8 channels on 32x32 maps: 2 * 8 * 8 * 9 * 32 * 32 FLOPs
    assert per["blocks.0.conv1.weight"] == 2 * 8 * 8 * 9 * 32 * 32
    assert per["fc.weight"] == 2 * 32 * 10


def test_sparse_forward_counts_each_layer_at_its_density_and_is_cached():
    ticket = make_ticket("cifar_resnet_20_8", sparsity=0.8)
    per = flops.layer_flops("cifar_resnet_20_8")
    want = per[""] + sum(f * ticket.mask(n).density for n, f in per.items() if n)
    assert flops.ticket_forward_flops(ticket) == pytest.approx(want)
    assert flops.ticket_forward_flops(ticket) < 0.35 * flops.forward_flops("cifar_resnet_20_8")
    assert flops.training_flops(want, 10) == pytest.approx(3 * want * 10)
    flops.clear_cache()  # a second process reads the counts from the disk cache, without a forward pass
    assert flops.layer_flops("cifar_resnet_20_8") == per


def test_the_shipped_table_is_what_the_counter_counts_now():
    table = flops._shipped()
    assert flops._key("cifar_resnet_20", 10, 32) in table
    # a sample across the families, depths, class counts and image sizes (the script counts them all)
    for key in (
        "cifar_resnet_20/10/32",
        "cifar_resnet_110/100/32",
        "cifar_vgg_16/10/32",
        "imagenet_resnet_26/1000/224",
    ):
        arch, classes, size = key.split("/")
        assert table[key] == flops._count(arch, int(classes), int(size)), key
    assert abs(sum(table["cifar_resnet_20/10/32"].values()) - 81.6e6) / 81.6e6 < 0.01


def test_a_dry_run_of_a_shipped_study_needs_no_torch_on_a_new_machine(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys\n"
        "from ettcli.cli import main\n"
        "sys.argv = ['ett', 'study', 'run', sys.argv[1], '--out', sys.argv[2], '--dry-run']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])\n"
    )
    for name in ("cifar10-mini", "cifar10-resnet", "imagenet-resnet"):
        env = {"ETT_CACHE": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, "-c", code, str(ROOT / "studies" / f"{name}.toml"), str(tmp_path / name)],
                           capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == "[]", (name, r.stdout[-500:])
        assert "TFLOPs" in r.stdout or "PFLOPs" in r.stdout
        assert not (tmp_path / "empty-cache" / "flops-v1.json").exists()  # nothing had to be counted


def test_flops_are_written_with_a_unit_up_to_exa():
    from ettcli.study.report import flops_text

    assert flops_text(81.6e6) == "81.6 MFLOPs"
    assert flops_text(1.06e18) == "1.06 EFLOPs"
    assert flops_text(405e12) == "405 TFLOPs"
