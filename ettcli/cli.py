"""The ``ett`` command line. Thin: options become values, the core does the work, results are rendered.

Each command group is a module of :mod:`ettcli.commands` with a ``register(app)`` function, and a module is
imported only when one of its commands runs (or shows its own help): ``ett stretch`` never loads the
pruning registry, ``ett --help`` loads no command module at all. :data:`COMMANDS` names every command with
the one-line help that ``ett --help`` lists; ``tests/test_cli.py`` checks the table against the commands.
"""

from __future__ import annotations

from collections.abc import Callable

import typer
from typer.core import TyperCommand

from ettcli import __version__
from ettcli.commands.common import EttGroup, EttTyper


def _tickets(app: typer.Typer) -> None:
    from ettcli.commands import tickets

    tickets.register(app)


def _transform(app: typer.Typer) -> None:
    from ettcli.commands import transform

    transform.register(app)


def _train(app: typer.Typer) -> None:
    from ettcli.commands import train

    train.register(app)


def _prune(app: typer.Typer) -> None:
    from ettcli.commands import lottery, prune

    lottery.register(prune.app)
    prune.register(app)


def _study(app: typer.Typer) -> None:
    from ettcli.commands import study

    study.register(app)


def _lmc(app: typer.Typer) -> None:
    from ettcli.commands import lmc

    lmc.register(app)


# name -> (what registers it, the first paragraph of its own help), in the order `ett --help` lists them
COMMANDS: dict[str, tuple[Callable[[typer.Typer], None], str]] = {
    "inspect": (_tickets, "Show a ticket's architecture, stages and units, and its per-tensor and global sparsity."),
    "convert": (_tickets, "Convert a ticket in any supported layout into an ett ticket (or an open_lth level folder)."),
    "init": (
        _tickets,
        "Write a freshly initialised dense ticket (its family's init: open_lth's Kaiming normal and BN gamma ~ "
        "U(0,1)\nfor the CNNs, torchvision's own for cifar_vit).",  # the docstring's line break, as Typer keeps it
    ),
    "plan": (
        _transform,
        "Show which source unit fills which target position, the mapping, and the predicted sparsity.",
    ),
    "stretch": (_transform, "Write a deeper ticket of the same family by replicating units (stem, head, unit 0 kept)."),
    "squeeze": (_transform, "Write a shallower ticket of the same family by dropping units (stem, head, unit 0 kept)."),
    "train": (_train, "Train a ticket with its masks fixed, from its rewind step, with its dataset's recipe."),
    "prune": (_prune, "Find tickets (IMP) and make pruning baselines at matched sparsity."),
    "study": (_study, "Run the whole E-LTH study from one file, then tabulate and plot it."),
    "lmc": (
        _lmc,
        "Linear mode connectivity: train two copies of a ticket (or take two trained tickets), measure the error "
        "along the straight line between them, and plot it. ett lmc TICKET is ett lmc run TICKET.",
    ),
}

_LOADED: dict[str, TyperCommand] = {}


def load_command(name: str) -> TyperCommand:
    """The command ``name`` of :data:`COMMANDS`, its module imported and registered on first use.

    Each module registers once per process (on a Typer app of its own), so every ``ett`` app built from
    :data:`app` shares the same commands.
    """
    if name not in _LOADED:
        register = COMMANDS[name][0]
        sub = EttTyper()
        register(sub)
        group = typer.main.get_group(sub)
        for other, (loader, _) in COMMANDS.items():
            if loader is register and other in group.commands:
                _LOADED.setdefault(other, group.commands[other])
    return _LOADED[name]


class LazyCommand(TyperCommand):
    """Stands for a command of :data:`COMMANDS` in the root group: lists its name and help line, and loads
    the real command only when it runs (or shows its own help)."""

    def __init__(self, name: str, help_line: str):
        super().__init__(name, help=help_line)

    def load(self) -> TyperCommand:
        return load_command(self.name)

    def make_context(self, info_name, args, parent=None, **extra):
        return self.load().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        return self.load().invoke(ctx)

    def get_params(self, ctx):
        return self.load().get_params(ctx)

    def get_usage(self, ctx):
        return self.load().get_usage(ctx)

    def get_help(self, ctx):
        return self.load().get_help(ctx)

    def shell_complete(self, ctx, incomplete):
        return self.load().shell_complete(ctx, incomplete)

    def to_info_dict(self, ctx):
        return self.load().to_info_dict(ctx)


class RootGroup(EttGroup):
    """The ``ett`` group: every command of :data:`COMMANDS`, each loaded only when it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, (_, help_line) in COMMANDS.items():
            self.commands.setdefault(name, _LOADED.get(name) or LazyCommand(name, help_line))


app = EttTyper(
    name="ett",
    cls=RootGroup,
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


def main() -> None:
    """The ``ett`` entry point: SIGINT, SIGTERM and SIGHUP become interrupts, so temporary files are removed."""
    import signal

    from ettcli.errors import on_signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    app()
