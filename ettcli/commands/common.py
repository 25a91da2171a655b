"""Shared CLI machinery: the app, group and command classes every ``ett`` command gets, and small helpers.

* :class:`EttTyper` makes every command an :class:`EttCommand` (commands added later included).
* :class:`EttGroup` runs every command inside :func:`cli_session`: ``EttWarning`` s become one
  ``ett: warning: ...`` line each, other Python warnings are silenced (unless the user asks for them with
  ``-W`` or ``PYTHONWARNINGS``), a reader that closes the pipe (``ett inspect | head -1``) ends the command
  quietly with exit code 0, and an :class:`EttError` that escaped its command is still one line, exit 2.
* :class:`EttCommand` coerces plain option values (str, int, float, Path, Enum) itself, so that a command
  starts without importing pydantic (typer's coercion imports it: about 60 ms, more than a small transform),
  and shows no ``<bool>`` type beside flags.
* :func:`command_line` is the command line as typed, for the ``ett.command`` metadata of written tickets.

Only typer's public API is used: subclasses of :class:`typer.Typer`, :class:`typer.core.TyperGroup` and
:class:`typer.core.TyperCommand`, and click's documented ``Parameter.process_value`` hook.
"""

from __future__ import annotations

import contextlib
import functools
import inspect as _inspect
import os
import shlex
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import ParameterInfo

from ettcli.errors import EttError, EttWarning, Interrupted, signal_name, take_held_signal


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    typer.echo(f"ett: error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn EttError into one line on stderr and exit code 2, and an interrupt into exit code 128 + signal
    (a training stopped at a checkpoint says where, and that rerunning the command resumes it).

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
        except Interrupted as exc:
            signum = exc.signum or signal.SIGINT
            name = signal_name(exc.signum) if exc.signum else "a stop request"
            typer.echo(
                f"ett: interrupted by {name} at step {exc.step}; checkpoint saved in {exc.folder}; "
                "rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(128 + signum) from None
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
    """A rich console on stdout whose closed pipe is handled like every other command's (exit 0, quietly)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich's own handler exits with status 1
            self.quiet = True
            raise BrokenPipeError

    return _Console(soft_wrap=False, width=None if sys.stdout.isatty() else 140)


# --- the command line, for provenance ---------------------------------------------------------------------
_ARGV: list[str] | None = None  # the arguments of the running command, set by EttGroup


def command_line() -> str:
    """The running command as typed, shell-quoted: ``ett stretch r20.safetensors --to resnet-56``."""
    args = _ARGV if _ARGV is not None else sys.argv[1:]
    return shlex.join(["ett", *args])


# --- one session per command: warnings, closed pipes, escaped errors ----------------------------------------
def _warning_line(message) -> str:
    return "ett: warning: " + " ".join(str(message).split())


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def cli_session():
    """Run one command: warnings as one line each, a closed stdout pipe is success, EttError is one line."""
    seen: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EttWarning):
            text = _warning_line(message)
            if text not in seen:  # the same warning once per command
                seen.add(text)
                typer.echo(text, err=True)
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        if not sys.warnoptions:  # library warnings (torch, numpy) are not about the user's input
            warnings.simplefilter("ignore")
        warnings.simplefilter("always", EttWarning)
        try:
            yield
        except BrokenPipeError:  # the reader went away (``| head``): not an error
            _silence_stdout()
            raise typer.Exit(0) from None
        except EttError as exc:  # a command without handle_errors still fails in one line
            fail(str(exc))
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()


class EttGroup(TyperGroup):
    """The ``ett`` group: records the command line and runs every subcommand inside :func:`cli_session`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _plain_params(self.params, self.callback)

    def make_context(self, info_name, args, parent=None, **extra):
        global _ARGV
        if parent is None:
            _ARGV = list(args)
        with cli_session():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with cli_session():
            return super().invoke(ctx)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _plain_params([option], None)
        return option


# --- plain coercion without pydantic, flags without a type ------------------------------------------------
_PLAIN = (str, int, float, Path)


def _plain_kind(annotation, info) -> type | None:
    """The plain type of a parameter, or None where typer's own coercion must run (ranges, parsers, checks)."""
    if get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        info = next((e for e in extras if isinstance(e, ParameterInfo)), info)
    if not (annotation in _PLAIN or (isinstance(annotation, type) and issubclass(annotation, Enum))):
        return None
    if isinstance(info, ParameterInfo):
        if info.parser is not None or info.min is not None or info.max is not None:
            return None
        if annotation is Path and (
            info.exists or info.writable or info.resolve_path or info.allow_dash or not info.file_okay
        ):
            return None
        if annotation is Path and not info.dir_okay:
            return None
    return annotation


def _use_plain_coercion(param, kind: type | None) -> None:
    """Give ``param`` a ``process_value`` that coerces plain values itself (idempotent)."""
    if kind is None or param.multiple or param.nargs != 1 or getattr(param.process_value, "ett_plain", False):
        return
    typer_process_value = param.process_value

    def process_value(ctx, value):
        if value is None and not param.required:
            out = None
        elif isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            out = value
        elif isinstance(value, str) and kind is not bool:
            try:
                out = kind(value)
            except ValueError:
                if issubclass(kind, Enum):
                    choices = ", ".join(repr(m.value) for m in kind)
                    raise typer.BadParameter(f"{value!r} is not one of {choices}.", ctx=ctx, param=param) from None
                raise typer.BadParameter(f"{value!r} is not a valid {kind.__name__}.", ctx=ctx, param=param) from None
        else:  # anything unusual: typer's own coercion
            return typer_process_value(ctx, value)
        if param.callback is not None:
            out = param.callback(ctx, param, out)
        return out

    process_value.ett_plain = True
    param.process_value = process_value


def _plain_params(params, callback) -> None:
    """Plain coercion for every plain parameter of a command or group (types from ``callback``'s signature)."""
    try:
        signature = _inspect.signature(callback, eval_str=True) if callback else None
    except (NameError, TypeError, ValueError):  # unresolvable annotations: typer's coercion for all
        signature = None
    declared = signature.parameters if signature else {}
    for param in params:
        if param is None:
            continue
        _flag_without_type(param)
        if getattr(param, "is_bool_flag", False):
            _use_plain_coercion(param, bool)
        elif param.name in declared:
            p = declared[param.name]
            _use_plain_coercion(param, _plain_kind(p.annotation, p.default))


def _flag_without_type(param):
    """A boolean flag takes no value, so its help shows no ``<bool>`` type."""
    if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
    return param


class EttCommand(TyperCommand):
    """An ``ett`` command: plain option values coerced without pydantic, flags shown without a type."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _plain_params(self.params, self.callback)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _plain_params([option], None)
        return option


class EttTyper(typer.Typer):
    """The ``ett`` app: its group is an :class:`EttGroup` and every command an :class:`EttCommand`."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cls", EttGroup)
        super().__init__(**kwargs)

    def command(self, name=None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or EttCommand, **kwargs)


MASKS_HELP = (
    "A masks-only file beside the weights (.pt read with weights_only=True, or safetensors): 0/1 tensors named "
    "X_mask (BERT-Tickets' mask.pt) or X."
)
UNITS_HELP = (
    "Name the repeated units of a network ett does not know, e.g. 'encoder.block.{i}' ({i}: unit index) or "
    "'stages.{s}.blocks.{b}' (stage and unit); everything else is stem or head, copied unchanged."
)
