"""``ett prune METHOD``: one command per registered pruning method, all sharing one declaration of options.

The commands are generated from ``ettcli.pruning.METHODS``: each gets its method's definition as help, one
example, and only the options that apply to it. torch is imported inside the command body only.
Other commands of the group (``ett prune imp``) are added to :data:`app` by their own modules.
"""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ettcli.commands.common import EttCommand, EttGroup, EttTyper, command_line, fail, handle_errors
from ettcli.errors import final_output
from ettcli.pruning import BN_MODES, MATCHES, METHODS, Method

Match = Enum("Match", {m: m for m in MATCHES}, type=str)
BnMode = Enum("BnMode", {m: m for m in BN_MODES}, type=str)

PRUNE_HELP = "Find tickets (IMP) and make pruning baselines at matched sparsity."
REPORT_HELP = (
    "Prints the target and the achieved sparsity, globally and per tensor. The output holds TICKET's unmasked "
    "rewind-point weights (fresh ones for reinit and --reinit), the new masks, TICKET's rewind step, and "
    "metadata that records the method and its settings (ett.prune.*), REF's sha256 (ett.like_sha256) and "
    "the command."
)


class MethodGroup(EttGroup):
    """The ``prune`` group: an unknown method is one error line that lists the known ones."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and name not in self.commands:
            fail(f"unknown pruning method '{name}'; choose one of: {', '.join(self.commands)}")
        return super().resolve_command(ctx, args)


app = EttTyper(
    name="prune",
    cls=MethodGroup,
    help=PRUNE_HELP,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- the options, declared once ----------------------------------------------------------------------------------
TicketArg = Annotated[
    Path,
    typer.Argument(
        metavar="TICKET", help="The ticket whose unmasked rewind-point weights are pruned (any layout ett reads)."
    ),
]
Out = Annotated[Path, typer.Option("-o", "--out", help="Output .safetensors file (may be TICKET itself).")]
Sparsity = Annotated[
    float | None,
    typer.Option(
        "--sparsity", metavar="S", help="Fraction of prunable weights to remove, in [0, 1): keeps round((1 - S) * N)."
    ),
]
Like = Annotated[
    Path | None,
    typer.Option("--like", metavar="REF", help="Keep exactly as many weights as this ticket (same architecture)."),
]
LikeMask = Annotated[
    Path | None,
    typer.Option("--like", metavar="REF", help="The ticket whose mask is copied (default: TICKET's own)."),
]
MatchOpt = Annotated[
    Match | None,
    typer.Option(
        "--match",
        help="With --like: global matches REF's total kept count, layerwise REF's count in every tensor.",
        show_default=False,
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option("--dataset", help="Dataset name (default: TICKET's, else its family's); sets the input shape."),
]
DataRoot = Annotated[
    Path | None,
    typer.Option("--data-root", help="Folder holding the dataset (default $ETT_DATA, else ~/.cache/ett/data)."),
]
Download = Annotated[bool, typer.Option("--download", help="Fetch CIFAR with torchvision's downloader first.")]
Samples = Annotated[
    int,
    typer.Option(
        "--samples-per-class",
        metavar="N",
        help="Scoring batch: the first N training images of every class, as one batch.",
    ),
]
Bn = Annotated[
    BnMode | None,
    typer.Option(
        "--bn",
        help="BatchNorm while scoring: train (batch statistics) or eval (running statistics).",
        show_default=False,
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the random placement or of the fresh initialisation.")]
Invert = Annotated[bool, typer.Option("--invert", help="Sanity ablation: keep the lowest scores instead.")]
Shuffle = Annotated[
    int | None,
    typer.Option("--shuffle", metavar="SEED", help="Sanity ablation: shuffle the result within each tensor."),
]
Reinit = Annotated[
    int | None,
    typer.Option("--reinit", metavar="SEED", help="Sanity ablation: put the result on freshly initialised weights."),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="NAME",
        help="Prunable tensor to leave dense (repeatable; 'none' prunes all). Default: open_lth's for the family "
        "(a CIFAR VGG's fc.weight) unless REF prunes it.",
        show_default=False,
    ),
]

# name -> (annotation, default, flag shown in the recorded command)
OPTIONS = {
    "ticket": (TicketArg, inspect.Parameter.empty, None),
    "sparsity": (Sparsity, None, "--sparsity"),
    "like": (Like, None, "--like"),
    "match": (MatchOpt, None, "--match"),
    "dataset": (Dataset, None, "--dataset"),
    "data_root": (DataRoot, None, "--data-root"),
    "download": (Download, False, "--download"),
    "samples_per_class": (Samples, 10, "--samples-per-class"),
    "bn": (Bn, None, "--bn"),
    "seed": (Seed, 0, "--seed"),
    "invert": (Invert, False, "--invert"),
    "shuffle": (Shuffle, None, "--shuffle"),
    "reinit": (Reinit, None, "--reinit"),
    "exclude": (Exclude, None, "--exclude"),
    "out": (Out, inspect.Parameter.empty, "-o"),
}


def options_for(m: Method) -> list[str]:
    """The options that apply to a method, in the order its help lists them."""
    names = ["ticket"]
    if not m.copies_mask:
        names.append("sparsity")
    names.append("like")
    if len(m.matches) > 1:
        names.append("match")
    if m.network:
        names.append("dataset")
    if m.data:
        names += ["data_root", "download", "samples_per_class"]
    if m.network:
        names.append("bn")
    if m.seeded:
        names.append("seed")
    if m.scored:
        names += ["invert", "shuffle", "reinit"]
    if not m.copies_mask:
        names.append("exclude")
    return [*names, "out"]


def _help(m: Method) -> str:
    extra = ""
    if m.network:
        extra = f" BatchNorm default: {m.bn}."
    return f"{m.summary}\n\n{m.definition}{extra}\n\n{REPORT_HELP}"


def add_method_command(group: typer.Typer, m: Method) -> None:
    """Add ``ett prune NAME`` for one method, with the options that apply to it."""
    names = options_for(m)

    @handle_errors
    def command(**kw) -> None:
        run_prune(m, names, kw)

    def annotation(n: str):
        return LikeMask if (n == "like" and m.copies_mask) else OPTIONS[n][0]

    command.__signature__ = inspect.Signature(
        [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=annotation(n), default=OPTIONS[n][1])
            for n in names
        ]
    )
    command.__name__ = m.name.replace("-", "_")
    group.command(
        name=m.name,
        cls=EttCommand,
        help=_help(m),
        short_help=m.summary,
        epilog=f"Example: {m.example}",
    )(command)


for _method in METHODS.values():
    add_method_command(app, _method)


def register(root: typer.Typer) -> None:
    """Add the ``prune`` group to the ``ett`` app."""
    root.add_typer(app, name="prune")


# --- the body ------------------------------------------------------------------------------------------------------
def run_prune(m: Method, names: list[str], kw: dict) -> None:
    from dataclasses import fields

    from ettcli.pruning import PruneOptions, prune_run
    from ettcli.stfile import check_writable
    from ettcli.ticket import output_format

    out: Path = kw["out"]
    output_format(out)  # an output that could not be written is refused before the scoring
    check_writable(out)
    exclude = kw.get("exclude")
    if exclude is not None:
        exclude = [] if [e.lower() for e in exclude] == ["none"] else list(exclude)
    given = {f.name: kw[f.name] for f in fields(PruneOptions) if kw.get(f.name) is not None}
    given.update(data=kw.get("data_root"), exclude=exclude)
    given = {k: getattr(v, "value", v) for k, v in given.items()}  # choices arrive as enums
    result = prune_run(kw["ticket"], m.name, PruneOptions(**given))
    result.ticket.metadata["ett.command"] = command_line()
    with final_output():
        result.ticket.save(out)
        typer.echo("\n".join(report_lines(result, out)))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def report_lines(result, out: Path) -> list[str]:
    """Target against achieved sparsity, per prunable tensor and over all of them."""
    t = result.ticket
    total, kept = t.counts()
    target_keep = result.target_keep
    how = f"{result.match} match" if result.match is not None else "mask copied"
    ref = f", like {result.ref.path}" if result.ref is not None and result.ref.path is not None else ""
    lines = [f"wrote {out} ({result.method.name}, {t.arch.name}, {how}{ref})"]
    rows = result.rows()
    w = max([len(r["tensor"]) for r in rows] + [12])
    lines.append(f"{'tensor':<{w}} {'weights':>10} {'kept':>10} {'sparsity':>9} {'target':>9}")
    for r in rows:
        if r["dense"]:
            target = "dense"
        elif r["target_kept"] is None:
            target = "-"
        else:
            target = _pct(1 - r["target_kept"] / r["weights"]) if r["weights"] else "-"
        lines.append(f"{r['tensor']:<{w}} {r['weights']:>10,} {r['kept']:>10,} {_pct(r['sparsity']):>9} {target:>9}")
    lines.append(
        f"{'all prunable':<{w}} {total:>10,} {kept:>10,} {_pct(1 - kept / total):>9} {_pct(1 - target_keep / total):>9}"
    )
    return lines
