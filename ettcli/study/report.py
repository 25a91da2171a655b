"""``report.md`` from ``results.jsonl``: the paper's tables, computed from the rows alone.

Per target network (a network with any row besides its own IMP levels):

* accuracy (final test accuracy, %, mean +- sample standard deviation over the rows, with their count) per
  method and IMP level, as in Table 1;
* the drop against the dense network's mean accuracy, in percentage points, as in Table 3;
* with an ``[lmc]`` section, the instability of the chosen tickets (``lmc.jsonl``), method by level;

IMP level by level for every network that ran it (the sources' own included); and one cost table, as in Table 2: the training FLOPs of IMP on each source up to the highest transferred
level, of training one transferred ticket on each target at that level, and of IMP on each target, each also
as a multiple of one dense training of the largest target.

Methods are labelled ``Dense``, ``IMP``, ``ETT <- n`` (the source's depth; with the variant where a target
has several) and the baselines by their method name (all the references they were matched to together).
The study's name and seeds come from the copy of its file in the folder (``study.toml``); a cell with fewer
runs than the study has seeds is marked. Torch-free.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

from ettcli.errors import EttError

REPORT = "report.md"
LMC = "lmc.jsonl"
STUDY_COPY = "study.toml"
SHORT = "*"  # marks a cell with fewer runs than the study's seeds
METRIC = "final_test_accuracy"
ORDER = {"dense": 0, "imp": 1, "ett": 2}


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise EttError(f"{path}: line {i} is not JSON; rerun 'ett study run' to rewrite the file") from None
    return rows


def read_results(folder: str | Path) -> list[dict]:
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        raise EttError(f"{path}: no results yet; run 'ett study run' on the study first")
    rows = _jsonl(path)
    if not rows:
        raise EttError(f"{path}: no rows yet; run 'ett study run' until some trainings finish")
    return rows


def study_info(folder: str | Path) -> dict:
    """``name`` and ``seeds`` of the study in ``folder``, from the copy of its file that ``ett study run`` keeps
    there; the folder's name and no seeds when there is none (or it cannot be read)."""
    import tomllib

    folder = Path(folder)
    info: dict = {"name": folder.resolve().name, "seeds": None}
    try:
        data = tomllib.loads((folder / STUDY_COPY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return info
    if isinstance(data.get("name"), str) and data["name"].strip():
        info["name"] = data["name"].strip()
    if isinstance(data.get("seeds"), list) and data["seeds"]:
        info["seeds"] = len(data["seeds"])
    return info


def short(arch: str) -> str:
    """``cifar_resnet_14_4`` -> ``14``: the depth, for labels; anything else unchanged."""
    from ettcli.arch import FAMILIES

    m = re.match(rf"^(?:{'|'.join(map(re.escape, FAMILIES))})_(\d+)(?:_\w+)?$", arch)
    return m[1] if m else arch


def label(row: dict, variants: set[str]) -> str:
    """The legend label of a row; ``variants`` are the ETT variants present for its target."""
    m = row["method"]
    if m == "dense":
        return "Dense"
    if m == "imp":
        return "IMP"
    if m == "ett":
        extra = f" ({row.get('variant')})" if len(variants) > 1 else ""
        return f"ETT <- {short(row['source'])}{extra}"
    return m


def kind_of(row: dict) -> str:
    return row["method"] if row["method"] in ORDER else "baseline"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(rows: list[dict]) -> dict:
    """Per target: ``levels`` (sorted), ``dense`` (accuracies), and ``cells[label][level]`` -> the rows' values
    (accuracy, sparsity); ``order``: labels in display order; ``kinds``: label -> dense/imp/ett/baseline."""
    targets = [
        t
        for t in dict.fromkeys(r["target"] for r in rows)
        if any(r["target"] == t and r["method"] != "imp" for r in rows)
    ]
    out = {}
    for t in targets:
        mine = [r for r in rows if r["target"] == t]
        variants = {r.get("variant") for r in mine if r["method"] == "ett"}
        cells: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        kinds: dict[str, str] = {}
        for r in mine:
            if r["method"] == "dense":
                continue
            name = label(r, variants)
            kinds[name] = kind_of(r)
            cells[name][r["level"]].append(r)
        first = {n: i for i, n in enumerate(kinds)}  # baselines keep the study's order
        order = sorted(
            kinds, key=lambda n: (ORDER.get(kinds[n], 3), _depth_key(n) if kinds[n] == "ett" else (first[n], ""))
        )
        levels = sorted(
            {lv for n in cells if kinds[n] != "imp" for lv in cells[n]} or {lv for n in cells for lv in cells[n]}
        )
        dense = [r[METRIC] for r in mine if r["method"] == "dense"]
        out[t] = {
            "levels": [lv for lv in levels if lv > 0],
            "dense": dense,
            "cells": cells,
            "order": order,
            "kinds": kinds,
        }
    return out


def _depth_key(name: str):
    m = re.search(r"<- (\d+)", name)
    return (int(m[1]) if m else 0, name)


def cell_text(values: list[float], expected: int | None = None) -> str:
    """Mean ± sample standard deviation (runs), in %; marked when it has fewer runs than ``expected``."""
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    text = f"{mean:.2f} ± {std:.2f} ({len(values)})" if std is not None else f"{mean:.2f} ({len(values)})"
    return text + (f" {SHORT}" if expected is not None and len(values) < expected else "")


def drop_text(values: list[float], dense: list[float]) -> str:
    if not values or not dense:
        return "-"
    d = 100 * (sum(values) / len(values) - sum(dense) / len(dense))
    return f"{d:+.2f}"


def flops_text(x: float) -> str:
    for unit, f in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= f:
            return f"{x / f:.3g} {unit}FLOPs"
    return f"{x:.3g} FLOPs"


def _sparsity(rows_by_level: dict[int, list[dict]], level: int) -> str:
    vals = [r["sparsity"] for r in rows_by_level.get(level, [])]
    return f"{100 * sum(vals) / len(vals):.2f}%" if vals else "-"


def read_lmc(folder: str | Path) -> list[dict]:
    """The rows of ``lmc.jsonl`` (none when the study has no ``[lmc]`` section or no measurement finished)."""
    path = Path(folder) / LMC
    return _jsonl(path) if path.is_file() else []


def pp_text(values: list[float]) -> str:
    """Percentage points, mean +- sample standard deviation (count)."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f} ({len(values)})" if std is not None else f"{mean:.2f} ({len(values)})"


def lmc_lines(lmc: list[dict], target: str, d: dict, head: list[str]) -> list[str]:
    """Instability per method and level for one target (Frankle et al.; the paper's Fig. 8 measure)."""
    mine = [r for r in lmc if r["target"] == target]
    if not mine:
        return []
    variants = {r.get("variant") for r in mine if r["method"] == "ett"}
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in mine:
        cells[label(r, variants)][r["level"]].append(r["instability"])
    names = [n for n in d["order"] if n in cells] + [n for n in cells if n not in d["order"]]
    reset = {r.get("bn_reset", True) for r in mine}
    how = (
        "BatchNorm re-estimated at every point"
        if reset == {True}
        else ("BatchNorm statistics interpolated, not re-estimated" if reset == {False} else "mixed BatchNorm settings")
    )
    ends = (
        ": the ends are measured as every point is, after BatchNorm re-estimation, not taken from the trainings"
        if reset == {True}
        else ""
    )
    seeds = sorted({tuple(r["seeds"]) for r in mine})
    lines = ["### Instability (linear mode connectivity), percentage points", "",
             f"Largest test error on the path between the trainings with seeds {' and '.join(map(str, seeds[0]))} "
             f"minus the mean of the two ends' errors ({how}){ends}; 0 is stable.", ""]  # fmt: skip
    lines += ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(pp_text(cells[n].get(lv, [])) for lv in d["levels"]) + " |")
    return lines + [""]


def render(rows: list[dict], title: str = "study", lmc: list[dict] | None = None, seeds: int | None = None) -> str:
    """The whole report as Markdown; ``lmc``: the rows of ``lmc.jsonl``, if any, add an instability table;
    ``seeds``: the study's number of seeds (each cell of a target's tables and its dense accuracy expect that
    many runs; fewer are marked)."""
    data = summarize(rows)
    lines = [f"# {title}", "", f"{len(rows)} trained tickets from `results.jsonl`. Cells: final test accuracy, %, "
             "mean ± sample standard deviation over runs (number of runs).", ""]  # fmt: skip
    counts = [len(d["dense"]) for d in data.values()]
    counts += [len(d["cells"][n].get(lv, [])) for d in data.values() for n in d["order"] for lv in d["levels"]]
    short_cells = sum(1 for c in counts if seeds is not None and 0 < c < seeds)
    if short_cells:
        lines += [f"Cells marked {SHORT} ({short_cells} below) have fewer runs than the study's {seeds} seeds: trainings "
                  "not finished yet or results missing; rerun 'ett study run' to complete them.", ""]  # fmt: skip
    for t, d in data.items():
        levels = d["levels"]
        all_rows = [r for n in d["order"] for lv in levels for r in d["cells"][n].get(lv, [])]
        sp = {lv: [r["sparsity"] for r in all_rows if r["level"] == lv] for lv in levels}
        head = [f"level {lv} ({100 * sum(sp[lv]) / len(sp[lv]):.2f}%)" if sp[lv] else f"level {lv}" for lv in levels]
        lines += [f"## {t}", "", f"Dense: {cell_text(d['dense'], seeds)}", "", "### Accuracy (Table 1 style)", ""]
        lines += ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(levels)]
        for n in d["order"]:
            lines.append(
                f"| {n} | "
                + " | ".join(cell_text([r[METRIC] for r in d["cells"][n].get(lv, [])], seeds) for lv in levels)
                + " |"
            )
        lines += ["", "Sparsity reached (mean over runs):", ""]
        lines += ["| method | " + " | ".join(f"level {lv}" for lv in levels) + " |", "|---|" + "---|" * len(levels)]
        for n in d["order"]:
            lines.append(f"| {n} | " + " | ".join(_sparsity(d["cells"][n], lv) for lv in levels) + " |")
        lines += ["", "### Accuracy drop against dense, percentage points (Table 3 style)", "",
                  "The method's mean accuracy minus the dense network's: negative is below dense, positive above.", ""]  # fmt: skip
        lines += ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(levels)]
        for n in d["order"]:
            lines.append(
                f"| {n} | " + " | ".join(drop_text([r[METRIC] for r in d["cells"][n].get(lv, [])], d["dense"]) for lv in levels) + " |"
            )  # fmt: skip
        lines.append("")
        lines += lmc_lines(lmc or [], t, d, head)
    lines += imp_lines(rows)
    lines += cost_lines(rows, data)
    return "\n".join(lines) + "\n"


