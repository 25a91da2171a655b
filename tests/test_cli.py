"""What every ``ett`` command gets from the CLI machinery: warnings in one line, closed pipes, help, provenance."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT

from ettcli.stfile import read_header

MY_COMMANDS = ("inspect", "convert", "init", "plan", "stretch", "squeeze")


def warning_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_command_functions_are_addressable_and_registered():
    from ettcli.cli import load_command
    from ettcli.commands import tickets, transform

    for module, names in ((tickets, ("inspect", "convert", "init")), (transform, ("plan", "stretch", "squeeze"))):
        for name in names:
            fn = getattr(module, name)
            chain = [load_command(name).callback]  # and what it wraps (typer's wrapper, handle_errors)
            while hasattr(chain[-1], "__wrapped__"):
                chain.append(chain[-1].__wrapped__)
            assert callable(fn) and fn in chain, name


def test_cli_uses_no_private_typer_module():
    for path in (ROOT / "ettcli").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"typer\._\w", text), path  # typer._click, typer._coercion: private, may change
        assert "__import__(" not in text, path


@pytest.mark.parametrize("command", MY_COMMANDS)
def test_every_command_help_has_an_example_and_no_bool_type(cli, command):
    r = cli(command, "--help")
    assert r.exit_code == 0, r.stderr
    assert f"Example: ett {command} " in r.stdout
    assert "<bool>" not in r.stdout


def test_root_help_shows_no_bool_type(cli):
    r = cli("--help")
    assert r.exit_code == 0 and "--version" in r.stdout and "<bool>" not in r.stdout


def test_init_help_lists_the_names_of_every_registered_family(cli):
    from ettcli.arch import FAMILIES

    out = " ".join(cli("init", "--help").stdout.split())
    for family in FAMILIES.values():
        assert f"{family.name}_N" in out, family.name
    for name in ("110", "26_bottleneck", "152", "19", "cifar_resnet_s3-5-7"):
        assert name in out, name


def test_ett_warning_is_one_line_and_the_command_succeeds(cli, ticket_file, tmp_path):
    src = ticket_file("cifar_resnet_14_4", 0.5)
    out = tmp_path / "same.safetensors"
    r = cli("stretch", src, "--to", "resnet-14", "-o", out)
    assert r.exit_code == 0, r.stderr
    lines = warning_lines(r)
    assert len(lines) == 1 and lines[0].startswith("ett: warning: "), r.stderr
    assert "source's own depth" in lines[0] and out.exists()


def test_stretch_that_drops_a_block_warns(cli, ticket_file, tmp_path):
    src = ticket_file("cifar_resnet_20_4", 0.5)  # 3 blocks a stage
    r = cli("stretch", src, "--to", "resnet-32", "--mapping", "0:0;1:1,2,3,4", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    lines = warning_lines(r)
    assert len(lines) == 1 and lines[0].startswith("ett: warning: the stretch drops stage 1 block 2"), r.stderr


def run_ett(*args, close_stdout: bool = False) -> tuple[int, str]:
    """Run ``python -m ettcli`` as a user would (Python's own warning display, real pipes); (status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ettcli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    if close_stdout:
        proc.stdout.close()  # the reader is gone before ett writes a byte: every write fails with EPIPE
        err = proc.stderr.read()
    else:
        _, err = proc.communicate()
    return proc.wait(), err.decode()


def test_other_python_warnings_do_not_reach_stderr(tmp_path):
    """torch warns (several lines) about a protocol-4 pickle while loading it; stderr keeps only ett's line."""
    import torch

    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    path = tmp_path / "p4.pt"
    torch.save(build_model(parse_arch("cifar_resnet_8_4")).state_dict(), path, pickle_protocol=4)
    status, err = run_ett("inspect", path)
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("ett: error: "), err


@pytest.mark.parametrize("args", [["inspect"], ["inspect", "--json"], ["plan", "--to", "resnet-20"]])
def test_closed_stdout_pipe_is_not_an_error(ticket_file, args):
    """``ett inspect T | head -1``: the reader leaves early; ett exits 0 without a word."""
    src = ticket_file("cifar_resnet_14_4", 0.5)
    status, err = run_ett(args[0], src, *args[1:], close_stdout=True)
    assert (status, err) == (0, "")


def test_ticket_writing_commands_record_the_command_line(cli, ticket_file, tmp_path):
    src = ticket_file("cifar_resnet_14_4", 0.5)
    init = tmp_path / "init.safetensors"
    conv = tmp_path / "with space.safetensors"
    stretched = tmp_path / "s.safetensors"
    assert cli("init", "cifar_resnet_8_4", "-o", init, "--seed", "3").exit_code == 0
    assert cli("convert", src, "-o", conv).exit_code == 0
    assert cli("stretch", src, "--stages", "2,3,2", "-o", stretched).exit_code == 0
    assert read_header(init).metadata["ett.command"] == f"ett init cifar_resnet_8_4 -o {init} --seed 3"
    assert read_header(conv).metadata["ett.command"] == f"ett convert {src} -o '{conv}'"  # shell-quoted
    assert read_header(stretched).metadata["ett.command"] == f"ett stretch {src} --stages 2,3,2 -o {stretched}"


def test_bad_option_values_keep_typer_messages(cli, ticket_file):
    src = ticket_file("cifar_resnet_8_4", 0.5)
    r = cli("init", "cifar_resnet_8_4", "-o", src, "--seed", "x")
    assert r.exit_code == 2 and "'x' is not a valid int" in r.stderr
    r = cli("stretch", src, "--to", "resnet-14", "--order", "sideways")
    assert r.exit_code == 2 and "'sideways' is not one of" in r.stderr and "'append'" in r.stderr
    r = cli("stretch", src, "--to")
    assert r.exit_code == 2 and "--to" in r.stderr


# --- a command's module is loaded only when that command runs ------------------------------------------------
_LISTING = """
import importlib, json, pkgutil, sys
import typer
from typer.testing import CliRunner
from ettcli import commands
from ettcli.cli import COMMANDS, app, load_command
from ettcli.commands.common import EttTyper

lazy = CliRunner().invoke(app, ["--help"], terminal_width=100)
loaded = sorted(m for m in sys.modules if m.startswith(("ettcli.", "numpy", "torch")))
for name in COMMANDS:
    load_command(name)
eager = CliRunner().invoke(app, ["--help"], terminal_width=100)  # the same root, every command loaded now
# every command that a module of ettcli.commands registers on the root app (lottery's imp is under prune)
root = EttTyper()
for info in pkgutil.iter_modules(commands.__path__):
    module = importlib.import_module(f"ettcli.commands.{info.name}")
    if hasattr(module, "register") and info.name != "lottery":
        module.register(root)
registered = list(typer.main.get_group(root).commands)
print(json.dumps({"lazy": lazy.stdout, "eager": eager.stdout, "loaded": loaded, "registered": registered,
                  "listed": list(COMMANDS), "prune": list(load_command("prune").commands)}))
"""


def test_root_help_lists_every_command_with_its_own_help_and_loads_no_command_module():
    import json

    r = subprocess.run([sys.executable, "-c", _LISTING], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["lazy"] == out["eager"]  # each line is the command's own help
    assert sorted(out["listed"]) == sorted(out["registered"])  # and none is missing
    assert "imp" in out["prune"] and "snip" in out["prune"]
    assert all(f" {name} " in out["lazy"] for name in out["listed"])
    assert out["loaded"] == ["ettcli.cli", "ettcli.commands", "ettcli.commands.common", "ettcli.errors"]


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["stretch", "FIXTURE", "--to", "resnet-32", "-o", "OUT"], ["common", "transform"]),
        (["inspect", "FIXTURE", "--json"], ["common", "tickets"]),
        (["prune", "--help"], ["common", "lottery", "options", "prune"]),
    ],
)
def test_a_command_loads_only_its_own_module(argv, modules, tmp_path):
    argv = [str(FIXTURES / "cifar_resnet_20_l4.safetensors") if a == "FIXTURE" else a for a in argv]
    argv = [str(tmp_path / "out.safetensors") if a == "OUT" else a for a in argv]
    code = (
        "import sys\nfrom ettcli.cli import main\nsys.argv = ['ett'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print(sorted(m.split('.')[-1] for m in sys.modules if m.startswith('ettcli.commands.')))\n"
        "print('ettcli.pruning' in sys.modules, 'torch' in sys.modules, 'click' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded, heavy = r.stdout.splitlines()[-2:]
    assert loaded == repr(modules)
    assert heavy == ("True False False" if argv[0] == "prune" else "False False False")  # typer has its own click


def test_a_stopped_training_is_reported_by_the_cli_layer_for_every_command(capsys):
    import signal
    from pathlib import Path

    import typer

    from ettcli.commands.common import handle_errors
    from ettcli.errors import Interrupted
    from ettcli.train import Interrupted as FromTrain

    assert FromTrain is Interrupted

    def stopped(signum):
        raise Interrupted("1ep2it", Path("runs/r8"), signum)

    for signum, name in ((signal.SIGTERM, "SIGTERM"), (None, "a stop request")):
        with pytest.raises(typer.Exit) as info:
            handle_errors(stopped)(signum)
        assert info.value.exit_code == 128 + (signum or signal.SIGINT)
        assert capsys.readouterr().err == (
            f"ett: interrupted by {name} at step 1ep2it; checkpoint saved in runs/r8; rerun the same command to resume\n"
        )
