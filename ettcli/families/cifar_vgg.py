"""open_lth's CIFAR VGG: ``layers.{i}.conv``, ``layers.{i}.bn``, ``fc``; a unit is one conv+BN layer.

5 stages split by max-pools; a pool takes a position in ``layers`` but has no keys, so stage boundaries
are the gaps in the numbering.
"""

from __future__ import annotations

import re

from ettcli.arch import ArchSpec, Family, UnitTensors, bn_tensors, register, shape_of
from ettcli.errors import EttError

_UNIT = re.compile(r"^layers\.(?P<idx>\d+)\.conv\.weight$")


class CifarVGG(Family):
    name = "cifar_vgg"
    short = "vgg"
    unit = "layer"
    default_width = 64
    standard = {"conv": {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}}
    default_block = "conv"
    name_blocks = ("basic", "bottleneck")
    examples = ("cifar_vgg_16",)
    target_example = "cifar_vgg_19"
    short_example = "vgg-19"
    signature = "layers.{i}.conv.weight, fc.weight"
    signature_keys = (("layers.{i}.conv.weight", r"^layers\.\d+\.conv\.weight$"), ("fc.weight", r"^fc\.weight$"))
    dataset = "cifar10"
    rewind = "200it"
    imp_exclude = ("fc.weight",)

    def depth(self, spec):
        return sum(spec.stages) + 3

    def check_block(self, block, depth, name):
        if block:
            raise EttError(f"'{name}': VGG names take no block type")
        return "conv"

    def stage_channels(self, spec, s):
        return spec.width * min(2**s, 8)

    def unit_prefix(self, spec, stage, unit):
        return f"layers.{sum(spec.stages[:stage]) + stage + unit}."

    def unit_tensors(self, spec, stage, unit) -> UnitTensors:
        cout = spec.stage_channels(stage)
        cin = cout if unit > 0 else spec.stage_channels(stage - 1) if stage > 0 else 3
        return [("conv.weight", (cout, cin, 3, 3), True), ("conv.bias", (cout,), False), *bn_tensors("bn", cout)]

    def head_tensors(self, spec):
        last = spec.stage_channels(len(spec.stages) - 1)
        return [("fc.weight", (spec.num_classes, last), True), ("fc.bias", (spec.num_classes,), False)]

    def recognise(self, shapes):
        return sum(1 for n in shapes if _UNIT.match(n))

    def infer(self, shapes, where):
        idx = sorted(int(m["idx"]) for m in map(_UNIT.match, shapes) if m)
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
        width = shape_of(shapes, "layers.0.conv.weight", where)[0]
        classes = shape_of(shapes, "fc.weight", where)[0]
        return ArchSpec(self.name, tuple(stages), width, "conv", classes)

    def build(self, spec):
        from ettcli.models import CifarVGG as Model

        return Model(spec)


register(CifarVGG())