def imp_lines(rows: list[dict]) -> list[str]:
    """IMP level by level on every network that ran it: the levels between the transferred ones and the
    sources' own runs, which the per-target tables leave out."""
    nets = list(dict.fromkeys(r["target"] for r in rows if r["method"] == "imp"))
    if not nets:
        return []
    lines = ["## IMP level by level", "",
             "Every IMP level of every network that ran IMP. Level 0 is the dense network IMP starts from (its own "
             "training, not the separate dense runs); each level's ticket trains once in IMP, and again with the "
             "study's other seeds at the transferred levels. Drop: against the network's dense runs, negative is "
             "below dense.", ""]  # fmt: skip
    for net in nets:
        by_level: dict[int, list[dict]] = defaultdict(list)
        for r in rows:
            if r["target"] == net and r["method"] == "imp":
                by_level[r["level"]].append(r)
        dense = [r[METRIC] for r in rows if r["target"] == net and r["method"] == "dense"]
        lines += [f"### {net}", "", "| level | sparsity | accuracy | drop against dense |", "|---|---|---|---|"]
        for lv in sorted(by_level):
            accs = [r[METRIC] for r in by_level[lv]]
            lines.append(f"| {lv} | {_sparsity(by_level, lv)} | {cell_text(accs)} | {drop_text(accs, dense)} |")
        lines.append("")
    return lines


