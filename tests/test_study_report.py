"""`ett study report` and `ett study plot` on the shipped mini study's real results (studies/cifar10-mini/):
every IMP level in the report, the study's name as title, cells with fewer runs than seeds marked, what the
drop's sign and the figure's bands mean, the spread of single-level methods, and the LMC figure's range."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from conftest import ROOT

MINI = ROOT / "studies" / "cifar10-mini"


@pytest.fixture
def study(tmp_path) -> Path:
    """A copy of the mini study's folder with its study file beside the results, as `ett study run` leaves it."""
    folder = tmp_path / "mini"
    folder.mkdir()
    for name in ("results.jsonl", "lmc.jsonl"):
        shutil.copy(MINI / name, folder / name)
    (folder / "study.toml").write_text((ROOT / "studies" / "cifar10-mini.toml").read_text())
    return folder


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines() if x.strip()]


def report(cli, folder: Path) -> str:
    r = cli("study", "report", folder)
    assert r.exit_code == 0, r.stderr
    return r.stdout


def test_every_imp_level_of_every_network_is_in_the_report(study, cli):
    text = report(cli, study)
    rows = rows_of(study)
    lines = text.splitlines()
    nets = list(dict.fromkeys(r["target"] for r in rows if r["method"] == "imp"))
    assert nets == ["cifar_resnet_20", "cifar_resnet_14", "cifar_resnet_32"]  # the source's own IMP too
    for net in nets:
        at = lines.index(f"### {net}", lines.index("## IMP level by level"))
        dense = [r["final_test_accuracy"] for r in rows if r["target"] == net and r["method"] == "dense"]
        levels = sorted({r["level"] for r in rows if r["target"] == net and r["method"] == "imp"})
        assert levels == list(range(10))
        for level in levels:
            mine = [r for r in rows if r["target"] == net and r["method"] == "imp" and r["level"] == level]
            accs = [100 * r["final_test_accuracy"] for r in mine]
            cell = f"{statistics.mean(accs):.2f}" + (f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else "")
            sparsity = 100 * statistics.mean(r["sparsity"] for r in mine)
            raw = [r["final_test_accuracy"] for r in mine]
            drop = f"{100 * (statistics.mean(raw) - statistics.mean(dense)):+.2f}" if dense else "-"
            line = next(x for x in lines[at:] if x.startswith(f"| {level} |"))
            assert line == f"| {level} | {sparsity:.2f}% | {cell} ({len(accs)}) | {drop} |"


def test_the_title_is_the_studys_name_and_the_drop_states_its_sign(study, cli):
    toml = study / "study.toml"
    toml.write_text(toml.read_text().replace('name = "cifar10-mini"', 'name = "mini on two cores"'))
    text = report(cli, study)
    assert text.splitlines()[0] == "# Study mini on two cores"
    assert "minus the dense network's: negative is below dense" in text
    assert "after BatchNorm re-estimation, not taken from the trainings" in text  # what the instability is against


def test_a_cell_with_fewer_runs_than_seeds_is_marked(study, cli):
    assert "*" not in report(cli, study)  # every cell has both seeds
    rows = rows_of(study)
    gone = next(r for r in rows if r["method"] == "snip" and r["level"] == 6 and r["target"] == "cifar_resnet_32")
    (study / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r is not gone))
    text = report(cli, study)
    assert "Cells marked * (1 below) have fewer runs than the study's 2 seeds" in text
    lines = text.splitlines()
    at = lines.index("## cifar_resnet_32")
    line = next(x for x in lines[at:] if x.startswith("| snip |"))
    left = next(100 * r["final_test_accuracy"] for r in rows if r["job"] != gone["job"] and r["method"] == "snip"
                and r["level"] == 6 and r["target"] == "cifar_resnet_32")  # fmt: skip
    assert line.split("|")[3].strip() == f"{left:.2f} (1) *"
    assert line.split("|")[2].strip().endswith("(2)")


