"""``ett prune imp``: find tickets by iterative magnitude pruning with rewinding (torch imported inside)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ettcli.commands import options as opt
from ettcli.commands.common import command_line, handle_errors
from ettcli.settings import TrainSettings

IMP_HELP = (
    "Level 0 trains the dense network and keeps its state at the rewind step; level L prunes ceil(rate x "
    "remaining) of the kept weights with the smallest magnitude after level L-1's training, rewinds every "
    "tensor (BatchNorm statistics included) and trains again from the rewind step. Files in --out: config.json, "
    "levels.json, and level_NN/ with ticket.safetensors (rewind-step weights with the level's masks) and the "
    "level's run (config.json, metrics.jsonl, summary.json, final.safetensors). Rerunning the same command "
    "skips finished levels and resumes the interrupted one; a larger --levels adds levels."
)


@opt.training_options(omit=("sync_bn",))
def imp(
    source: Annotated[
        str, typer.Argument(help="A dense ticket (e.g. from ett init) or an architecture name (e.g. cifar_resnet_20).")
    ],
    levels: Annotated[int, typer.Option("--levels", help="Pruning levels after the dense level 0.")] = 16,
    rate: Annotated[float, typer.Option("--rate", help="Fraction of the remaining weights pruned per level.")] = 0.2,
    rewind: Annotated[
        str | None,
        typer.Option(
            "--rewind",
            help="Rewind step (default: 1000it CIFAR ResNets, 200it CIFAR VGG, 5ep ImageNet, 2ep CIFAR ViT: "
            "Transformers need a late rewind, Brix et al. 2020).",
        ),
    ] = None,
    scope: Annotated[
        str, typer.Option("--scope", help="global (one ranking over all layers) or layerwise (each layer alike).")
    ] = "global",
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="A prunable tensor to leave dense (repeatable; default: the family's, "
            "e.g. fc.weight for CIFAR VGG as open_lth does).",
        ),
    ] = None,
    settings: TrainSettings = None,  # the training options (opt.training_options)
    init_seed: Annotated[int, typer.Option("--init-seed", help="Seed of the initialisation for a name.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="IMP folder (default imp-<source>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Find tickets by iterative magnitude pruning with rewinding.

    Example: ett prune imp cifar_resnet_20 --dataset cifar10 --data-root ~/data/cifar10 --levels 16
    """
    from ettcli.lottery import ImpSpec
    from ettcli.lottery import imp as run_imp

    spec = ImpSpec(rate=rate, rewind=rewind, scope=scope, exclude=tuple(exclude) if exclude else None)
    out = out or Path(f"imp-{Path(source).name.split('.')[0]}")

    def hooks_for(level: int):
        from ettcli.train import Hooks

        if quiet:
            return Hooks()
        say = lambda line: typer.echo(line, err=True)  # noqa: E731
        return Hooks(
            start=lambda total, per, step: say(f"level {level}: training from step {step} to {total}"),
            epoch=lambda row: say(
                f"level {level} epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                f"test acc {100 * row['test_accuracy']:.2f}%"
            ),
            info=say if level == 0 else (lambda line: None),
        )

    rows = run_imp(
        source,
        settings,
        levels=levels,
        out=out,
        spec=spec,
        seed=init_seed,
        hooks_for=hooks_for,
        command=command_line(),
    )
    _table(rows, out)


def _table(rows: list[dict], out: Path) -> None:
    from rich.table import Table

    from ettcli.commands.common import stdout_console

    table = Table(title=f"IMP in {out}")
    for col in ("level", "sparsity %", "kept", "final acc %", "best acc %", "time s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["level"]),
            f"{100 * r['sparsity']:.2f}",
            f"{r['kept']:,}",
            f"{100 * r['final_test_accuracy']:.2f}",
            f"{100 * r['best_test_accuracy']:.2f}",
            f"{r['train_seconds']:.0f}",
        )
    stdout_console().print(table)
    if not sys.stdout.isatty():
        sys.stdout.flush()


def register(prune_app: typer.Typer) -> None:
    prune_app.command("imp", epilog=IMP_HELP)(handle_errors(imp))
