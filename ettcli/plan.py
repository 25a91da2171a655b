"""Plans: which source unit fills which target position, stage by stage.

A :class:`Plan` is parsed once from the mapping grammar (compatible with ElasticLTH's ``block_mapping``) or
built by a preset, validated, and then used by every command: ``ett plan`` shows it, ``ett stretch`` and
``ett squeeze`` apply it (see :mod:`ettcli.transform`).

Grammar (docs/plans.md)::

    stage mapping   src:dst[,dst...];src:dst[,dst...];...     stage-local unit indices
    plan            stage|stage|...                            one stage mapping per stage
    plan            stage                                      the same mapping for every stage (only where
                                                               all stages have equal source and target lengths)

A source unit that is not listed is dropped; one listed with several positions is replicated. A valid plan
fills every target position exactly once, sends unit 0 of every stage (the stage's first unit) to position 0
and nowhere else, keeps indices in range, and copies only tensors of equal shapes. A family whose unit 0 is not
fixed (:meth:`~ettcli.arch.Family.is_fixed`, e.g. ConvNeXt, whose downsampling sits outside the blocks) frees
it: it may be replicated, moved or dropped, and the presets spread all the units of such a stage.

Presets (the registry :data:`PRESETS` is the single source of the CLI's choices and help): with ``n`` normal
units (all but unit 0) in a source stage and ``m`` in the target,

* stretch ``interpolate`` (default): unit ``i`` (1-based) gets ``m // n`` copies, one more for the first
  ``m % n`` units, each unit's copies side by side (B1 B1 B2 B2);
* stretch ``append``: the same copy counts, first copies of every unit, then the second copies (B1 B2 B1 B2);
* squeeze ``interleave`` (default): keep the first unit of each group that interpolating ``m`` units up to
  ``n`` would have made (the exact inverse of ``interpolate``);
* squeeze ``tail``: keep the first ``m`` normal units (drop the last ones);
* squeeze ``head``: keep the last ``m`` normal units (drops early units, known to hurt).

Worked example, CIFAR ResNet-20 -> ResNet-32 (3 stages of 3 -> 5 blocks)::

    >>> from ettcli.arch import parse_arch
    >>> src = parse_arch("cifar_resnet_20"); dst = parse_arch("resnet-32", like=src)
    >>> plan = build_plan(src, dst, "interpolate")

    Each stage has n = 2 normal blocks (1, 2) and needs m = 4 (positions 1..4): 4 // 2 = 2 copies each,
    4 % 2 = 0 extra. Block 0 stays at position 0. Interpolation lays the copies side by side:

    >>> plan.fill[0]           # source block of target positions 0..4 in stage 1
    (0, 1, 1, 2, 2)
    >>> str(plan)              # the same in every stage, so printed once without '|'
    '0:0;1:1,2;2:3,4'
    >>> str(build_plan(src, dst, "append"))
    '0:0;1:1,3;2:2,4'

    Parsing gives the same value back (``Plan.parse(str(plan), src, dst) == plan``), and squeezing with
    ``interleave`` maps ResNet-32 back to ResNet-20 with ``0:0;1:1;3:2``: the first block of each pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ettcli.arch import ArchSpec, parse_arch, parse_stages, states_width
from ettcli.errors import EttError, warn
from ettcli.registry import Registry

# --- presets ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named way to build a stage's fill from its source and target lengths (unit 0 excluded)."""

    name: str
    verb: str  # "stretch" or "squeeze"
    help: str
    normal_fill: Callable[[int, int], list[int]]  # (n source normal units, m target) -> 1-based source units
    default: bool = False


