"""Shared CLI helpers: error handling and output consoles."""

from __future__ import annotations

import functools
import sys

import typer

from ettcli.errors import EttError


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    typer.echo(f"ett: error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn EttError (and a missing file or a Ctrl-C) into one line on stderr and exit code 2 (130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EttError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("ett: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 140)
