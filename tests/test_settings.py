"""Training settings are declared once (ettcli.settings.TrainSettings): every training command's options and a
study's [train] table come from those fields, with the same flags, help text and choices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ettcli.settings import DEVICES, NOT_IDENTITY, PRECISIONS, TrainSettings, flag, setting_fields

TRAINING = (["train"], ["prune", "imp"], ["lmc", "run"])


def _options(help_text: str) -> dict[str, str]:
    """flag -> its help text (wrapped lines joined) from a rich ``--help`` table."""
    out: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        cell = line.strip("│ ").rstrip()
        m = re.match(r"(--[\w-]+)(?:\s+-\w)?\s+(?:<[^>]+>\s+)?(.*)$", cell)
        if m:
            current = m[1]
            out[current] = m[2].strip()
        elif current and line.startswith("│ ") and cell:
            out[current] += " " + cell.strip()
    return {k: re.sub(r"\s*\[default: [^\]]*\]", "", v).strip() for k, v in out.items()}


def _help(argv: list[str]) -> str:
    from ettcli.cli import app

    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, [*argv, "--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    return r.stdout


def test_the_training_commands_show_the_same_training_options_with_the_same_help():
    helps = {" ".join(argv): _options(_help(argv)) for argv in TRAINING}
    every = {flag(f.name): " ".join(f.metadata["help"].split()) for f in setting_fields()}
    for name, options in helps.items():
        shown = {k: v for k, v in options.items() if k in every}
        assert shown, name
        for k, v in shown.items():
            assert v == every[k], (name, k)
    # the ones each command leaves out: lmc has --seeds for its two copies and runs in one process
    assert set(every) - set(helps["train"]) == set()
    assert set(every) - set(helps["prune imp"]) == {"--sync-bn"}
    assert set(every) - set(helps["lmc run"]) == {"--seed", "--sync-bn", "--workers"}
    order = [k for k in helps["train"] if k in every]
    for name in ("prune imp", "lmc run"):
        assert [k for k in helps[name] if k in every] == [k for k in order if k in helps[name]]


def test_a_command_gets_the_settings_its_options_make():
    seen = []
    # the settings object comes from the option values, with the data root as text
    from ettcli.commands.options import training_options

    @training_options(omit=("seed",))
    def command(ticket: str, settings: TrainSettings = None, out: str = "x"):
        seen.append((ticket, settings, out))

    values = {f.name: f.default for f in setting_fields() if f.name != "seed"}
    command(ticket="t", out="o", **{**values, "lr": 0.5, "data_root": Path("/data")})
    assert seen == [("t", TrainSettings(lr=0.5, data_root="/data"), "o")]


def test_the_study_train_table_takes_the_declared_keys_and_choices(tmp_path):
    from ettcli.study.spec import SCHEMA

    keys = [f.name for f in setting_fields() if f.metadata["study"]]
    assert list(SCHEMA["train"]) == keys
    assert {"dataset", "data_root", "seed", "threads", "sync_bn", "download"}.isdisjoint(keys)
    fields = {f.name: f for f in setting_fields()}
    assert fields["device"].metadata["choices"] == DEVICES and fields["precision"].metadata["choices"] == PRECISIONS


@pytest.mark.parametrize(("kw", "words"), [({"device": "tpu"}, "device tpu: choose auto, cpu or cuda"),
                                           ({"precision": "fp8"}, "precision fp8: choose auto, fp32, bf16 or fp16"),
                                           ({"compile_mode": "fast"}, "compile mode fast: choose default")])  # fmt: skip
def test_a_choice_outside_the_declared_ones_is_refused(kw, words):
    from ettcli.errors import EttError

    with pytest.raises(EttError, match=re.escape(words)):
        TrainSettings(**kw).check()


def test_the_identity_rule_leaves_out_what_never_changes_a_result():
    assert NOT_IDENTITY == ("data_root", "download", "workers", "threads")
    a = TrainSettings(data_root="/a", download=True, workers=3, threads=2).identity()
    assert a == TrainSettings().identity()
    assert TrainSettings(seed=1).identity() != TrainSettings().identity()
    # settings added later count only when set, so that runs named before them keep their names
    assert {"subset", "compile_mode", "deterministic"}.isdisjoint(TrainSettings().identity())
    assert TrainSettings(subset=100, deterministic=True).identity()["subset"] == 100
    # a training run counts the dataset, recipe, device and precision it resolved, not the options as given
    run = TrainSettings(lr=0.5, device="auto").identity({"recipe": {"lr": 0.5}, "device": "cpu"})
    assert "lr" not in run and run["device"] == "cpu" and run["recipe"] == {"lr": 0.5}


def test_imp_counts_the_settings_the_rule_counts_so_download_does_not_change_its_folder(tmp_path):
    from ettcli.errors import EttError
    from ettcli.lottery import imp
    from ettcli.runs import RunFolder

    settings = TrainSettings(data_root=str(tmp_path / "no-data"), epochs=1, threads=1)
    with pytest.raises(EttError, match="no-data"):  # the folder's config is written before the data is read
        imp("cifar_resnet_8_4", settings, levels=1, out=tmp_path / "imp")
    identity = RunFolder.reading(tmp_path / "imp").config()["identity"]
    assert identity["settings"] == settings.identity()
    assert identity["settings"] == TrainSettings(download=True, epochs=1, workers=2).identity()


def test_the_settings_and_their_options_load_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, ettcli\nfrom ettcli.commands import options\n"
        "ettcli.TrainSettings(epochs=1).check()\nprint('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