def _copies(n: int, m: int) -> list[int]:
    """Copies of each of n units that make m positions: m // n each, one more for the first m % n."""
    return [m // n + (1 if i < m % n else 0) for i in range(n)]


def _interpolate(n: int, m: int) -> list[int]:
    return [i + 1 for i, c in enumerate(_copies(n, m)) for _ in range(c)]


def _append(n: int, m: int) -> list[int]:
    copies = _copies(n, m)
    return [i + 1 for r in range(max(copies, default=0)) for i, c in enumerate(copies) if c > r]


def _middle(n: int, m: int) -> list[int]:
    """The last unit kept once at the end, the units between replicated in place (interpolated)."""
    if n < 2 or m == n:
        return _interpolate(n, m)
    return [*_interpolate(n - 1, m - 1), n]


def _interleave(n: int, m: int) -> list[int]:
    if m == 0:
        return []
    starts, pos = [], 1
    for c in _copies(m, n):  # the groups that interpolating m units up to n makes
        starts.append(pos)
        pos += c
    return starts


def _tail(n: int, m: int) -> list[int]:
    return list(range(1, m + 1))


def _head(n: int, m: int) -> list[int]:
    return list(range(n - m + 1, n + 1))


PRESETS: Registry[Preset] = Registry("preset")


def register_preset(preset: Preset) -> Preset:
    return PRESETS.register(preset.name, preset)


register_preset(
    Preset("interpolate", "stretch", "each unit's copies right after it (B1 B1 B2 B2)", _interpolate, default=True)
)
register_preset(
    Preset(
        "append",
        "stretch",
        "all first copies, then all second copies (B1 B2 B1 B2; progressive stacking)",
        _append,
    )
)
register_preset(
    Preset(
        "middle",
        "stretch",
        "keep the first and the last unit once, replicate the ones between in place (B1 B1 B2 B2 B3)",
        _middle,
    )
)
register_preset(
    Preset(
        "interleave",
        "squeeze",
        "keep the first unit of every group interpolation would make (inverse of interpolate)",
        _interleave,
        default=True,
    )
)
register_preset(
    Preset("tail", "squeeze", "keep the first units, drop the last ones (a Transformer's top layers)", _tail)
)
register_preset(Preset("head", "squeeze", "keep the last units, drop the first ones (known to hurt)", _head))


def presets_for(verb: str) -> dict[str, Preset]:
    """The presets of one verb, default first."""
    found = [p for p in PRESETS.values() if p.verb == verb]
    return {p.name: p for p in sorted(found, key=lambda p: not p.default)}


def default_preset(verb: str) -> str:
    return next(p.name for p in PRESETS.values() if p.verb == verb and p.default)


def preset_help(verb: str) -> str:
    """One line per preset of a verb, for --help."""
    return "; ".join(f"{p.name}: {p.help}" + (" (default)" if p.default else "") for p in presets_for(verb).values())


# --- the plan value ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Which source unit fills each target position, per stage.

    ``fill[s][j]`` is the stage-local index of the source unit copied to position ``j`` of stage ``s`` of
    the target. Stem, classifier and unit 0 of each stage are always copied as they are. ``preset`` names
    the preset that built the plan (``None`` for a parsed mapping). ``verb`` is "stretch" or "squeeze":
    given, or the preset's, or else the direction of the depths (:func:`direction`; ``None`` where some stages
    grow and others shrink). Neither takes part in equality.
    """

    source: ArchSpec
    target: ArchSpec
    fill: tuple[tuple[int, ...], ...]
    preset: str | None = field(default=None, compare=False)
    verb: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        src, dst = self.source, self.target
        if self.verb is None:
            verb = PRESETS[self.preset].verb if self.preset else direction(src, dst)
            object.__setattr__(self, "verb", verb)
        if len(self.fill) != len(dst.stages) or len(src.stages) != len(dst.stages):
            raise EttError(
                f"plan has {len(self.fill)} stage mappings; {src.name} has {len(src.stages)} stages and "
                f"{dst.name} {len(dst.stages)}"
            )
        for s, row in enumerate(self.fill):
            if len(row) != dst.stages[s]:
                raise EttError(f"stage {s + 1}: plan fills {len(row)} positions but {dst.name} has {dst.stages[s]}")
            for j, i in enumerate(row):
                if not 0 <= i < src.stages[s]:
                    raise EttError(f"stage {s + 1}: source unit {i} is out of range 0..{src.stages[s] - 1}")
                if (i == 0) != (j == 0) and src.is_fixed(s, 0):
                    raise EttError(f"stage {s + 1}: unit 0 must map to position 0 and only there (found {i}:{j})")
                _check_shapes(src, dst, s, i, j, f"{i}:{j}")

    # --- views ---------------------------------------------------------------------------------------------
    def targets(self, stage: int, unit: int) -> tuple[int, ...]:
        """Target positions that source unit ``unit`` of ``stage`` fills (empty if it is dropped)."""
        return tuple(j for j, i in enumerate(self.fill[stage]) if i == unit)

    def dropped(self, stage: int) -> list[int]:
        return [i for i in range(self.source.stages[stage]) if i not in self.fill[stage]]

    def replicated(self, stage: int) -> list[int]:
        return [i for i in range(self.source.stages[stage]) if self.fill[stage].count(i) > 1]

    def stage_mapping(self, stage: int) -> str:
        """One stage in the grammar, source units in increasing order: ``0:0;1:1,2;2:3,4``."""
        tokens = []
        for i in range(self.source.stages[stage]):
            dst = self.targets(stage, i)
            if dst:
                tokens.append(f"{i}:" + ",".join(map(str, dst)))
        return ";".join(tokens)

    @property
    def mapping(self) -> str:
        """The whole plan in the grammar; one stage mapping without '|' when every stage has the same one."""
        stages = [self.stage_mapping(s) for s in range(len(self.fill))]
        uniform = len(set(self.source.stages)) == 1 and len(set(self.target.stages)) == 1
        if uniform and len(set(stages)) == 1:
            return stages[0]
        return "|".join(stages)

    def __str__(self) -> str:
        return self.mapping

    def unit_sources(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(stage, target position) -> (source unit, copy number: 0 for the first copy, 1, 2, ...)."""
        out = {}
        for s, row in enumerate(self.fill):
            seen: dict[int, int] = {}
            for j, i in enumerate(row):
                out[(s, j)] = (i, seen.get(i, 0))
                seen[i] = seen.get(i, 0) + 1
        return out

    def tensor_sources(self) -> dict[str, tuple[str, int]]:
        """Every target tensor name -> (source tensor name, copy number), in the target's module order."""
        units = self.unit_sources()
        out: dict[str, tuple[str, int]] = {}
        for name, t in self.target.tensors.items():
            if t.role != "unit":
                local = name[len(self.target.prefix) :]
                out[name] = (self.source.prefix + local, 0)
                continue
            i, copy = units[(t.stage, t.unit)]
            out[name] = (self.source.unit_prefix(t.stage, i) + t.local, copy)
        return out

    # --- parsing -------------------------------------------------------------------------------------------
    @staticmethod
    def parse(text: str, source: ArchSpec, target: ArchSpec) -> Plan:
        """Parse a mapping string for ``source`` -> ``target``; errors name the stage, the token and the rule."""
        text = (text or "").strip()
        if not text:
            raise EttError("--mapping is empty: expected e.g. 0:0;1:1,2;2:3,4 (stages joined by '|')")
        n = len(target.stages)
        if len(source.stages) != n:
            raise EttError(f"{source.name} has {len(source.stages)} stages but {target.name} has {n}")
        if "|" in text:
            parts = text.split("|")
            if len(parts) != n:
                raise EttError(
                    f"mapping '{text}' has {len(parts)} stage mappings joined by '|' but {target.name} has {n} "
                    f"stages; give exactly {n}"
                )
        else:
            if len(set(source.stages)) > 1 or len(set(target.stages)) > 1:
                raise EttError(
                    f"mapping '{text}' has no '|', so it would apply to every stage, but the stages differ in "
                    f"length ({source.name} {list(source.stages)} -> {target.name} {list(target.stages)}); give "
                    f"{n} stage mappings joined by '|'"
                )
            parts = [text] * n
        fill = tuple(_parse_stage(part, s, source, target) for s, part in enumerate(parts))
        return Plan(source, target, fill)


