"""Architecture specs: one typed description of a network, parsed from a name or inferred from a ticket.

Every command works from an :class:`ArchSpec`. It knows the family, the units per stage, the widths, the
exact ``state_dict`` names and shapes of the network, which tensors are prunable, and which unit each tensor
belongs to. Inference reads only names and shapes (never key order: names are matched with regular
expressions and indices sorted as numbers), builds the spec, then checks the tensors against the spec's own
expected names and shapes, so that a ticket that passes inference loads into the model with ``strict=True``.

Canonical names::

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

from ettcli.errors import EttError
from ettcli.registry import Registry

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Family:
    """A registered family: its name, short name, default width and standard depths."""

    name: str
    short: str
    unit: str  # what one unit is called in messages
    default_width: int
    standard: Mapping[str, Mapping[int, tuple[int, ...]]]  # block type -> depth -> stages
    default_block: str
    depth_rule: str = ""  # which depths are standard, where no table lists them


FAMILIES: Registry[Family] = Registry("family")


def register(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


CIFAR_RESNET = register(
    Family("cifar_resnet", "resnet", "block", 16, {"basic": {}}, "basic", "6n+2: 8, 14, 20, 32, 44, 56, 110, ...")
)
IMAGENET_RESNET = register(
    Family(
        "imagenet_resnet",
        "resnet",
        "block",
        64,
        {
            "basic": {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3)},
            "bottleneck": {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)},
        },
        "basic",
    )
)
CIFAR_VGG = register(
    Family(
        "cifar_vgg",
        "vgg",
        "layer",
        64,
        {
            "conv": {
                11: (1, 1, 2, 2, 2),
                13: (2, 2, 2, 2, 2),
                16: (2, 2, 3, 3, 3),
                19: (2, 2, 4, 4, 4),
            }
        },
        "conv",
    )
)


@dataclass(frozen=True)
class TensorSpec:
    """One expected state_dict entry: its shape, whether it is prunable, and where it belongs."""

    name: str
    shape: tuple[int, ...]
    prunable: bool
    stage: int | None = None  # None for stem and head
    unit: int | None = None
    role: str = "unit"  # "stem", "head" or "unit"
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
    extra: tuple = field(default=(), compare=False)

    # --- naming ---------------------------------------------------------------------------------------
    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]

    @property
    def depth(self) -> int:
        n = sum(self.stages)
        if self.family == "cifar_resnet":
            return 2 * n + 2
        if self.family == "cifar_vgg":
            return n + 3
        return (3 if self.block == "bottleneck" else 2) * n + 2

    def is_standard(self) -> bool:
        if self.family == "cifar_resnet":
            return len(self.stages) == 3 and len(set(self.stages)) == 1
        return self.fam.standard.get(self.block, {}).get(self.depth) == self.stages

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``cifar_resnet_20`` or ``imagenet_resnet_s2-2-2-2_bottleneck``."""
        core = str(self.depth) if self.is_standard() else "s" + "-".join(map(str, self.stages))
        parts = [self.family, core]
        if self.family == "imagenet_resnet":
            default = "basic"
            if self.is_standard():
                default = "basic" if self.depth in self.fam.standard["basic"] else "bottleneck"
            if self.block != default:
                parts.append(self.block)
        if self.width != self.fam.default_width:
            parts.append(str(self.width))
        return "_".join(parts)

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
        if self.family == "cifar_vgg":
            return self.width * min(2**s, 8)
        c = self.width * 2**s
        return c * 4 if self.block == "bottleneck" else c

    def unit_prefix(self, stage: int, unit: int) -> str:
        """The key prefix of a unit, e.g. ``blocks.4.``, ``model.layer2.1.`` or ``layers.3.``."""
        if self.family == "cifar_resnet":
            return f"{self.prefix}blocks.{sum(self.stages[:stage]) + unit}."
        if self.family == "cifar_vgg":
            return f"{self.prefix}layers.{sum(self.stages[:stage]) + stage + unit}."
        return f"{self.prefix}layer{stage + 1}.{unit}."

    def has_shortcut(self, stage: int, unit: int) -> bool:
        """Whether this unit carries a projection shortcut (the downsampling unit of a stage)."""
        if unit != 0 or self.family == "cifar_vgg":
            return False
        if self.family == "cifar_resnet":
            return stage > 0
        return stage > 0 or self.block == "bottleneck" or self.width != self.stage_channels(0)

    def unit_tensors(self, stage: int, unit: int) -> list[tuple[str, tuple[int, ...], bool]]:
        """(local name, shape, prunable) of every tensor in one unit."""
        out: list[tuple[str, tuple[int, ...], bool]] = []

        def conv(name, cout, cin, k, bias=False):
            out.append((f"{name}.weight", (cout, cin, k, k), True))
            if bias:
                out.append((f"{name}.bias", (cout,), False))

        def bn(name, c):
            for p in BN:
                out.append((f"{name}.{p}", () if p == "num_batches_tracked" else (c,), False))

        cout = self.stage_channels(stage)
        if unit > 0:
            cin = cout
        elif stage > 0:
            cin = self.stage_channels(stage - 1)
        else:
            cin = 3 if self.family == "cifar_vgg" else self.width
        if self.family == "cifar_vgg":
            conv("conv", cout, cin, 3, bias=True)
            bn("bn", cout)
            return out
        if self.block == "bottleneck":
            mid = self.width * 2**stage
            conv("conv1", mid, cin, 1)
            bn("bn1", mid)
            conv("conv2", mid, mid, 3)
            bn("bn2", mid)
            conv("conv3", cout, mid, 1)
            bn("bn3", cout)
        else:
            conv("conv1", cout, cin, 3)
            bn("bn1", cout)
            conv("conv2", cout, cout, 3)
            bn("bn2", cout)
        if self.has_shortcut(stage, unit):
            sc = "shortcut" if self.family == "cifar_resnet" else "downsample"
            conv(f"{sc}.0", cout, cin, 1)
            bn(f"{sc}.1", cout)
        return out

    @cached_property
    def tensors(self) -> dict[str, TensorSpec]:
        """Every state_dict entry in module order, with shape, prunability and owner."""
        out: dict[str, TensorSpec] = {}
        p = self.prefix

        def add(name, shape, prunable, role, stage=None, unit=None, local=""):
            out[p + name if role != "unit" else name] = TensorSpec(
                p + name if role != "unit" else name, tuple(shape), prunable, stage, unit, role, local
            )

        if self.family == "cifar_resnet":
            add("conv.weight", (self.width, 3, 3, 3), True, "stem")
            for b in BN:
                add(f"bn.{b}", () if b == "num_batches_tracked" else (self.width,), False, "stem")
        elif self.family == "imagenet_resnet":
            add("conv1.weight", (self.width, 3, 7, 7), True, "stem")
            for b in BN:
                add(f"bn1.{b}", () if b == "num_batches_tracked" else (self.width,), False, "stem")
        for s, n in enumerate(self.stages):
            for u in range(n):
                pre = self.unit_prefix(s, u)
                for local, shape, prunable in self.unit_tensors(s, u):
                    add(pre + local, shape, prunable, "unit", s, u, local)
        last = self.stage_channels(len(self.stages) - 1)
        add("fc.weight", (self.num_classes, last), True, "head")
        add("fc.bias", (self.num_classes,), False, "head")
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
    parts = []
    for fam in FAMILIES.values():
        if fam.depth_rule:
            depths = fam.depth_rule
        else:
            default = fam.standard.get(fam.default_block, {})
            depths = ", ".join(
                f"{d}_{block}" if block != fam.default_block and d in default else str(d)
                for block, table in fam.standard.items()
                for d in sorted(table)
            )
        parts.append(f"{fam.name}_N (N = {depths}; stem width {fam.default_width})")
    return (
        "; ".join(parts) + ". Append _W for another stem width (cifar_resnet_20_32), or give the units per stage "
        "instead of N (cifar_resnet_s3-5-7)."
    )


