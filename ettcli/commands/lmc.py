"""``ett lmc``: linear mode connectivity and instability of a ticket (torch and matplotlib imported inside).

The group has two commands, ``run`` (the default) and ``plot``:

    ett lmc TICKET ...              the same as ett lmc run TICKET ...
    ett lmc --pair A B ...          the same as ett lmc run --pair A B ...
    ett lmc plot DIR [DIR...] -o FIG.png

Any first argument that is not a command name goes to ``run`` (a ticket file named ``plot`` needs the
explicit ``ett lmc run plot``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ettcli.commands import options as opt
from ettcli.commands.common import EttGroup, EttTyper, command_line, handle_errors
from ettcli.errors import EttError
from ettcli.settings import TrainSettings, flag, setting_fields

SPARKS = "▁▂▃▄▅▆▇█"

LMC_HELP = (
    "Both copies train from the ticket's rewind step with the recipe options below and seeds --seeds (data "
    "order and augmentation); they are ordinary ett train runs in $ETT_RUNS, so a finished run with the same "
    "settings is reused, not trained again. At each of --alphas evenly spaced points of [0, 1] the weights "
    "(1 - alpha) * A + alpha * B (masked weights 0) get their BatchNorm statistics re-estimated on --bn-batches "
    "training batches, augmented as in training unless --bn-data plain (the same images, crops and flips at every "
    "alpha; --no-bn-reset keeps the interpolated statistics), then the test set and --train-images un-augmented "
    "training images are evaluated; with --subset N, the training images are the N the copies trained on. "
    "Instability: the largest "
    "error along the path minus the mean of the endpoints' errors, in percentage points. Writes lmc.json to "
    "--out (default $ETT_RUNS/lmc-<ticket>-<identity hash>). --pair A B measures two tickets trained elsewhere "
    "(same architecture and masks); the training options are then refused (--subset, which says which images "
    "they trained on, is kept)."
)

_TRAIN_ONLY = ("epochs", "lr", "milestones", "weight_decay", "warmup", "compile", "compile_mode", "deterministic")


class DefaultToRun(EttGroup):
    """A group whose first argument, when it is not a command, goes to the ``run`` command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


lmc_app = EttTyper(
    name="lmc",
    cls=DefaultToRun,
    no_args_is_help=True,
    help="Linear mode connectivity: train two copies of a ticket (or take two trained tickets), measure the "
    "error along the straight line between them, and plot it. ett lmc TICKET is ett lmc run TICKET.",
)