_TOKEN = re.compile(r"^(\d+):(\d+(?:,\d+)*)$")


def _parse_stage(part: str, s: int, source: ArchSpec, target: ArchSpec) -> tuple[int, ...]:
    where = f"stage {s + 1}"
    n_src, n_dst = source.stages[s], target.stages[s]
    word = source.unit_word
    fixed = source.is_fixed(s, 0)  # unit 0 stays at position 0 (a family may free it)
    part = part.replace(" ", "")
    if not part:
        raise EttError(f"{where}: the stage mapping is empty; it needs at least '0:0'")
    filled: dict[int, tuple[int, str]] = {}
    listed: dict[int, str] = {}
    for token in part.split(";"):
        m = _TOKEN.match(token)
        if not m:
            raise EttError(
                f"{where}, token '{token}': malformed; expected src:dst[,dst...] with non-negative integers, "
                "tokens separated by ';' (e.g. 0:0;1:1,2)"
            )
        i, dsts = int(m[1]), [int(x) for x in m[2].split(",")]
        if i >= n_src:
            raise EttError(
                f"{where}, token '{token}': source {word} {i} is out of range; stage {s + 1} of {source.name} "
                f"has {word}s 0..{n_src - 1}"
            )
        if i in listed:
            raise EttError(
                f"{where}, token '{token}': source {word} {i} is listed twice (also in '{listed[i]}'); "
                f"give all its positions in one token"
            )
        listed[i] = token
        for j in dsts:
            if j >= n_dst:
                raise EttError(
                    f"{where}, token '{token}': target position {j} is out of range; stage {s + 1} of "
                    f"{target.name} has positions 0..{n_dst - 1}"
                )
            if j in filled:
                other, other_token = filled[j]
                raise EttError(
                    f"{where}, token '{token}': target position {j} is filled twice (also by {word} {other} in "
                    f"'{other_token}'); every position takes exactly one {word}"
                )
            if (i == 0) != (j == 0) and fixed:
                raise EttError(
                    f"{where}, token '{token}': {word} 0 ({_first_unit(source, s)}) must map to position 0 "
                    "and only there"
                )
            filled[j] = (i, token)
            _check_shapes(source, target, s, i, j, token)
    if 0 not in listed and fixed:
        raise EttError(f"{where}: {word} 0 is not mapped; it must map to position 0 ('0:0')")
    empty = [j for j in range(n_dst) if j not in filled]
    if empty:
        raise EttError(
            f"{where}: target position{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} "
            f"{'are' if len(empty) > 1 else 'is'} filled by no {word}; every position of the {n_dst} needs one"
        )
    return tuple(filled[j][0] for j in range(n_dst))


