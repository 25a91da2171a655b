"""The paper's figures from ``results.jsonl``: accuracy against the percentage of weights remaining.

One panel per target; x is the percentage of prunable weights remaining on a log scale, decreasing to the
right; y is the final test accuracy. Each method is a mean line over its runs with a +- one sample standard
deviation band (an error bar where a method has a single level, so its spread shows too); the dense accuracy
is a horizontal line; IMP is solid black, ``ETT <- n`` solid in colour, baselines dashed; one legend for all
panels, the study's name as the title and a line that says what lines and bands are. matplotlib's object API
on its Agg canvas (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path

from ettcli.errors import EttError
from ettcli.study.report import METRIC, mean_std, read_results, study_info, summarize

FORMATS = (".png", ".svg", ".pdf")


def plot_study(folder: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``folder``'s results into ``out`` (default ``folder/figure.png``); returns the path."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder / "figure.png"
    if out.suffix.lower() not in FORMATS:
        raise EttError(f"{out}: choose a .png, .svg or .pdf file name")
    if not out.parent.exists():
        raise EttError(f"{out}: folder {out.parent} does not exist; create it first")
    fig = study_figure(folder)
    from ettcli.stfile import atomic_path

    with atomic_path(out) as tmp:  # no partial figure on a failed write or a signal
        fig.savefig(tmp, format=out.suffix.lower().lstrip("."), dpi=110)
    return out


def study_figure(folder: str | Path):
    """The figure of ``folder``'s results, a matplotlib ``Figure`` (one axes per target, in the targets' order)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    data = summarize(read_results(folder))
    if not data:
        raise EttError(f"{folder}: no target has results beyond its own IMP run yet; nothing to plot")
    n = len(data)
    cols = min(n, 3)
    rows_ = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows_ + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows_, cols, squeeze=False).ravel()
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]
    colours: dict[str, str] = {"IMP": "black"}
    handles: dict[str, object] = {}
    drawn: set[str] = set()  # what the legend's title explains: "band", "bar", "dashed", "dotted"
    for ax, (target, d) in zip(axes, data.items()):
        remaining_seen: set[float] = set()
        for name in d["order"]:
            kind = d["kinds"][name]
            pts = []
            for _, rs in sorted(d["cells"][name].items()):
                remaining = 100 * (1 - sum(r["sparsity"] for r in rs) / len(rs))
                mean, std = mean_std([100 * r[METRIC] for r in rs])
                pts.append((remaining, mean, std or 0.0))
            if not pts:
                continue
            colour = colours.setdefault(name, palette[(len(colours) - 1) % len(palette)])
            xs, ys, ss = zip(*sorted(pts, reverse=True))
            if kind == "imp" or not any(k == "imp" for k in d["kinds"].values()):
                remaining_seen.update(xs)  # IMP's levels mark the axis where there is an IMP curve
            style = "--" if kind == "baseline" else "-"
            drawn.update(["dashed"] if kind == "baseline" else [])
            (line,) = ax.plot(xs, ys, style, color=colour, marker="o", markersize=3, linewidth=1.5, label=name)
            if len(xs) > 1:
                ax.fill_between(
                    xs,
                    [y - s for y, s in zip(ys, ss)],
                    [y + s for y, s in zip(ys, ss)],
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                )
                drawn.add("band")
            else:  # one level: no band to shade, so the spread is an error bar
                ax.errorbar(xs, ys, yerr=ss, fmt="none", ecolor=colour, elinewidth=1.2, capsize=4)
                drawn.add("bar")
            handles.setdefault(name, line)
        if d["dense"]:
            dense = 100 * sum(d["dense"]) / len(d["dense"])
            handles.setdefault("Dense", ax.axhline(dense, color="grey", linestyle=":", linewidth=1.2, label="Dense"))
            drawn.add("dotted")
        ax.set_xscale("log")
        _remaining_ticks(ax, remaining_seen)
        ax.invert_xaxis()
        ax.set_title(target)
        ax.set_xlabel("weights remaining (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    runs = max(len(rs) for d in data.values() for cells in d["cells"].values() for rs in cells.values())
    fig.suptitle(study_info(folder)["name"], fontweight="bold")
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(len(handles), 6),
        frameon=False,
        title=_legend_title(runs, drawn),
        title_fontsize="small",
    )
    return fig


def _legend_title(runs: int, drawn: set[str]) -> str:
    """What the lines, bands, bars and line styles of the figure mean, naming only those it has."""
    parts = [f"final test accuracy; lines: mean over runs (up to {runs})"]
    spread = " and ".join(w for k, w in (("band", "shaded bands"), ("bar", "error bars")) if k in drawn)
    if spread:
        parts.append(f"{spread}: ± one sample standard deviation")
    parts += [w for k, w in (("dashed", "dashed: pruning baselines"), ("dotted", "dotted: dense")) if k in drawn]
    return "; ".join(parts)


def _remaining_ticks(ax, values: set[float], most: int = 8) -> None:
    """Ticks at the percentages the runs reached (100, 51.2, 26.2, ... for IMP's levels), as plain numbers,
    at most ``most`` of them."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ticks: list[float] = []
    for v in sorted(values, reverse=True):  # one tick per cluster: transfers land near IMP's sparsity
        if not ticks or ticks[-1] / v > 1.08:
            ticks.append(v)
    step = -(-len(ticks) // most)
    ax.xaxis.set_major_locator(FixedLocator(ticks[::step]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
