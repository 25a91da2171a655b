"""torchvision's ``SwinTransformer`` (v1 and v2): patch embedding ``features.0``, stages of blocks
``features.{1,3,5,7}.{b}``, patch merging ``features.{2,4,6}`` between them, ``norm``, ``head``.

Patch merging sits outside the blocks and stays in place, so every block of a stage but the first may be
replicated. Blocks alternate between plain and shifted windows by their position (odd blocks are shifted):
default plans keep each block's parity, and a mapping that moves a block to the other parity is warned
about (see :meth:`TorchvisionSwin.adjust_fill`, :meth:`TorchvisionSwin.plan_warnings`).
"""

from __future__ import annotations

import re

from ettcli.arch import register
from ettcli.families._pattern import PatternFamily


class TorchvisionSwin(PatternFamily):
    name = "torchvision_swin"
    short = "swin"
    unit = "block"
    default_width = 96
    standard = {"v1": {12: (2, 2, 6, 2), 24: (2, 2, 18, 2)}, "v2": {12: (2, 2, 6, 2), 24: (2, 2, 18, 2)}}
    default_block = "v1"
    depth_rule = "12 = swin_t [2, 2, 6, 2], 24 = swin_s/swin_b [2, 2, 18, 2], or any stage list"
    pattern = "features.{s}.{b}"
    head_keys = r"^(norm|head)\."
    library_name = "torchvision SwinTransformer"
    signature = "features.0.0.weight, features.{1,3,5,7}.{b}.attn.qkv.weight, head.weight"
    signature_keys = (
        ("features.0.0.weight", r"^features\.0\.0\.weight$"),
        ("features.{1,3,5,7}.{b}.attn.qkv.weight", r"^features\.[1357]\.\d+\.attn\.qkv\.weight$"),
        ("features.{2,4,6}.reduction.weight", r"^features\.[246]\.reduction\.weight$"),
        ("head.weight", r"^head\.weight$"),
    )
    short_example = "swin-24"
    dataset = "imagenet"
    rewind = "0it"
    imp_exclude = ("features.0.0.weight", "head.weight")

    _UNIT = re.compile(r"^features\.(?P<s>[1-9]\d*)\.(?P<b>\d+)\.(?P<local>.+)$")

    def unit_regex(self):
        return self._UNIT

    def recognise(self, shapes):
        units = [m for m in map(self._UNIT.match, shapes) if m]
        if not any(m["local"].startswith("attn.") for m in units):
            return 0
        return sum(1 for m in units if int(m["s"]) % 2)

    def between_stage(self, name, stage_ids):
        m = re.match(r"^features\.(\d+)\.", name)
        if m and int(m[1]) > 0 and int(m[1]) % 2 == 0 and int(m[1]) - 1 in stage_ids:
            return stage_ids.index(int(m[1]) - 1)
        return None

    def width_of(self, shapes, layout):
        return int(shapes.get("features.0.0.weight", (0,))[0])

    def block_of(self, shapes):
        return "v2" if any(".attn.cpb_mlp." in n for n in shapes) else "v1"

    def is_fixed(self, spec, stage, unit):
        return unit == 0

    def adjust_fill(self, source, target, stage, fill):
        """Keep each block's parity: a position gets the nearest block of the fill's choice with its parity."""
        out = list(fill)
        n = source.stages[stage]
        for j in range(1, len(out)):
            i = out[j]
            if i % 2 == j % 2:
                continue
            candidates = [c for c in range(1, n) if c % 2 == j % 2]
            if candidates:
                out[j] = min(candidates, key=lambda c: (abs(c - i), c))
        return tuple(out)

    def plan_warnings(self, plan):
        moved = []
        for s, row in enumerate(plan.fill):
            for j, i in enumerate(row):
                if i % 2 != j % 2:
                    moved.append(f"stage {s + 1} block {i} -> position {j}")
        if not moved:
            return []
        shown = "; ".join(moved[:4]) + (f"; ... ({len(moved)} in all)" if len(moved) > 4 else "")
        return [
            f"Swin blocks alternate plain and shifted windows by position, and the plan moves blocks to the other "
            f"parity ({shown}); a moved block runs with the other window shift than it was trained with"
        ]

    def build(self, spec):
        from torchvision.models import swin_transformer as sw

        shapes = {n: t.shape for n, t in spec.tensors.items()}
        p = spec.prefix
        embed, _, patch, _ = shapes[p + "features.0.0.weight"]
        v2 = spec.block == "v2"
        heads, window = [], 0
        for sid in self.layout(spec).stage_ids:
            if v2:
                heads.append(shapes[f"{p}features.{sid}.0.attn.logit_scale"][0])
                window = (shapes[f"{p}features.{sid}.0.attn.relative_coords_table"][1] + 1) // 2
            else:
                table = shapes[f"{p}features.{sid}.0.attn.relative_position_bias_table"]
                heads.append(table[1])
                window = round(table[0] ** 0.5 + 1) // 2
        kwargs = {}
        if v2:
            kwargs = {"block": sw.SwinTransformerBlockV2, "downsample_layer": sw.PatchMergingV2}
        return sw.SwinTransformer(
            patch_size=[patch, patch],
            embed_dim=embed,
            depths=list(spec.stages),
            num_heads=heads,
            window_size=[window, window],
            num_classes=spec.num_classes,
            **kwargs,
        )


register(TorchvisionSwin())
