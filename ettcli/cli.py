"""The ``ett`` command line. Thin: options become values, the core does the work, results are rendered.

Nothing imported here at module level pulls in torch, so ``ett --help``, ``inspect`` and the transforms
start fast. Each command group is a module of :mod:`ettcli.commands` with a ``register(app)`` function.
"""

from __future__ import annotations

import typer

from ettcli import __version__
from ettcli.commands import lmc, lottery, prune, study, tickets, train, transform
from ettcli.commands.common import EttTyper

app = EttTyper(
    name="ett",
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
transform.register(app)
train.register(app)

lottery.register(prune.app)
prune.register(app)
study.register(app)
lmc.register(app)


def main() -> None:
    """The ``ett`` entry point: SIGINT, SIGTERM and SIGHUP become interrupts, so temporary files are removed."""
    import signal

    from ettcli.errors import on_signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    app()