def _first_unit(spec: ArchSpec, s: int) -> str:
    """How messages name unit 0 of stage ``s``: downsampling only where it is."""
    return spec.fam.first_unit(spec, s)


def _check_shapes(source: ArchSpec, target: ArchSpec, s: int, i: int, j: int, token: str) -> None:
    src = {local: shape for local, shape, _ in source.unit_tensors(s, i)}
    dst = {local: shape for local, shape, _ in target.unit_tensors(s, j)}
    if src.keys() != dst.keys():
        missing = sorted(set(dst) ^ set(src))[0]
        raise EttError(
            f"stage {s + 1}, token '{token}': shape mismatch: {source.unit_word} {i} and position {j} do not "
            f"have the same tensors ('{missing}' is in only one of them)"
        )
    for local, shape in dst.items():
        if src[local] != shape:
            raise EttError(
                f"stage {s + 1}, token '{token}': shape mismatch: '{local}' of {source.unit_word} {i} is "
                f"{list(src[local])} but position {j} of {target.name} needs {list(shape)}"
            )


# --- building plans ---------------------------------------------------------------------------------------


def build_plan(source: ArchSpec, target: ArchSpec, preset: str) -> Plan:
    """The plan a preset makes for ``source`` -> ``target`` (every stage must go the preset's way)."""
    p = PRESETS.lookup(preset)
    check_direction(source, target, p.verb)
    fill = []
    for s, (a, b) in enumerate(zip(source.stages, target.stages)):
        if not source.is_fixed(s, 0):  # no unit held in place: the preset spreads all of them
            fill.append(source.fam.adjust_fill(source, target, s, tuple(u - 1 for u in p.normal_fill(a, b))))
            continue
        n, m = a - 1, b - 1
        if n == 0 and m > 0:
            raise EttError(
                f"stage {s + 1}: {source.name} has only {source.unit_word} 0 in this stage, so there is no "
                f"{source.unit_word} to replicate into {m} more position{'s' if m > 1 else ''}"
            )
        fill.append(source.fam.adjust_fill(source, target, s, (0, *p.normal_fill(n, m))))
    return Plan(source, target, tuple(fill), preset=preset)