def cost_lines(rows: list[dict], data: dict) -> list[str]:
    """Table 2 style: IMP on each source against training transferred tickets and IMP on every target."""
    ett = [r for r in rows if r["method"] == "ett"]
    if not ett:
        return []
    top = max(r["level"] for r in ett)
    imp_seed = _imp_rows(rows)
    dense = defaultdict(list)
    for r in rows:
        if r["method"] == "dense" or (r["method"] == "imp" and r["level"] == 0):
            dense[r["target"]].append(r["train_flops"])
    ref_t = max(dense, key=lambda t: sum(dense[t]) / len(dense[t])) if dense else None
    ref = sum(dense[ref_t]) / len(dense[ref_t]) if ref_t else None

    def norm(x: float) -> str:
        return f"{x / ref:.3f}x" if ref else "-"

    lines = [f"## Cost (Table 2 style): training FLOPs up to level {top}", ""]
    if ref_t:
        lines += [f"Multiples of one dense training of {ref_t} ({flops_text(ref)}). FLOPs count three sparse forward "
                  "passes per training image.", ""]  # fmt: skip
    lines += ["| what | FLOPs | multiple |", "|---|---|---|"]
    sources = list(dict.fromkeys(r["source"] for r in ett))
    total_ett = 0.0
    for s in sources:
        x = sum(r["train_flops"] for r in imp_seed.get(s, []) if r["level"] <= top)
        total_ett += x
        lines.append(f"| IMP on {s}, levels 0-{top} | {flops_text(x)} | {norm(x)} |")
    per_target_imp = 0.0
    missing = []
    for t in data:
        xs = [r["train_flops"] for r in ett if r["target"] == t and r["level"] == top]
        if xs:
            x = sum(xs) / len(xs)
            total_ett += x
            lines.append(f"| train one ETT ticket on {t}, level {top} | {flops_text(x)} | {norm(x)} |")
        imp_t = [r["train_flops"] for r in imp_seed.get(t, []) if r["level"] <= top]
        if imp_t and max(r["level"] for r in imp_seed[t]) >= top:
            per_target_imp += sum(imp_t)
            lines.append(f"| IMP on {t}, levels 0-{top} | {flops_text(sum(imp_t))} | {norm(sum(imp_t))} |")
        else:
            missing.append(t)
    lines.append("")
    if not missing:
        lines.append(
            f"One IMP per source plus one transferred ticket per target: {flops_text(total_ett)} ({norm(total_ett)}); "
            f"IMP on every target: {flops_text(per_target_imp)} ({norm(per_target_imp)})."
        )
        lines.append("")
    return lines


def _imp_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """IMP's own level trainings per network (the rows of its IMP jobs: one per level)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] == "imp" and r.get("job", "").startswith("imp-"):
            out[r["target"]].append(r)
    return out


def write_report(folder: str | Path, title: str | None = None) -> tuple[str, Path]:
    """Render ``folder``'s results and write ``report.md`` beside them; returns the text and the path."""
    from ettcli.stfile import atomic_path

    folder = Path(folder)
    rows = read_results(folder)
    info = study_info(folder)
    text = render(rows, title or f"Study {info['name']}", read_lmc(folder), info["seeds"])
    path = folder / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text, path