def test_the_figure_has_the_studys_name_says_what_bands_are_and_shows_single_level_spread(study):
    pytest.importorskip("matplotlib")
    from matplotlib.collections import LineCollection

    from ettcli.study.plot import study_figure

    fig = study_figure(study)
    assert fig.get_suptitle() == "cifar10-mini"
    title = fig.legends[0].get_title().get_text()
    assert "shaded bands: ± one sample standard deviation" in title  # every method has several levels
    assert "dashed: pruning baselines" in title and "dotted: dense" in title

    # without dense runs and baselines the title does not explain lines the figure does not have
    rows = [r for r in rows_of(study) if r["method"] in ("imp", "ett")]
    all_rows = (study / "results.jsonl").read_text()
    (study / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    title = study_figure(study).legends[0].get_title().get_text()
    assert "dotted" not in title and "dashed" not in title and "± one sample standard deviation" in title
    (study / "results.jsonl").write_text(all_rows)

    # one transferred level only: the baselines and ETT are single points, their spread an error bar
    rows = [r for r in rows_of(study) if r["method"] in ("imp", "dense") or r["level"] == 9]
    (study / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = study_figure(study)
    assert "shaded bands and error bars: ± one sample standard deviation" in fig.legends[0].get_title().get_text()
    ax = fig.axes[0]
    spans = sorted(
        round(float(seg[1][1] - seg[0][1]), 6)
        for c in ax.collections
        if isinstance(c, LineCollection)
        for seg in c.get_segments()
    )
    want = []
    for method in ("ett", "random", "snip"):
        accs = [
            100 * r["final_test_accuracy"] for r in rows if r["target"] == "cifar_resnet_14" and r["method"] == method
        ]
        want.append(round(2 * statistics.stdev(accs), 6))
    assert spans == sorted(want)


def test_the_lmc_figure_does_not_zoom_a_flat_path_into_a_barrier(cli, tmp_path):
    pytest.importorskip("matplotlib")
    from ettcli.commands.lmc import error_range

    lo, hi = error_range([35.0, 35.05, 35.1, 35.0])
    assert hi - lo == pytest.approx(10) and lo <= 35.0 and hi >= 35.1
    lo, hi = error_range([2.0, 30.0, 2.5])  # a real barrier keeps its own range
    assert lo <= 2.0 and 30.0 <= hi < 32
    assert error_range([0.5, 0.6])[0] == 0.0 and error_range([99.5, 99.9])[1] == 100.0
    record = {"alphas": [0.0, 0.5, 1.0], "test": {"error": [35.0, 35.1, 35.0], "instability": 0.1},
              "settings": {"bn_reset": True, "bn_data": "augmented"}}  # fmt: skip
    (tmp_path / "lmc.json").write_text(json.dumps(record))
    r = cli("lmc", "plot", tmp_path, "-o", tmp_path / "lmc.svg")
    assert r.exit_code == 0, r.stderr
    assert "the endpoints after BatchNorm re-estimation" in (tmp_path / "lmc.svg").read_text()


def test_the_vit_mini_studys_report_is_what_its_results_give(cli, tmp_path):
    """The shipped ViT study's committed report is regenerated from its results, and its highest-level cells
    are the means of the rows (the README quotes them)."""
    vit = ROOT / "studies" / "cifar10-vit-mini"
    folder = tmp_path / "vit"
    folder.mkdir()
    for name in ("results.jsonl", "study.toml"):
        shutil.copy(vit / name, folder / name)
    text = report(cli, folder)
    assert (folder / "report.md").read_text() == (vit / "report.md").read_text()
    rows = rows_of(folder)
    for target in ("cifar_vit_8_64", "cifar_vit_2_64"):
        for method in ("imp", "ett", "random", "snip"):
            accs = [100 * r["final_test_accuracy"] for r in rows
                    if r["target"] == target and r["method"] == method and r["level"] == 4]  # fmt: skip
            assert len(accs) == 2, (target, method)
            assert f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} (2)" in text