def direction(source: ArchSpec, target: ArchSpec) -> str | None:
    """The verb the depths imply: "stretch" where no stage gets shorter (equal depths included), "squeeze"
    where no stage gets longer, ``None`` where some stages grow and others shrink."""
    pairs = list(zip(source.stages, target.stages))
    if all(b >= a for a, b in pairs):
        return "stretch"
    if all(b <= a for a, b in pairs):
        return "squeeze"
    return None


def check_direction(source: ArchSpec, target: ArchSpec, verb: str) -> None:
    """Refuse a stretch that shortens a stage or a squeeze that lengthens one."""
    for s, (a, b) in enumerate(zip(source.stages, target.stages)):
        if verb == "stretch" and b < a:
            raise EttError(
                f"stretch makes stages deeper, but stage {s + 1} would go from {a} to {b} "
                f"{source.unit_word}s ({source.name} -> {target.name}); use 'ett squeeze'"
            )
        if verb == "squeeze" and b > a:
            raise EttError(
                f"squeeze makes stages shallower, but stage {s + 1} would go from {a} to {b} "
                f"{source.unit_word}s ({source.name} -> {target.name}); use 'ett stretch'"
            )


def resolve_target(source: ArchSpec, to: str | ArchSpec | None = None, stages: str | tuple | None = None) -> ArchSpec:
    """The target spec from a name (canonical or short, e.g. ``resnet-56``) or explicit stage lengths.

    The target keeps the source's family, block type, number of stages, width (unless a canonical name
    states another, which is refused), classes and key prefix.
    """
    if to is None and stages is None:
        raise EttError("name the target: --to NAME (e.g. resnet-56, cifar_resnet_56) or --stages 5,5,5")
    if to is not None and stages is not None:
        raise EttError("give the target either by --to or by --stages, not both")
    if stages is not None:
        lengths = parse_stages(stages) if isinstance(stages, str) else tuple(int(x) for x in stages)
        if not lengths or any(n < 1 for n in lengths):
            raise EttError(f"--stages {list(lengths)}: every stage needs at least one unit")
        if len(lengths) != len(source.stages):
            raise EttError(
                f"--stages gives {len(lengths)} stages but {source.name} has {len(source.stages)}; a transform "
                "keeps the number of stages"
            )
        return source.with_stages(lengths)
    explicit_width = False
    if isinstance(to, ArchSpec):
        target = to
        explicit_width = True
    else:
        target = parse_arch(to, like=source)
        explicit_width = states_width(to)
    if target.family != source.family:
        raise EttError(
            f"cannot transform {source.name} (family {source.family}) into {target.name} (family "
            f"{target.family}); a transform keeps the family"
        )
    if target.block != source.block:
        raise EttError(
            f"{target.name} has {target.block} units but {source.name} has {source.block} units; a transform keeps "
            "the unit type"
        )
    if len(target.stages) != len(source.stages):
        raise EttError(
            f"{target.name} has {len(target.stages)} stages but {source.name} has {len(source.stages)}; a "
            "transform keeps the number of stages"
        )
    if target.width != source.width and explicit_width:
        raise EttError(
            f"{target.name} has width {target.width} but {source.name} has width {source.width}; a transform "
            f"keeps the width (the target's width follows the source: leave it out of the name)"
        )
    return source.with_stages(target.stages)