@opt.training_options(omit=("seed", "sync_bn", "workers"))
def run(
    ticket: Annotated[
        Path | None, typer.Argument(help="The ticket whose two copies are trained (any layout ett reads).")
    ] = None,
    pair: Annotated[
        tuple[Path, Path] | None,
        typer.Option("--pair", help="Two tickets already trained from one ticket: measure the path between them."),
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="The two copies' seeds (data order, augmentation).")] = "0,1",
    alphas: Annotated[int, typer.Option("--alphas", help="Points on the path, endpoints included.")] = 11,
    bn_batches: Annotated[
        int, typer.Option("--bn-batches", help="Training batches that re-estimate BatchNorm at every alpha.")
    ] = 50,
    bn_data: Annotated[
        str,
        typer.Option(
            "--bn-data",
            help="augmented: those batches cropped and flipped as in training, where the trained statistics come "
            "from; plain: the same images un-augmented (lowers the endpoints' own accuracy).",
        ),
    ] = "augmented",
    bn_reset: Annotated[
        bool,
        typer.Option(
            "--bn-reset/--no-bn-reset",
            help="Re-estimate BatchNorm statistics at every alpha (--no-bn-reset keeps the interpolated ones, "
            "as the reference implementation does; it inflates the barrier).",
        ),
    ] = True,
    train_images: Annotated[
        int,
        typer.Option(
            "--train-images",
            help="Un-augmented training images evaluated at every alpha, evenly spread over the set "
            "(0: none; 50000: all of CIFAR's, 5x the test set's cost).",
        ),
    ] = 10_000,
    settings: TrainSettings = None,  # the training options (opt.training_options)
    out: Annotated[Path | None, typer.Option("--out", help="Folder for lmc.json (default under $ETT_RUNS).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print lmc.json on stdout, nothing else.")] = False,
) -> None:
    """Train two copies of a ticket with different seeds and measure the error between them (instability).

    Example: ett lmc r20.safetensors --dataset cifar10 --data-root ~/data/cifar10 --epochs 160
    """
    say = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))  # noqa: E731

    def on_alpha(row: dict) -> None:
        extra = f", train acc {100 * row['train_accuracy']:.2f}%" if "train_accuracy" in row else ""
        say(f"alpha {row['alpha']:.3f}: test acc {100 * row['test_accuracy']:.2f}% loss {row['test_loss']:.4f}{extra}")

    common = {"alphas": alphas, "bn_batches": bn_batches, "bn_reset": bn_reset, "bn_data": bn_data}
    common["train_images"] = train_images
    if pair is not None:
        if ticket is not None:
            raise EttError(f"give a ticket to train ({ticket}) or --pair with two trained tickets, not both")
        given = [
            flag(f.name) for f in setting_fields() if f.name in _TRAIN_ONLY and getattr(settings, f.name) != f.default
        ]
        if seeds != "0,1":
            given.append("--seeds")
        if given:
            raise EttError(f"{given[0]} trains the copies, but --pair takes two trained tickets; drop {given[0]}")
        from ettcli.lmc import lmc_pair

        record = lmc_pair(pair[0], pair[1], settings, out=out, on_alpha=on_alpha, **common)
    else:
        if ticket is None:
            raise EttError("give the ticket to train (ett lmc TICKET) or two trained tickets (--pair A B)")
        from ettcli.lmc import run_lmc

        parsed = _parse_seeds(seeds)
        record = run_lmc(
            ticket,
            settings,
            seeds=parsed,
            out=out,
            hooks_for=lambda seed: _train_hooks(seed, say, first=seed == parsed[0]),
            on_alpha=on_alpha,
            metadata={"ett.command": command_line()},
            **common,
        )
    if as_json:
        typer.echo(json.dumps(record))
        return
    _report(record)


