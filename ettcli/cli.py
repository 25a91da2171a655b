"""The ``ett`` command line. Thin: options become values, the core does the work, results are rendered.

Nothing imported here at module level pulls in torch, so ``ett --help``, ``inspect`` and the transforms
start fast.
"""

from __future__ import annotations

import typer

from ettcli import __version__
from ettcli.commands import lottery, tickets
from ettcli.commands.common import FastGroup

app = typer.Typer(
    name="ett",
    cls=FastGroup,
    help="Elastic lottery tickets: inspect, stretch, squeeze, train and find sparse subnetworks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ett {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Elastic lottery tickets: inspect, stretch, squeeze, train and find sparse subnetworks."""


tickets.register(app)

for _name in ("transform", "train", "lmc"):
    try:
        _mod = __import__(f"ettcli.commands.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _exc:  # a command group not present in this build
        if _exc.name != f"ettcli.commands.{_name}":
            raise
    else:
        _mod.register(app)

prune_app = typer.Typer(
    name="prune", help="Find tickets (IMP) and make pruning baselines at matched sparsity.", no_args_is_help=True
)
lottery.register(prune_app)
app.add_typer(prune_app)


def main() -> None:
    app()
