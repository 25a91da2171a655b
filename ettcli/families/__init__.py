"""Network families as plug-ins: one module per family, each registering a :class:`~ettcli.arch.Family`.

Importing this package imports every module in it, so a new family is one new file here (and its tests);
nothing else names it. The built-in families come first, in the order their names are listed in help texts.
A family module never imports torch at import time: model building imports it inside :meth:`Family.build`,
so ``ett --help``, ``ett inspect`` and the transforms stay torch-free.
"""

from __future__ import annotations

import importlib
import pkgutil

BUILT_IN = ("cifar_resnet", "imagenet_resnet", "cifar_vgg")


def _load_all() -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in [*BUILT_IN, *(n for n in found if n not in BUILT_IN)]:
        importlib.import_module(f"{__name__}.{name}")


_load_all()
