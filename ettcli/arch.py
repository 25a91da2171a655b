"""Architecture specs: one typed description of a network, parsed from a name or inferred from a ticket.

Every command works from an :class:`ArchSpec`. It knows the family, the units per stage, the widths, the
exact ``state_dict`` names and shapes of the network, which tensors are prunable, and which unit each tensor
belongs to. Inference reads only names and shapes (never key order: names are matched with regular
expressions and indices sorted as numbers), builds the spec, then checks the tensors against the spec's own
expected names and shapes, so that a ticket that passes inference loads into the model with ``strict=True``.

Everything family-specific lives in a :class:`Family` plug-in, one module per family in
:mod:`ettcli.families`, registered in :data:`FAMILIES` where it is defined. This module is the interface
and the family-free machinery over it: names, inference, the tensor list, tensor checks.

Canonical names of the built-in families::

    cifar_resnet_20            3 stages of 3 basic blocks, stem width 16
    cifar_resnet_20_32         the same at stem width 32
    cifar_resnet_s3-5-7        custom stage lengths (stem width 16)
    imagenet_resnet_34         torchvision layout, basic blocks [3, 4, 6, 3]
    imagenet_resnet_50         bottleneck blocks [3, 4, 6, 3]
    imagenet_resnet_26_bottleneck   bottleneck [2, 2, 2, 2] (plain 26 is the basic [2, 3, 4, 3])
    imagenet_resnet_s2-3-5-2_bottleneck_32   custom stages, block type and width
    cifar_vgg_16, cifar_vgg_11_32, cifar_vgg_s1-1-1-1-1

A custom stage list that equals a standard one gets the standard name (cifar_vgg_s2-2-3-3-3 is cifar_vgg_16).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

from ettcli.errors import EttError
from ettcli.registry import Registry

if TYPE_CHECKING:
    from torch import nn

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

UnitTensors = list[tuple[str, tuple[int, ...], bool]]  # (local name, shape, prunable)


class Family:
    """A network family as a plug-in: everything ``ett`` knows that differs from one family to another.

    A subclass lives in its own module under :mod:`ettcli.families` and registers one instance with
    :func:`register`. The class attributes describe the family; the methods take the :class:`ArchSpec` they
    answer for. Methods with a body here are defaults that a family may keep.

    Naming: ``name`` (the canonical prefix, e.g. ``cifar_resnet``), ``short`` (``resnet`` in ``resnet-56``),
    ``unit`` (what one unit is called in messages), ``default_width``, ``standard`` (block type -> depth ->
    units per stage), ``default_block``, ``depth_rule`` (which depths are standard where no table lists
    them), ``examples`` (canonical names for messages), ``short_example``.

    Structure: :meth:`stem_tensors`, :meth:`unit_tensors`, :meth:`between_tensors` (tensors fixed in place
    between two stages, e.g. Swin's patch merging) and :meth:`head_tensors` give every state_dict entry;
    :meth:`unit_prefix` names a unit's keys; :meth:`is_fixed` says which units stay in place (unit 0 of a
    stage, e.g. ResNet's downsampling block).

    Recognition: :meth:`recognise` scores how strongly a set of names looks like the family (0: not at
    all), :meth:`infer` builds the spec from names and shapes, ``signature`` lists the key patterns that
    error messages show.

    Models and training (torch imported lazily, inside the methods): :meth:`build` makes the model,
    :meth:`init` initialises it; ``dataset``, ``rewind``, ``imp_exclude`` and ``recipe`` (a training recipe of
    its own, where the dataset's does not suit it) are its defaults for training.
    """

    name: str = ""
    short: str = ""
    unit: str = "unit"
    default_width: int = 64
    standard: Mapping[str, Mapping[int, tuple[int, ...]]] = {}
    default_block: str = ""
    depth_rule: str = ""
    name_blocks: tuple[str, ...] = ()  # block words a canonical name may carry (default: the standard's)
    examples: tuple[str, ...] = ()  # canonical names for messages
    target_example: str = ""  # a canonical target name for messages
    short_example: str = ""
    signature: str = ""  # the keys that identify the family, for messages
    signature_keys: tuple[tuple[str, str], ...] = ()  # (key as shown, regex): what a ticket of it must have
    dataset: str = "cifar10"  # trained on when no dataset is named
    rewind: str = "0it"  # IMP's default rewind step
    imp_exclude: tuple[str, ...] = ()  # prunable tensors IMP leaves dense by default
    recipe: str | None = None  # the training recipe (recipe.RECIPES) where not the dataset's
    init_name: str = "open_lth kaiming_normal"  # what init() does, recorded in an initialised ticket
    stated_heads: bool = False  # attention heads, not held by the weights, may be stated (ett.heads; ViTs)

    # --- naming ---------------------------------------------------------------------------------------
    def depth(self, spec: ArchSpec) -> int:
        return sum(spec.stages)

    def is_standard(self, spec: ArchSpec) -> bool:
        return self.standard.get(spec.block, {}).get(spec.depth) == spec.stages

    def block_in_name(self, spec: ArchSpec) -> str | None:
        """The block type written into the canonical name, if the name must state it."""
        return None

    def canonical_name(self, spec: ArchSpec) -> str:
        core = str(spec.depth) if spec.is_standard() else "s" + "-".join(map(str, spec.stages))
        parts = [self.name, core]
        block = self.block_in_name(spec)
        if block:
            parts.append(block)
        if spec.width != self.default_width:
            parts.append(str(spec.width))
        return "_".join(parts)

    def check_block(self, block: str | None, depth: int | None, name: str) -> str:
        """The block type a canonical name means (``block`` as written, or None)."""
        return block or self.default_block

    def standard_stages(self, block: str, depth: int, name: str) -> tuple[int, ...]:
        table = self.standard.get(block, {})
        if depth not in table:
            known = ", ".join(f"{d}" for d in sorted(table))
            near = table[min(table, key=lambda d: (abs(d - depth), d))] if table else (1,) * 4
            raise EttError(
                f"'{name}': no standard {self.name} of depth {depth} with {block} units (known: {known}); "
                f"give the units per stage instead, e.g. {self.name}_s{'-'.join(map(str, near))} "
                f"(--stages {','.join(map(str, near))} in a transform)"
            )
        return table[depth]

    def names_help(self) -> str:
        if self.depth_rule:
            depths = self.depth_rule
        else:
            default = self.standard.get(self.default_block, {})
            depths = ", ".join(
                f"{d}_{block}" if block != self.default_block and d in default else str(d)
                for block, table in self.standard.items()
                for d in sorted(table)
            )
        return f"{self.name}_N (N = {depths}; stem width {self.default_width})"

    def parse_name(self, text: str, like: ArchSpec | None, num_classes: int | None) -> ArchSpec | None:
        """The spec a canonical name of this family means, or None where ``text`` is not one."""
        m = name_pattern(self).match(text)
        if not m:
            return None
        if m["depth"]:
            depth = int(m["depth"])
            block = self.check_block(m["block"], depth, text)
            stages = self.standard_stages(block, depth, text)
        else:
            block = self.check_block(m["block"], None, text)
            stages = tuple(int(x) for x in m["stages"].split("-"))
            if any(n < 1 for n in stages):
                raise EttError(f"'{text}': every stage needs at least one {self.unit}")
        width = int(m["width"]) if m["width"] else self.default_width
        if width < 1:
            raise EttError(f"'{text}': width must be positive")
        classes = num_classes if num_classes is not None else (like.num_classes if like else 10)
        if classes < 1:
            raise EttError(f"'{text}': a classifier needs at least 1 output, not {classes} (--num-classes)")
        prefix = like.prefix if like and like.family == self.name else ""
        return ArchSpec(self.name, stages, width, block, classes, prefix)

    def parse_short(self, depth: int, like: ArchSpec, name: str) -> ArchSpec:
        """The spec a short name (``resnet-56``) means relative to a source of this family."""
        return replace(like, stages=self.standard_stages(like.block, depth, name))

    # --- structure ------------------------------------------------------------------------------------
    def stage_channels(self, spec: ArchSpec, s: int) -> int:
        return spec.width

    def unit_prefix(self, spec: ArchSpec, stage: int, unit: int) -> str:
        raise NotImplementedError

    def has_shortcut(self, spec: ArchSpec, stage: int, unit: int) -> bool:
        return False

    def is_fixed(self, spec: ArchSpec, stage: int, unit: int) -> bool:
        """Whether a unit stays in place in every plan (unit 0 of each stage, by default)."""
        return unit == 0

    def first_unit(self, spec: ArchSpec, stage: int) -> str:
        """How messages name unit 0 of a stage."""
        word = self.unit
        return f"the stage's first, downsampling {word}" if spec.has_shortcut(stage, 0) else f"the stage's first {word}"

    def adjust_fill(self, source: ArchSpec, target: ArchSpec, stage: int, fill: tuple[int, ...]) -> tuple[int, ...]:
        """A preset's fill of one stage (source unit of every target position), as this family wants it."""
        return fill

    def plan_warnings(self, plan: Any) -> list[str]:
        """Warnings about a valid plan that this family's networks would not like (e.g. moved parity)."""
        return []

    def left_dense(self, spec: ArchSpec) -> tuple[str, ...]:
        """Prunable tensors that IMP and the pruning methods leave dense unless told otherwise."""
        return tuple(self.imp_exclude)

    def ticket_metadata(self, spec: ArchSpec) -> dict[str, str]:
        """Metadata a saved ticket of this family carries besides ``ett.arch`` (read back by inference)."""
        return {"ett.heads": str(spec.heads)} if spec.heads else {}

    def closeness(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
        """The :attr:`signature_keys` these names have and those they lack, for messages."""
        have, lack = [], []
        for shown, regex in self.signature_keys:
            pattern = re.compile(regex)
            (have if any(pattern.search(n) for n in shapes) else lack).append(shown)
        return have, lack

    def stem_tensors(self, spec: ArchSpec) -> UnitTensors:
        return []

    def unit_tensors(self, spec: ArchSpec, stage: int, unit: int) -> UnitTensors:
        raise NotImplementedError

    def between_tensors(self, spec: ArchSpec, stage: int) -> UnitTensors:
        """Tensors fixed in place after stage ``stage`` and before the next one (full names, no prefix)."""
        return []

    def head_tensors(self, spec: ArchSpec) -> UnitTensors:
        return []

    # --- recognition ----------------------------------------------------------------------------------
    def recognise(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """How many names look like this family's units (0: not this family)."""
        return 0

    def infer(self, shapes: Mapping[str, tuple[int, ...]], where: str) -> ArchSpec:
        raise NotImplementedError

    # --- models ----------------------------------------------------------------------------------------
    def build(self, spec: ArchSpec) -> nn.Module:
        raise EttError(f"no model can be built for family '{self.name}'")

    def init(self, model: nn.Module) -> None:
        """Initialise a freshly built model (open_lth's scheme by default)."""
        open_lth_init(model)


def open_lth_init(model: nn.Module) -> None:
    """Kaiming normal (fan-in) on conv and linear weights; BatchNorm gamma ~ U(0, 1), beta = 0."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


FAMILIES: Registry[Family] = Registry("family")


@cache
def name_pattern(family: Family) -> re.Pattern:
    """The canonical-name grammar of a family: NAME_DEPTH or NAME_sA-B-C, then _BLOCK and _WIDTH, optional."""
    blocks = "|".join(map(re.escape, family.name_blocks or tuple(family.standard)))
    return re.compile(
        rf"^{re.escape(family.name)}_"
        r"(?:(?P<depth>\d+)|s(?P<stages>\d+(?:-\d+)*))"
        + (rf"(?:_(?P<block>{blocks}))?" if blocks else r"(?P<block>)")
        + r"(?:_(?P<width>\d+))?$"
    )


def register(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def shape_of(shapes: Mapping[str, tuple[int, ...]], key: str, where: str) -> tuple[int, ...]:
    """The shape of ``key``, or an EttError naming it as missing."""
    if key not in shapes:
        raise EttError(f"{where}: missing tensor '{key}'")
    return tuple(shapes[key])


def bn_tensors(name: str, c: int) -> UnitTensors:
    """A BatchNorm's five entries."""
    return [(f"{name}.{p}", () if p == "num_batches_tracked" else (c,), False) for p in BN]


@dataclass(frozen=True)
class TensorSpec:
    """One expected state_dict entry: its shape, whether it is prunable, and where it belongs."""

    name: str
    shape: tuple[int, ...]
    prunable: bool
    stage: int | None = None  # None for stem and head
    unit: int | None = None
    role: str = "unit"  # "stem", "head", "fixed" (between stages) or "unit"
    local: str = ""  # name inside its unit, e.g. "conv1.weight"


@dataclass(frozen=True)
class ArchSpec:
    """A network of one family: stage lengths, widths, block type, classes and key prefix."""

    family: str
    stages: tuple[int, ...]
    width: int
    block: str = "basic"
    num_classes: int = 10
    prefix: str = ""
    extra: Any = field(default=(), compare=False)
    heads: int | None = field(default=None, compare=False)  # attention heads a ticket states (with_heads)

    # --- naming ---------------------------------------------------------------------------------------
    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]

    @property
    def depth(self) -> int:
        return self.fam.depth(self)

    def is_standard(self) -> bool:
        return self.fam.is_standard(self)

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``cifar_resnet_20`` or ``imagenet_resnet_s2-2-2-2_bottleneck``."""
        return self.fam.canonical_name(self)

    def __str__(self) -> str:
        return self.name

    def with_stages(self, stages: tuple[int, ...]) -> ArchSpec:
        return replace(self, stages=tuple(stages))

    @property
    def unit_word(self) -> str:
        return self.fam.unit

    # --- structure -------------------------------------------------------------------------------------
    def stage_channels(self, s: int) -> int:
        """Output channels of stage ``s`` (the bottleneck's expansion included)."""
        return self.fam.stage_channels(self, s)

    def unit_prefix(self, stage: int, unit: int) -> str:
        """The key prefix of a unit, e.g. ``blocks.4.``, ``model.layer2.1.`` or ``layers.3.``."""
        return self.prefix + self.fam.unit_prefix(self, stage, unit)

    def has_shortcut(self, stage: int, unit: int) -> bool:
        """Whether this unit carries a projection shortcut (the downsampling unit of a stage)."""
        return self.fam.has_shortcut(self, stage, unit)

    def is_fixed(self, stage: int, unit: int) -> bool:
        """Whether this unit stays in place in every plan."""
        return self.fam.is_fixed(self, stage, unit)

    def unit_tensors(self, stage: int, unit: int) -> UnitTensors:
        """(local name, shape, prunable) of every tensor in one unit."""
        return self.fam.unit_tensors(self, stage, unit)

    @cached_property
    def tensors(self) -> dict[str, TensorSpec]:
        """Every state_dict entry in module order, with shape, prunability and owner."""
        out: dict[str, TensorSpec] = {}
        p = self.prefix
        fam = self.fam
        for name, shape, prunable in fam.stem_tensors(self):
            out[p + name] = TensorSpec(p + name, tuple(shape), prunable, None, None, "stem")
        for s, n in enumerate(self.stages):
            for u in range(n):
                pre = self.unit_prefix(s, u)
                for local, shape, prunable in fam.unit_tensors(self, s, u):
                    out[pre + local] = TensorSpec(pre + local, tuple(shape), prunable, s, u, "unit", local)
            for name, shape, prunable in fam.between_tensors(self, s):
                out[p + name] = TensorSpec(p + name, tuple(shape), prunable, None, None, "fixed")
        for name, shape, prunable in fam.head_tensors(self):
            out[p + name] = TensorSpec(p + name, tuple(shape), prunable, None, None, "head")
        return out

    def units(self) -> list[tuple[int, int]]:
        return [(s, u) for s, n in enumerate(self.stages) for u in range(n)]

    @property
    def num_values(self) -> int:
        """Entries of all tensors (parameters and buffers)."""
        total = 0
        for t in self.tensors.values():
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total


def check_fits_in_memory(spec: ArchSpec, bytes_per_value: int = 4) -> None:
    """Refuse a network whose tensors alone (float32) exceed this machine's physical memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf here: let the allocation decide
        return
    need = spec.num_values * bytes_per_value
    if need > memory:
        raise EttError(
            f"{spec.name} has {spec.num_values:,} parameters and buffers ({_gib(need)} as float32), more than "
            f"this machine's memory ({_gib(memory)}); choose a smaller width or depth"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def names_help() -> str:
    """The valid architecture names, from the family registry, for help texts."""
    parts = [fam.names_help() for fam in FAMILIES.values()]
    return (
        "; ".join(parts) + ". Append _W for another stem width (cifar_resnet_20_32), or give the units per stage "
        "instead of N (cifar_resnet_s3-5-7)."
    )


# --- names -----------------------------------------------------------------------------------------------
_SHORT = re.compile(r"^(?P<short>[a-z][a-z0-9_]*?)-?(?P<depth>\d+)$")


def states_width(name: str) -> bool:
    """Whether a canonical name states a width (``cifar_resnet_20_32``)."""
    text = name.strip().lower()
    return any((m := name_pattern(f).match(text)) and m["width"] for f in FAMILIES.values())


def parse_arch(name: str, like: ArchSpec | None = None, num_classes: int | None = None) -> ArchSpec:
    """Parse a canonical name (``cifar_resnet_56``) or, given a source spec, a short name (``resnet-56``).

    A short name means the source's family, width and block type at another depth.
    """
    text = name.strip().lower() if name else ""
    for family in FAMILIES.values():
        spec = family.parse_name(text, like, num_classes)
        if spec is not None:
            return spec
    s = _SHORT.match(text)
    shorts = {f.short for f in FAMILIES.values()}
    if s and s["short"] in shorts:
        if like is None:
            examples = ", ".join(f.target_example for f in FAMILIES.values() if f.target_example)
            raise EttError(
                f"'{name}' is a short name; it needs a source ticket to say the family "
                f"(or use a canonical name such as {examples})"
            )
        if like.fam.short != s["short"]:
            raise EttError(f"'{name}' names a {s['short']}, but the source is {like.name} (family {like.family})")
        return like.fam.parse_short(int(s["depth"]), like, name)
    examples = ", ".join(e for f in FAMILIES.values() for e in f.examples)
    short = " / ".join(dict.fromkeys(f.short_example for f in FAMILIES.values() if f.short_example))
    raise EttError(
        f"'{name}' is not an architecture name: expected e.g. {examples}, or {short} relative to a source ticket"
    )


def with_heads(spec: ArchSpec, value: str | int | None, where: str = "ticket") -> ArchSpec:
    """``spec`` with the attention head count a ticket states (its ``ett.heads``, ``ett convert --heads``).

    Only families whose weights do not hold the count take one (:attr:`Family.stated_heads`); it must be a
    whole number that divides the width. ``None`` leaves ``spec`` as it is.
    """
    if value is None:
        return spec
    takers = [f.name for f in FAMILIES.values() if f.stated_heads]
    if not spec.fam.stated_heads:
        raise EttError(
            f"{where}: ett.heads states an attention head count, which only {', '.join(takers)} tickets take "
            f"(their weights do not hold it); {spec.name} has none to state: remove it"
        )
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1 or spec.width % int(text):
        raise EttError(
            f"{where}: ett.heads is '{value}'; the head count is a whole number that divides the width ({spec.width})"
        )
    return replace(spec, heads=int(text))


def parse_stages(text: str) -> tuple[int, ...]:
    """Parse ``--stages 5,5,5``."""
    try:
        stages = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise EttError(f"--stages '{text}': expected comma-separated unit counts such as 5,5,5") from None
    if not stages or any(n < 1 for n in stages):
        raise EttError(f"--stages '{text}': every stage needs at least one unit")
    return stages


# --- wrapper prefixes ------------------------------------------------------------------------------------
WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.")  # Lightning / open_lth, DDP, torch.compile
ONLY_WRAPPERS = ("module.", "_orig_mod.")  # never a submodule's name ("model." is one in transformers' task models)


def strip_wrappers(names: Iterable[str], where: str = "ticket") -> dict[str, str]:
    """Each name -> its plain name, without the wrapper prefixes that every name shares.

    Wrappers nest (``module._orig_mod.conv.weight``: DDP around a compiled model), so prefixes are removed
    one at a time for as long as all names carry the same one. A wrapper prefix on only some names is
    refused: a ticket is one model's state_dict. ``model.`` on some names only is a submodule's name (a
    transformers task model: ``model.layers.{i}`` beside ``lm_head``) and is kept.
    """
    names = list(names)
    plain = names
    while plain:
        shared = next((p for p in WRAPPER_PREFIXES if all(n.startswith(p) for n in plain)), None)
        if shared is None:
            break
        plain = [n[len(shared) :] for n in plain]
    wrapped = [(o, n) for o, n in zip(names, plain) if n.startswith(ONLY_WRAPPERS)]
    if wrapped:
        original, name = wrapped[0]
        prefix = next(p for p in ONLY_WRAPPERS if name.startswith(p))
        other = next(o for o, n in zip(names, plain) if not n.startswith(prefix))
        raise EttError(
            f"{where}: '{original}' has the wrapper prefix '{prefix}' but '{other}' does not; save the state_dict "
            "of one model, with the same prefix on every name"
        )
    return dict(zip(names, plain))


# --- inference -------------------------------------------------------------------------------------------
def recognise(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[int, Family]]:
    """Every family with its score for these names, best first (ties in registration order)."""
    scored = [(family.recognise(shapes), i, family) for i, family in enumerate(FAMILIES.values())]
    return [(score, family) for score, _, family in sorted(scored, key=lambda x: (-x[0], x[1]))]


def expected_keys() -> str:
    """What each registered family's keys look like, for messages."""
    parts = [
        f"{'an' if f.name[0] in 'aeiou' else 'a'} {f.name} ({f.signature})" for f in FAMILIES.values() if f.signature
    ]
    return "expected the keys of " + (", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0])


UNITS: ContextVar[str | None] = ContextVar("ett_units", default=None)


@contextmanager
def units(pattern: str | None) -> Iterator[None]:
    """Within this block, inference finds the units by ``pattern`` (``--units``): any state dict's
    repeated units, e.g. ``encoder.block.{i}`` or ``stages.{s}.blocks.{b}``."""
    token = UNITS.set(pattern.strip() if pattern else None)
    try:
        yield
    finally:
        UNITS.reset(token)


def infer_arch(shapes: Mapping[str, tuple[int, ...]], where: str = "ticket", units: str | None = None) -> ArchSpec:
    """Infer the spec from state_dict names and shapes, then check every tensor against it.

    The family whose :meth:`Family.recognise` scores highest infers the spec; with a unit pattern (``units``,
    or :func:`units` around the call, or a ticket's ``ett.units``) the ``units`` family reads the units by
    it. Raises EttError naming the first missing, unexpected or mis-shaped tensor, or, where no family
    matches, the families tried and the closest one with what it lacks.
    """
    pattern = UNITS.get() or units
    if pattern:
        spec = FAMILIES["units"].infer_with(pattern, shapes, where)
    else:
        ranked = recognise(shapes)
        if not ranked or ranked[0][0] <= 0:
            raise EttError(_no_family(shapes, where))
        spec = ranked[0][1].infer(shapes, where)
    check_tensors(spec, shapes, where)
    return spec


def _no_family(shapes: Mapping[str, tuple[int, ...]], where: str) -> str:
    """One line: the families tried, the closest with what it lacks, a --units pattern to try, what was found."""
    sample = ", ".join(f"'{n}'" for n in sorted(shapes)[:3]) or "no tensors"
    tried = ", ".join(n for n in FAMILIES if n != "units")
    close = []
    for family in FAMILIES.values():
        have, lack = family.closeness(shapes)
        if have:
            close.append((len(have) / (len(have) + len(lack)), -len(close), family.name, have, lack))
    closest = ""
    if close:
        _, _, name, have, lack = max(close)
        closest = f"; closest: {name}, which has {', '.join(have)} but no {', '.join(lack)}"
    guess = guess_units(shapes)
    hint = (
        f"; if '{guess}' are its repeated units, pass --units '{guess}'"
        if guess
        else "; name the repeated units with --units PATTERN"
    )
    return (
        f"{where}: parameter names match no known family (tried {tried}){closest}{hint}; {expected_keys()}; "
        f"found {sample}"
    )


_NUMBERED = re.compile(r"^(?P<pre>(?:[^.]+\.)*?[^.]+)\.(?P<a>\d+)\.(?:(?P<b>\d+)\.)?")


def guess_units(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The unit pattern most names share (``blocks.{i}``, ``stages.{s}.blocks.{b}``), or None."""
    counts: dict[str, int] = {}
    for name in shapes:
        m = _NUMBERED.match(name)
        if m:
            pattern = f"{m['pre']}.{{s}}.{{b}}" if m["b"] is not None else f"{m['pre']}.{{i}}"
            counts[pattern] = counts.get(pattern, 0) + 1
    if not counts:
        return None
    return max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]


def check_tensors(spec: ArchSpec, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse any missing, unexpected or mis-shaped tensor, naming it."""
    expected = spec.tensors
    for name, t in expected.items():
        if name not in shapes:
            raise EttError(f"{where}: missing tensor '{name}' (expected for {spec.name})")
        if tuple(shapes[name]) != t.shape:
            raise EttError(
                f"{where}: tensor '{name}' has shape {list(shapes[name])}, expected {list(t.shape)} for {spec.name}"
            )
    extra = [n for n in shapes if n not in expected]
    if extra:
        raise EttError(f"{where}: unexpected tensor '{extra[0]}' for {spec.name} ({len(extra)} unexpected in all)")


import ettcli.families  # noqa: E402,F401  (registers the built-in families)
