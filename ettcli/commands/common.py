"""Shared CLI helpers: error handling and output consoles."""

from __future__ import annotations

import functools
import signal
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from ettcli.errors import EttError, signal_name, take_held_signal


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    typer.echo(f"ett: error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn EttError into one line on stderr and exit code 2, and an interrupt into exit code 128 + signal.

    An interrupt that arrives after the command's final output was committed (see ``final_output``) is
    held: the command has succeeded, and a note says so.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        take_held_signal()
        try:
            result = fn(*args, **kwargs)
        except EttError as exc:
            fail(str(exc))
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            typer.echo(f"ett: interrupted by {signal_name(signum)}", err=True)
            raise typer.Exit(128 + signum) from None
        held = take_held_signal()
        if held is not None:
            typer.echo(f"ett: {signal_name(held)} arrived after the output was complete; it is kept", err=True)
        return result

    return wrapper


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 140)


# --- start-up speed ---------------------------------------------------------------------------------------
# typer >= 0.2x coerces every option value through a pydantic TypeAdapter; importing pydantic alone costs
# about 60 ms at every start, more than a whole small transform. Plain types (str, int, Path, Enum, bool
# flags) are coerced here directly, as click does; anything else keeps typer's own coercion.
try:
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam, build_runtime_param
except ImportError:  # older typer: click coerces these types itself, without pydantic
    RuntimeParam = None

if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainValue(RuntimeParam):
        def _coerce_value(self, value, param, ctx):
            kind = self.annotation
            if isinstance(value, kind):
                return value
            if kind is bool:
                return build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)
            try:
                return kind(value)
            except ValueError:
                if issubclass(kind, Enum):
                    choices = ", ".join(repr(m.value) for m in kind)
                    raise BadParameter(f"{value!r} is not one of {choices}.", ctx=ctx, param=param) from None
                raise BadParameter(f"{value!r} is not a valid {kind.__name__}.", ctx=ctx, param=param) from None


def _plain_coercion(params) -> None:
    """Install the plain coercion on each plain parameter; any surprise leaves typer's own in place."""
    if RuntimeParam is None:
        return
    for param in params:
        try:
            desc = getattr(param, "type_descriptor", None)
            kind = getattr(desc, "annotation", None)
            plain = kind in (str, int, bool, Path) or (isinstance(kind, type) and issubclass(kind, Enum))
            if plain and getattr(param, "_runtime_param", 0) is None:
                param._runtime_param = _PlainValue(desc.parameter_info, kind)
        except Exception:  # typer's private layout changed: keep its (slower, correct) coercion
            continue


class FastCommand(TyperCommand):
    """A typer command whose plain options (str, int, Path, Enum, bool) are coerced without pydantic."""

    def parse_args(self, ctx, args):
        _plain_coercion(self.get_params(ctx))
        return super().parse_args(ctx, args)


class FastGroup(TyperGroup):
    """The same for a group's own options (``ett --version``)."""

    def parse_args(self, ctx, args):
        _plain_coercion(self.get_params(ctx))
        return super().parse_args(ctx, args)


def command_line() -> str:
    """The command as the user typed it (``ett`` and its arguments, shell-quoted), for ``ett.command``."""
    import shlex

    return shlex.join(["ett", *sys.argv[1:]])