# --- names -----------------------------------------------------------------------------------------------
_NAME = re.compile(
    r"^(?P<family>cifar_resnet|imagenet_resnet|cifar_vgg)_"
    r"(?:(?P<depth>\d+)|s(?P<stages>\d+(?:-\d+)*))"
    r"(?:_(?P<block>basic|bottleneck))?"
    r"(?:_(?P<width>\d+))?$"
)
_SHORT = re.compile(r"^(?P<short>resnet|vgg)-?(?P<depth>\d+)$")


def _standard_stages(family: Family, block: str, depth: int, name: str) -> tuple[int, ...]:
    if family.name == "cifar_resnet":
        if depth < 8 or (depth - 2) % 6:
            raise EttError(f"'{name}': a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), not {depth}")
        return ((depth - 2) // 6,) * 3
    table = family.standard.get(block, {})
    if depth not in table:
        known = ", ".join(f"{d}" for d in sorted(table))
        near = table[min(table, key=lambda d: (abs(d - depth), d))] if table else (1,) * 4
        raise EttError(
            f"'{name}': no standard {family.name} of depth {depth} with {block} units (known: {known}); "
            f"give the units per stage instead, e.g. {family.name}_s{'-'.join(map(str, near))} "
            f"(--stages {','.join(map(str, near))} in a transform)"
        )
    return table[depth]


def parse_arch(name: str, like: ArchSpec | None = None, num_classes: int | None = None) -> ArchSpec:
    """Parse a canonical name (``cifar_resnet_56``) or, given a source spec, a short name (``resnet-56``).

    A short name means the source's family, width and block type at another depth.
    """
    text = name.strip().lower() if name else ""
    m = _NAME.match(text)
    if m:
        family = FAMILIES[m["family"]]
        block = m["block"]
        if family.name == "cifar_vgg":
            if block:
                raise EttError(f"'{name}': VGG names take no block type")
            block = "conv"
        elif family.name == "cifar_resnet":
            if block == "bottleneck":
                raise EttError(f"'{name}': CIFAR ResNets have basic blocks only")
            block = "basic"
        if m["depth"]:
            depth = int(m["depth"])
            if block is None:
                block = "basic" if depth in family.standard["basic"] else "bottleneck"
            stages = _standard_stages(family, block, depth, name)
        else:
            block = block or family.default_block
            stages = tuple(int(x) for x in m["stages"].split("-"))
            if any(n < 1 for n in stages):
                raise EttError(f"'{name}': every stage needs at least one {family.unit}")
        width = int(m["width"]) if m["width"] else family.default_width
        if width < 1:
            raise EttError(f"'{name}': width must be positive")
        classes = num_classes if num_classes is not None else (like.num_classes if like else 10)
        if classes < 1:
            raise EttError(f"'{name}': a classifier needs at least 1 output, not {classes} (--num-classes)")
        prefix = like.prefix if like and like.family == family.name else ""
        return ArchSpec(family.name, stages, width, block, classes, prefix)
    s = _SHORT.match(text)
    if s:
        if like is None:
            raise EttError(
                f"'{name}' is a short name; it needs a source ticket to say the family "
                "(or use a canonical name such as cifar_resnet_56, imagenet_resnet_34, cifar_vgg_19)"
            )
        if FAMILIES[like.family].short != s["short"]:
            raise EttError(f"'{name}' names a {s['short']}, but the source is {like.name} (family {like.family})")
        family = like.fam
        stages = _standard_stages(family, like.block, int(s["depth"]), name)
        return replace(like, stages=stages)
    raise EttError(
        f"'{name}' is not an architecture name: expected e.g. cifar_resnet_20, cifar_resnet_20_32, "
        "cifar_resnet_s3-5-7, imagenet_resnet_34, imagenet_resnet_50, cifar_vgg_16, or resnet-56 / vgg-19 "
        "relative to a source ticket"
    )


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


def strip_wrappers(names: Iterable[str], where: str = "ticket") -> dict[str, str]:
    """Each name -> its plain name, without the wrapper prefixes that every name shares.

    Wrappers nest (``module._orig_mod.conv.weight``: DDP around a compiled model), so prefixes are removed
    one at a time for as long as all names carry the same one. A wrapper prefix on only some names is
    refused: a ticket is one model's state_dict.
    """
    names = list(names)
    plain = names
    while plain:
        shared = next((p for p in WRAPPER_PREFIXES if all(n.startswith(p) for n in plain)), None)
        if shared is None:
            break
        plain = [n[len(shared) :] for n in plain]
    wrapped = [(o, n) for o, n in zip(names, plain) if n.startswith(WRAPPER_PREFIXES)]
    if wrapped:
        original, name = wrapped[0]
        prefix = next(p for p in WRAPPER_PREFIXES if name.startswith(p))
        other = next(o for o, n in zip(names, plain) if not n.startswith(prefix))
        raise EttError(
            f"{where}: '{original}' has the wrapper prefix '{prefix}' but '{other}' does not; save the state_dict "
            "of one model, with the same prefix on every name"
        )
    return dict(zip(names, plain))


# --- inference -------------------------------------------------------------------------------------------
_RES_IMAGENET = re.compile(r"^layer(?P<stage>\d+)\.(?P<unit>\d+)\.")
_RES_CIFAR = re.compile(r"^blocks\.(?P<unit>\d+)\.")
_VGG = re.compile(r"^layers\.(?P<idx>\d+)\.conv\.weight$")
_EXPECTED = (
    "expected the keys of a cifar_resnet (conv.weight, blocks.{i}.conv1.weight, fc.weight), an "
    "imagenet_resnet (conv1.weight, layer{1-4}.{b}.conv1.weight, fc.weight) or a cifar_vgg "
    "(layers.{i}.conv.weight, fc.weight)"
)


def infer_arch(shapes: Mapping[str, tuple[int, ...]], where: str = "ticket") -> ArchSpec:
    """Infer the spec from state_dict names and shapes, then check every tensor against it.

    Raises EttError naming the first missing, unexpected or mis-shaped tensor.
    """
    names = list(shapes)

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise EttError(f"{where}: missing tensor '{key}'")
        return tuple(shapes[key])

    imagenet = [m for m in map(_RES_IMAGENET.match, names) if m]
    cifar = [m for m in map(_RES_CIFAR.match, names) if m]
    vgg = [m for m in map(_VGG.match, names) if m]
    if imagenet:
        per_stage: dict[int, set[int]] = {}
        for m in imagenet:
            per_stage.setdefault(int(m["stage"]), set()).add(int(m["unit"]))
        stage_ids = sorted(per_stage)
        if stage_ids != list(range(1, len(stage_ids) + 1)):
            raise EttError(f"{where}: ResNet stages must be layer1..layerN without gaps, found {stage_ids}")
        stages = []
        for s in stage_ids:
            units = sorted(per_stage[s])
            if units != list(range(len(units))):
                raise EttError(f"{where}: layer{s} has blocks {units}; expected 0..{len(units) - 1} without gaps")
            stages.append(len(units))
        block = "bottleneck" if "layer1.0.conv3.weight" in shapes else "basic"
        width = shape("conv1.weight")[0]
        classes = shape("fc.weight")[0]
        spec = ArchSpec("imagenet_resnet", tuple(stages), width, block, classes)
        _refuse_variants(spec, shapes, where)
    elif cifar:
        ids = sorted({int(m["unit"]) for m in cifar})
        if ids != list(range(len(ids))):
            raise EttError(f"{where}: blocks are numbered {ids[:12]}...; expected 0..{len(ids) - 1} without gaps")
        stages = []
        width = shape("conv.weight")[0]
        prev = width
        for i in ids:
            cout = shape(f"blocks.{i}.conv1.weight")[0]
            starts = i == 0 or f"blocks.{i}.shortcut.0.weight" in shapes or cout != prev
            if starts:
                stages.append(0)
            stages[-1] += 1
            prev = cout
        classes = shape("fc.weight")[0]
        spec = ArchSpec("cifar_resnet", tuple(stages), width, "basic", classes)
    elif vgg:
        idx = sorted(int(m["idx"]) for m in vgg)
        stages = [1]
        for a, b in zip(idx, idx[1:]):
            if b == a + 1:
                stages[-1] += 1
            elif b == a + 2:
                stages.append(1)
            else:
                raise EttError(
                    f"{where}: VGG layers jump from {a} to {b}; one pool position (no keys) is allowed between stages"
                )
        if idx[0] != 0:
            raise EttError(f"{where}: VGG layers must start at layers.0, found layers.{idx[0]}")
        width = shape("layers.0.conv.weight")[0]
        classes = shape("fc.weight")[0]
        spec = ArchSpec("cifar_vgg", tuple(stages), width, "conv", classes)
    else:
        sample = ", ".join(f"'{n}'" for n in sorted(names)[:3]) or "no tensors"
        raise EttError(f"{where}: parameter names match no known family: {_EXPECTED}; found {sample}")
    check_tensors(spec, shapes, where)
    return spec


def _refuse_variants(spec: ArchSpec, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Name torchvision's ResNet variants that share the plain layout's keys but not its shapes."""
    if spec.block != "bottleneck":
        return
    mid = spec.width
    conv2 = tuple(shapes.get("layer1.0.conv2.weight", ()))
    if len(conv2) == 4 and conv2[1] != conv2[0]:
        groups = conv2[0] // conv2[1] if conv2[1] else 0
        raise EttError(
            f"{where}: unsupported variant: grouped convolutions ('layer1.0.conv2.weight' has shape {list(conv2)}, "
            f"{groups} groups, as in ResNeXt); ett supports plain ResNets (torchvision resnet18 to resnet152)"
        )
    conv1 = tuple(shapes.get("layer1.0.conv1.weight", ()))
    if conv1 and conv1[0] != mid:
        raise EttError(
            f"{where}: unsupported variant: widened bottlenecks ('layer1.0.conv1.weight' has {conv1[0]} output "
            f"channels where a plain ResNet of stem width {spec.width} has {mid}, as in Wide ResNet); ett "
            "supports plain ResNets (torchvision resnet18 to resnet152)"
        )


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
