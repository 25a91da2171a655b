"""timm's ``ConvNeXt`` (v1 and v2): stem ``stem.{0,1}``, stages of blocks ``stages.{s}.blocks.{b}``
(``conv_dw``, ``norm``, ``mlp.fc1``, ``mlp.fc2``, and ``gamma`` with layer scale, ``mlp.grn`` in v2), the
downsampling ``stages.{s}.downsample`` fixed in place before each later stage, ``head.norm``, ``head.fc``.

The downsampling layer sits outside the blocks, so the blocks of a stage are all alike and none is fixed:
every block, the first included, may be replicated, moved or dropped (unlike a ResNet's downsampling block).
The standard depths are the block counts of timm's variants: 12 = atto/femto/pico [2, 2, 6, 2],
14 = nano [2, 2, 8, 2], 18 = tiny [3, 3, 9, 3], 36 = small/base/large/xlarge [3, 3, 27, 3].
"""

from __future__ import annotations

import re

from ettcli.arch import register
from ettcli.errors import EttError
from ettcli.families._pattern import PatternFamily

_BLOCK = re.compile(r"^stages\.\d+\.blocks\.\d+\.")
_OWN = re.compile(r"^stages\.\d+\.blocks\.\d+\.conv_dw\.weight$")
_DOWNSAMPLE = re.compile(r"^stages\.(?P<s>\d+)\.downsample\.")
_STANDARD = {12: (2, 2, 6, 2), 14: (2, 2, 8, 2), 18: (3, 3, 9, 3), 36: (3, 3, 27, 3)}


class TimmConvNeXt(PatternFamily):
    name = "timm_convnext"
    short = "convnext"
    unit = "block"
    default_width = 96
    standard = {"v1": _STANDARD, "v2": _STANDARD}
    default_block = "v1"
    depth_rule = "12 = atto/femto/pico [2, 2, 6, 2], 14 = nano [2, 2, 8, 2], 18 = tiny [3, 3, 9, 3], 36 = small+ [3, 3, 27, 3], or any stage list"
    pattern = "stages.{s}.blocks.{b}"
    head_keys = r"^(head|norm_pre)\."
    library_name = "timm ConvNeXt"
    signature = "stem.0.weight, stages.{s}.blocks.{b}.conv_dw.weight, head.fc.weight"
    signature_keys = (
        ("stem.0.weight", r"^stem\.0\.weight$"),
        ("stages.{s}.blocks.{b}.conv_dw.weight", r"^stages\.\d+\.blocks\.\d+\.conv_dw\.weight$"),
        ("stages.{s}.downsample.1.weight", r"^stages\.\d+\.downsample\.1\.weight$"),
        ("head.fc.weight", r"^head\.fc\.weight$"),
    )
    short_example = "convnext-36"
    dataset = "imagenet"
    rewind = "0it"
    imp_exclude = ("stem.0.weight", "head.fc.weight")

    def recognise(self, shapes):
        """The keys of ``stages.{s}.blocks.{b}``, where the blocks hold a depthwise ``conv_dw``."""
        if not any(_OWN.match(n) for n in shapes):
            return 0
        return sum(1 for n in shapes if _BLOCK.match(n))

    def between_stage(self, name, stage_ids):
        """``stages.{s}.downsample`` sits after the stage before ``s`` (stage 0's, where it has one, is stem)."""
        m = _DOWNSAMPLE.match(name)
        if m and int(m["s"]) in stage_ids and stage_ids.index(int(m["s"])) > 0:
            return stage_ids.index(int(m["s"])) - 1
        return None

    def width_of(self, shapes, layout):
        return int(shapes.get("stem.0.weight", (0,))[0])

    def block_of(self, shapes):
        return "v2" if any(".mlp.grn." in n for n in shapes) else "v1"

    def is_fixed(self, spec, stage, unit):
        return False  # the downsampling is outside the blocks

    def build(self, spec):
        """timm's ConvNeXt at the spec's stage lengths, its options read from the names and shapes present."""
        try:
            from timm.models.convnext import ConvNeXt
        except ImportError:
            raise EttError(f"{spec.name}: building a timm model needs timm (pip install timm)") from None
        p = spec.prefix
        shapes = {n[len(p) :]: t.shape for n, t in spec.tensors.items()}
        units = [{local: shape for local, shape, _ in tensors} for tensors in self.layout(spec).units]
        if "stem.0.weight" not in shapes or any("conv_dw.weight" not in u or "mlp.fc1.weight" not in u for u in units):
            raise EttError(
                f"{spec.name}: ett builds timm ConvNeXts with the patch stem and conv_dw/mlp blocks; load the "
                "ticket's tensors (Ticket.masked_state_dict()) into the model you built"
            )
        first = units[0]
        dims = tuple(u["conv_dw.weight"][0] for u in units)
        fc = shapes.get("head.fc.weight")
        return ConvNeXt(
            in_chans=shapes["stem.0.weight"][1],
            num_classes=fc[0] if fc else 0,
            depths=tuple(spec.stages),
            dims=dims,
            kernel_sizes=tuple(u["conv_dw.weight"][-1] for u in units),
            ls_init_value=1e-6 if "gamma" in first else None,  # the values come from the ticket
            patch_size=shapes["stem.0.weight"][-1],
            head_norm_first="norm_pre.weight" in shapes,
            conv_mlp=len(first["mlp.fc1.weight"]) == 4,
            conv_bias="conv_dw.bias" in first,
            use_grn=spec.block == "v2",
        )


register(TimmConvNeXt())
