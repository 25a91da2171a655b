"""Training options, generated from :class:`~ettcli.settings.TrainSettings`: one declaration for every command.

A command that trains declares a ``settings`` parameter and is decorated with :func:`training_options`: the
parameter is replaced, at its place in the signature, by one option per setting (its flag, help text and
default from the field), and the command receives the :class:`~ettcli.settings.TrainSettings` they make.
``ett train``, ``ett prune imp`` and ``ett lmc run`` take them so; a study's ``[train]`` table reads the same
fields (``ettcli.study.spec``). No torch here.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, get_type_hints

import typer

from ettcli.settings import TrainSettings, flag, setting_fields

_TYPES = {"data_root": Path | None}  # a path on the command line, text in the settings


def option(f) -> object:
    """The ``Annotated`` Typer option of one :class:`TrainSettings` field."""
    kind = _TYPES.get(f.name) or get_type_hints(TrainSettings)[f.name]
    return Annotated[kind, typer.Option(flag(f.name), help=f.metadata["help"])]


def training_options(omit: tuple[str, ...] = ()):
    """Replace the command's ``settings`` parameter by one option per training setting (those in ``omit``
    left out: they keep their defaults) and call the command with the :class:`TrainSettings` they make."""
    chosen = [f for f in setting_fields() if f.name not in omit]

    def wrap(fn):
        params = []
        for p in inspect.signature(fn, eval_str=True).parameters.values():
            if p.name == "settings":
                params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=option(f),
                                             default=f.default) for f in chosen]  # fmt: skip
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(fn)
        def command(**kw):
            values = {f.name: kw.pop(f.name) for f in chosen}
            if values.get("data_root") is not None:
                values["data_root"] = str(values["data_root"])
            return fn(**kw, settings=TrainSettings(**values))

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {}  # the signature carries the evaluated annotations
        return command

    return wrap