def make_plan(
    source,
    to: str | ArchSpec | None = None,
    *,
    verb: str | None = None,
    order: str | None = None,
    drop: str | None = None,
    mapping: str | None = None,
    stages: str | tuple | None = None,
) -> Plan:
    """Resolve a target and build or parse the plan from ``source`` (an ArchSpec, a Ticket or a path).

    ``verb`` ("stretch" or "squeeze") restricts the direction; without it the direction follows the depths
    (every stage longer or equal: stretch; shorter or equal: squeeze; mixed: only ``mapping`` works).
    ``order`` names a stretch preset, ``drop`` a squeeze preset; ``mapping`` gives the plan in the grammar
    instead. Example: ``make_plan("r20.safetensors", "resnet-56", order="append")``.
    """
    spec = _spec_of(source)
    target = resolve_target(spec, to, stages)
    if mapping is not None and (order is not None or drop is not None):
        raise EttError("give --mapping or a preset (--order / --drop), not both")
    if order is not None and drop is not None:
        raise EttError("give --order (stretch) or --drop (squeeze), not both")
    for name, option, want in ((order, "--order", "stretch"), (drop, "--drop", "squeeze")):
        if name is not None:
            if name not in PRESETS or PRESETS[name].verb != want:
                raise EttError(f"{option} '{name}' is not a {want} preset; choose from {', '.join(presets_for(want))}")
            if verb is not None and verb != want:
                raise EttError(f"{option} is for {want}, not {verb}")
    if verb is None:
        verb = "stretch" if order is not None else "squeeze" if drop is not None else direction(spec, target)
    if verb is not None:
        check_direction(spec, target, verb)
    if mapping is not None:
        plan = replace(Plan.parse(mapping, spec, target), verb=verb)
    elif verb is None:
        raise EttError(
            f"{spec.name} -> {target.name} lengthens some stages and shortens others; give the plan with --mapping"
        )
    else:
        plan = replace(build_plan(spec, target, order or drop or default_preset(verb)), verb=verb)
    _warn_if_surprising(plan)
    return plan


def _warn_if_surprising(plan: Plan) -> None:
    """Accepted but probably not meant: an identity copy, a stretch that drops units, or what the family warns of."""
    for message in plan.source.fam.plan_warnings(plan):
        warn(message)
    if plan.target.stages == plan.source.stages and all(row == tuple(range(len(row))) for row in plan.fill):
        warn(
            f"the target {plan.target.name} is the source's own depth: the output is a copy of the ticket "
            "(every unit in its place)"
        )
    if plan.verb == "stretch":
        dropped = [
            f"stage {s + 1} {plan.source.unit_word} {', '.join(map(str, plan.dropped(s)))}"
            for s in range(len(plan.fill))
            if plan.dropped(s)
        ]
        if dropped:
            warn(
                f"the stretch drops {'; '.join(dropped)} (mapping {plan.mapping}): their weights and masks are "
                "not in the output; list every unit in the mapping to keep it"
            )


def _spec_of(source) -> ArchSpec:
    if isinstance(source, ArchSpec):
        return source
    if hasattr(source, "arch"):
        return source.arch
    from ettcli.ticket import read_ticket

    return read_ticket(source).arch
