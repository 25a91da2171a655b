"""Families whose units are found by a key pattern and whose shapes are read from the state dict itself.

A Transformer's layers are all alike, so its family need not compute shapes from a few numbers the way the
ResNets do: the units are the keys under a pattern such as ``encoder.layers.encoder_layer_{i}`` (``{i}``
numbers units across the network, ``{s}`` and ``{b}`` number stages and units within a stage), the units of
a stage must have the same tensor names and shapes, and the rest of the state dict is stem, head, or fixed
between two stages, copied unchanged. The spec carries this :class:`Layout`, so a target of another depth has
exactly the keys and shapes of the same library's model built at that depth.

:class:`PatternFamily` is the base of such families (torchvision's ViT and Swin, and ``--units PATTERN`` for
any other network); a subclass names its pattern and its head keys, and how to build its model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ettcli.arch import ArchSpec, Family, UnitTensors
from ettcli.errors import EttError

Tensors = tuple[tuple[str, tuple[int, ...], bool], ...]

_FIELD = re.compile(r"\{(\w*)\}")


def compile_pattern(pattern: str, where: str = "--units") -> re.Pattern:
    """``encoder.block.{i}`` -> a regex matching every key inside one unit, with groups ``i`` or ``s`` and ``b``."""
    text = pattern.strip().rstrip(".")
    fields = _FIELD.findall(text)
    bad = [f for f in fields if f not in ("i", "s", "b")]
    if bad or not text:
        raise EttError(
            f"{where} '{pattern}': unknown field '{{{bad[0] if bad else ''}}}'; a unit pattern names the unit index "
            "with {i} (counted across the network) or the stage and the unit with {s} and {b}, e.g. "
            "'encoder.block.{i}' or 'stages.{s}.blocks.{b}'"
        )
    if sorted(fields) not in (["i"], ["b", "s"]):
        raise EttError(
            f"{where} '{pattern}': give {{i}} alone, or {{s}} and {{b}} once each (found "
            f"{', '.join('{' + f + '}' for f in fields) or 'no field'}), e.g. 'encoder.block.{{i}}' or 'stages.{{s}}.blocks.{{b}}'"
        )
    regex = ""
    pos = 0
    for m in _FIELD.finditer(text):
        regex += re.escape(text[pos : m.start()]) + rf"(?P<{m[1]}>\d+)"
        pos = m.end()
    regex += re.escape(text[pos:])
    return re.compile(rf"^{regex}\.(?P<local>.+)$")


@dataclass(frozen=True)
class Layout:
    """What a pattern family reads from a state dict: the tensors outside the units and one unit per stage."""

    pattern: str  # e.g. "features.{s}.{b}" (no trailing dot)
    stage_ids: tuple[int, ...]  # the {s} value of each stage ((0,) for {i})
    stem: Tensors
    units: tuple[Tensors, ...]  # per stage: (local name, shape, prunable) of every tensor of one unit
    between: tuple[Tensors, ...]  # per stage: tensors fixed in place after it
    head: Tensors


class PatternFamily(Family):
    """A family of repeated units found by :attr:`pattern`; shapes come from the ticket (see the module doc).

    Subclasses set ``pattern`` (or override :meth:`unit_regex`), ``head_keys`` (a regex over full names:
    the head; other non-unit keys are the stem, or fixed between stages where :meth:`between_stage` says
    so), and may override :meth:`width_of`, :meth:`prunable` and :meth:`build`. Prunable: weight matrices
    and conv kernels (names ending in ``weight``, two or more dimensions); LayerNorm, biases, position and
    class tokens and relative-position tables never are. The prunable stem and head tensors (embeddings,
    patch embedding, classifier) are left dense by default (:meth:`left_dense`).
    """

    pattern: str = ""
    head_keys: str = r"^(head|heads|fc|classifier|norm|ln_f|lm_head|pooler)\b"
    unit = "layer"
    default_width = 0
    depth_rule = "the number of layers"

    # --- naming ---------------------------------------------------------------------------------------
    def is_standard(self, spec):
        return len(spec.stages) == 1 or spec.stages in self.standard.get(spec.block, {}).values()

    def canonical_name(self, spec):
        stages = spec.stages
        table = self.standard.get(spec.block, {})
        depth = next((d for d, st in table.items() if st == stages), None)
        core = str(sum(stages)) if len(stages) == 1 else str(depth) if depth else "s" + "-".join(map(str, stages))
        parts = [self.name, core]
        if spec.block and spec.block != self.default_block:
            parts.append(spec.block)
        if spec.width != self.default_width:
            parts.append(str(spec.width))
        return "_".join(parts)

    def names_help(self):
        return f"{self.name}_N (N = {self.depth_rule}; read from a {self.library_name} state dict)"

    library_name = "model's"

    def parse_name(self, text, like, num_classes):
        m = re.match(rf"^{re.escape(self.name)}_(?:(?P<depth>\d+)|s(?P<stages>\d+(?:-\d+)*))(?:_\w+)?$", text)
        if not m:
            return None
        if like is None or like.family != self.name:
            raise EttError(
                f"'{text}': a {self.name} is read from its state dict (its widths are not in the name); name it "
                f"relative to a source ticket of this family, or give --stages"
            )
        if m["stages"]:
            return replace(like, stages=tuple(int(x) for x in m["stages"].split("-")))
        return self.parse_short(int(m["depth"]), like, text)

    def parse_short(self, depth, like, name):
        if len(like.stages) == 1:
            if depth < 1:
                raise EttError(f"'{name}': a {self.name} needs at least one {self.unit}")
            return replace(like, stages=(depth,))
        table = self.standard.get(like.block, {})
        if depth not in table:
            known = ", ".join(map(str, sorted(table))) or "none"
            raise EttError(
                f"'{name}': no standard {self.name} of depth {depth} (known: {known}); give the {self.unit}s per "
                f"stage with --stages, e.g. --stages {','.join(map(str, like.stages))}"
            )
        return replace(like, stages=table[depth])

    # --- structure ------------------------------------------------------------------------------------
    @staticmethod
    def layout(spec: ArchSpec) -> Layout:
        return spec.extra

    def unit_prefix(self, spec, stage, unit):
        lay = self.layout(spec)
        i = sum(spec.stages[:stage]) + unit
        return lay.pattern.format(i=i, s=lay.stage_ids[stage], b=unit) + "."

    def stem_tensors(self, spec):
        return list(self.layout(spec).stem)

    def unit_tensors(self, spec, stage, unit) -> UnitTensors:
        return list(self.layout(spec).units[stage])

    def between_tensors(self, spec, stage):
        return list(self.layout(spec).between[stage])

    def head_tensors(self, spec):
        return list(self.layout(spec).head)

    def left_dense(self, spec: ArchSpec) -> tuple[str, ...]:
        lay = self.layout(spec)
        return tuple(spec.prefix + n for n, _, p in (*lay.stem, *lay.head) if p)

    def prunable(self, name: str, shape: tuple[int, ...]) -> bool:
        leaf = name.rsplit(".", 1)[-1]
        return len(shape) >= 2 and leaf.endswith("weight") and "position" not in name and "token" not in leaf

    # --- recognition ----------------------------------------------------------------------------------
    def unit_regex(self) -> re.Pattern:
        return compile_pattern(self.pattern, self.name)

    def recognise(self, shapes):
        regex = self.unit_regex()
        return sum(1 for n in shapes if regex.match(n))

    def between_stage(self, name: str, stage_ids: tuple[int, ...]) -> int | None:
        """The stage after which a non-unit tensor sits (None: stem or head)."""
        return None

    def width_of(self, shapes: Mapping[str, tuple[int, ...]], layout: Layout) -> int:
        """The width the canonical name shows (the first unit's first weight's last dimension by default)."""
        for _, shape, _ in layout.units[0]:
            if len(shape) >= 2:
                return int(shape[-1])
        return 0

    def classes_of(self, shapes: Mapping[str, tuple[int, ...]], layout: Layout) -> int:
        weights = [shape for n, shape, _ in layout.head if n.endswith("weight") and len(shape) == 2]
        return int(weights[-1][0]) if weights else 0

    def block_of(self, shapes: Mapping[str, tuple[int, ...]]) -> str:
        return self.default_block

    def infer(self, shapes, where):
        regex = self.unit_regex()
        found: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}
        outside: dict[str, tuple[int, ...]] = {}
        for name, shape in shapes.items():
            m = regex.match(name)
            if not m:
                outside[name] = tuple(shape)
                continue
            key = (int(m["s"]), int(m["b"])) if "s" in regex.groupindex else (0, int(m["i"]))
            found.setdefault(key, {})[m["local"]] = tuple(shape)
        if not found:
            sample = ", ".join(f"'{n}'" for n in sorted(shapes)[:3]) or "no tensors"
            raise EttError(f"{where}: no key matches the unit pattern '{self.pattern}' (keys such as {sample})")
        stage_ids = tuple(sorted({s for s, _ in found}))
        stages, units = [], []
        for k, sid in enumerate(stage_ids):
            ids = sorted(b for s, b in found if s == sid)
            if ids != list(range(len(ids))):
                where_ids = ", ".join(map(str, ids[:12]))
                raise EttError(
                    f"{where}: the {self.unit}s of stage {k + 1} ('{self._show(sid)}') are numbered {where_ids}; "
                    f"expected 0..{len(ids) - 1} without gaps"
                )
            first = found[(sid, 0)]
            for b in ids[1:]:
                self._check_alike(first, found[(sid, b)], k, sid, b, where)
            stages.append(len(ids))
            prefix = self._show(sid, 0)
            units.append(tuple((local, shape, self.prunable(prefix + local, shape)) for local, shape in first.items()))
        stem, head, between = [], [], [[] for _ in stage_ids]
        head_re = re.compile(self.head_keys)
        for name, shape in outside.items():
            entry = (name, shape, self.prunable(name, shape))
            after = self.between_stage(name, stage_ids)
            if after is not None:
                between[after].append(entry)
            elif head_re.search(name):
                head.append(entry)
            else:
                stem.append(entry)
        layout = Layout(
            self.pattern.strip().rstrip("."),
            stage_ids,
            tuple(stem),
            tuple(units),
            tuple(tuple(b) for b in between),
            tuple(head),
        )
        return ArchSpec(
            self.name,
            tuple(stages),
            self.width_of(shapes, layout),
            self.block_of(shapes),
            self.classes_of(shapes, layout),
            "",
            layout,
        )

    def _show(self, sid: int, b: int | None = None) -> str:
        pat = self.pattern.strip().rstrip(".")
        if b is None:
            return pat.replace("{s}", str(sid)) if "{s}" in pat else pat
        return pat.format(s=sid, b=b, i=b)

    def _check_alike(self, first, other, k, sid, b, where):
        """Refuse a unit whose tensor names or shapes differ from the first unit of its stage."""
        name = self._show(sid, b)
        ref = self._show(sid, 0)
        for local, shape in first.items():
            if local not in other:
                raise EttError(
                    f"{where}: {self.unit} '{name}' has no '{local}', which '{ref}' has; the {self.unit}s of a "
                    "stage must have the same tensors (check the unit pattern)"
                )
            if other[local] != shape:
                raise EttError(
                    f"{where}: '{name}.{local}' has shape {list(other[local])} but '{ref}.{local}' has "
                    f"{list(shape)}; the {self.unit}s of a stage must have the same shapes"
                )
        extra = [local for local in other if local not in first]
        if extra:
            raise EttError(
                f"{where}: '{name}.{extra[0]}' has no counterpart in '{ref}'; the {self.unit}s of a stage must "
                "have the same tensors (check the unit pattern)"
            )

    init_name = "the defining library's own (its constructor), seeded"

    def init(self, model) -> None:
        """The defining library's own initialisation (done by its constructor)."""