def _parse_seeds(text: str) -> tuple[int, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise EttError(f"seeds {text!r}: give two different integers, e.g. 0,1") from None
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise EttError(f"seeds {text!r}: give two different integers, e.g. 0,1")
    return seeds


def _train_hooks(seed: int, say, first: bool):
    from ettcli.train import Hooks

    return Hooks(
        info=say if first else (lambda line: None),
        start=lambda total, per, step: say(f"copy seed {seed}: training from step {step} to {total}"),
        epoch=lambda row: say(
            f"copy seed {seed} epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
            f"test acc {100 * row['test_accuracy']:.2f}%"
        ),
    )


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the curve's minimum and maximum."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[round((v - lo) / (hi - lo) * (len(SPARKS) - 1))] for v in values)


def _report(record: dict) -> None:
    from rich.table import Table

    from ettcli.commands.common import stdout_console

    test, train = record["test"], record["train"]
    s = record["settings"]
    reset = f"BatchNorm re-estimated ({s['bn_data']})" if s["bn_reset"] else "interpolated BatchNorm statistics"
    if record.get("bn_layers") == 0:
        reset = "no BatchNorm to re-estimate"
    table = Table(title=f"{record['arch']} on {record['dataset']}, {100 * record['sparsity']:.2f}% sparse, {reset}")
    table.add_column("alpha", justify="right")
    table.add_column("test acc %", justify="right")
    table.add_column("test loss", justify="right")
    if train:
        table.add_column("train acc %", justify="right")
        table.add_column("train loss", justify="right")
    for i, alpha in enumerate(record["alphas"]):
        cells = [f"{alpha:.3f}", f"{100 * test['accuracy'][i]:.2f}", f"{test['loss'][i]:.4f}"]
        if train:
            cells += [f"{100 * train['accuracy'][i]:.2f}", f"{train['loss'][i]:.4f}"]
        table.add_row(*cells)
    console = stdout_console()
    console.print(table)
    for name, curve in (("test", test), ("train", train)):
        if curve:
            err = curve["error"]
            typer.echo(
                f"{name} error {sparkline(err)} {min(err):.2f}..{max(err):.2f}%, endpoints {err[0]:.2f}% and "
                f"{err[-1]:.2f}%: instability {curve['instability']:.2f} pp"
            )
    typer.echo(f"wrote {Path(record['out']) / 'lmc.json'}")
    if not sys.stdout.isatty():
        sys.stdout.flush()


# --- plot ------------------------------------------------------------------------------------------------------
def plot(
    dirs: Annotated[list[Path], typer.Argument(help="Folders holding lmc.json (or the lmc.json files).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The figure (.png, .pdf or .svg).")],
    split: Annotated[str, typer.Option("--split", help="test or train error.")] = "test",
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A legend label per folder, in order (default: its name).")
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="The figure's title.")] = None,
) -> None:
    """Plot error against the interpolation coefficient, several measurements on one figure.

    Example: ett lmc plot runs/lmc-imp runs/lmc-ett -o lmc.png --label IMP --label ETT
    """
    if split not in ("test", "train"):
        raise EttError(f"split {split!r}: choose test or train")
    if label and len(label) != len(dirs):
        raise EttError(f"{len(label)} --label for {len(dirs)} folders; give one per folder or none")
    records = []
    for i, d in enumerate(dirs):
        rec = _read_record(d)
        if rec.get(split) is None:
            raise EttError(f"{d}: this measurement has no {split} curve (it ran with --train-images 0)")
        records.append((label[i] if label else (d.parent.name if d.name == "lmc.json" else d.name), rec))
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf", "svg"):
        raise EttError(f"{output}: name a .png, .pdf or .svg file")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise EttError("plots need matplotlib: pip install 'ettcli[plots]'") from None
    from ettcli.stfile import atomic_path

    fig = Figure(figsize=(5.5, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rec in records:
        curve = rec[split]
        tag = f", BN {rec['settings'].get('bn_data')}" if rec["settings"]["bn_reset"] else ", no BN reset"
        ax.plot(
            rec["alphas"],
            curve["error"],
            marker="o",
            markersize=3,
            label=f"{name} ({curve['instability']:.1f} pp{tag})",
        )
    ax.set_xlabel("interpolation α  ((1-α)·A + α·B)")
    ax.set_ylabel(f"{split} error (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(*error_range([e for _, rec in records for e in rec[split]["error"]]))
    ax.grid(True, alpha=0.3)
    ncols = 1 if len(records) < 3 else 2  # below the axes, where no curve runs
    resets = {rec["settings"]["bn_reset"] for _, rec in records}
    ends = (
        "the endpoints after BatchNorm re-estimation"
        if resets == {True}
        else ("the endpoints, BatchNorm interpolated" if resets == {False} else "the endpoints as measured")
    )
    fig.legend(
        loc="outside lower center",
        ncols=ncols,
        fontsize="small",
        title=f"instability: largest error on the path minus the mean error of\n{ends}",
        title_fontsize="small",
    )
    if title:
        ax.set_title(title)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150)
    typer.echo(f"wrote {output}")


def error_range(errors: list[float], least: float = 10.0) -> tuple[float, float]:
    """The y range of an error plot: the data's own, widened to at least ``least`` percentage points around
    it (within 0-100), so that a path flat to within noise does not fill the axes like a barrier."""
    lo, hi = min(errors), max(errors)
    pad = max(0.05 * (hi - lo), (least - (hi - lo)) / 2)
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > 100:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    return lo, hi


def _read_record(path: Path) -> dict:
    file = path if path.name == "lmc.json" or path.is_file() else path / "lmc.json"
    if not file.is_file():
        raise EttError(f"{path}: no lmc.json there; give a folder written by ett lmc")
    try:
        rec = json.loads(file.read_text())
        rec["alphas"], rec["settings"]["bn_reset"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError):
        raise EttError(f"{file}: not an lmc.json written by ett lmc") from None
    return rec


def register(app: typer.Typer) -> None:
    lmc_app.command("run", epilog=LMC_HELP)(handle_errors(run))
    lmc_app.command("plot")(handle_errors(plot))
    app.add_typer(lmc_app)
