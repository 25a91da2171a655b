"""Shared test helpers: real tickets in tmp folders and a CLI runner that keeps stderr apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# the CIFAR-10 copy: the shared tarball, or $ETT_TEST_CIFAR (that tarball, or its extracted train/ and test/ folders)
SHARED_DATA = Path(os.environ.get("ETT_TEST_CIFAR") or ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")


def make_ticket(arch: str, sparsity: float = 0.0, seed: int = 0, num_classes: int = 10):
    """A real ticket: open_lth init of ``arch`` plus a global magnitude mask (needs torch)."""
    from ettcli.arch import parse_arch
    from ettcli.models import init_ticket
    from ettcli.pruning import magnitude_masks

    ticket = init_ticket(parse_arch(arch, num_classes=num_classes), seed=seed)
    if sparsity:
        ticket = ticket.with_masks(magnitude_masks(ticket, sparsity))
    return ticket


@pytest.fixture
def ticket_file(tmp_path):
    """Factory: write a ticket of ``arch`` at ``sparsity`` into tmp_path and return its path."""

    def make(arch: str = "cifar_resnet_8_4", sparsity: float = 0.5, seed: int = 0, name: str | None = None):
        path = tmp_path / (name or f"{arch}_{int(sparsity * 100)}.safetensors")
        make_ticket(arch, sparsity, seed).save(path)
        return path

    return make


@pytest.fixture
def cli():
    """Invoke the ett CLI in-process; returns the typer Result (stdout and stderr kept apart)."""
    from ettcli.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2, exactly one line on stderr containing every fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ett: error: "), lines[0]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
