"""open_lth's CIFAR ResNet: ``conv``, ``bn``, ``blocks.{i}`` numbered across stages, ``fc``.

3 stages of (N-2)/6 basic blocks; the first block of stages 2 and 3 carries a 1x1 projection shortcut
(``blocks.{i}.shortcut.{0,1}``). Stage boundaries are read from the shortcut keys and channel changes.
"""

from __future__ import annotations

import re

from ettcli.arch import ArchSpec, Family, UnitTensors, bn_tensors, register, shape_of
from ettcli.errors import EttError

_UNIT = re.compile(r"^blocks\.(?P<unit>\d+)\.")
_OWN = re.compile(r"^blocks\.\d+\.(conv[12]|bn[12]|shortcut\.[01])\.")  # what only this family's blocks hold


class CifarResNet(Family):
    name = "cifar_resnet"
    short = "resnet"
    unit = "block"
    default_width = 16
    standard = {"basic": {}}
    default_block = "basic"
    depth_rule = "6n+2: 8, 14, 20, 32, 44, 56, 110, ..."
    name_blocks = ("basic", "bottleneck")
    examples = ("cifar_resnet_20", "cifar_resnet_20_32", "cifar_resnet_s3-5-7")
    target_example = "cifar_resnet_56"
    short_example = "resnet-56"
    signature = "conv.weight, blocks.{i}.conv1.weight, fc.weight"
    signature_keys = (
        ("conv.weight", r"^conv\.weight$"),
        ("blocks.{i}.conv1.weight", r"^blocks\.\d+\.conv1\.weight$"),
        ("fc.weight", r"^fc\.weight$"),
    )
    dataset = "cifar10"
    rewind = "1000it"

    def depth(self, spec: ArchSpec) -> int:
        return 2 * sum(spec.stages) + 2

    def is_standard(self, spec: ArchSpec) -> bool:
        return len(spec.stages) == 3 and len(set(spec.stages)) == 1

    def check_block(self, block, depth, name):
        if block == "bottleneck":
            raise EttError(f"'{name}': CIFAR ResNets have basic blocks only")
        return "basic"

    def standard_stages(self, block, depth, name):
        if depth < 8 or (depth - 2) % 6:
            raise EttError(f"'{name}': a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), not {depth}")
        return ((depth - 2) // 6,) * 3

    def stage_channels(self, spec, s):
        return spec.width * 2**s

    def unit_prefix(self, spec, stage, unit):
        return f"blocks.{sum(spec.stages[:stage]) + unit}."

    def has_shortcut(self, spec, stage, unit):
        return unit == 0 and stage > 0

    def stem_tensors(self, spec):
        return [("conv.weight", (spec.width, 3, 3, 3), True), *bn_tensors("bn", spec.width)]

    def unit_tensors(self, spec, stage, unit) -> UnitTensors:
        cout = spec.stage_channels(stage)
        cin = cout if unit > 0 else spec.stage_channels(stage - 1) if stage > 0 else spec.width
        out = [("conv1.weight", (cout, cin, 3, 3), True), *bn_tensors("bn1", cout)]
        out += [("conv2.weight", (cout, cout, 3, 3), True), *bn_tensors("bn2", cout)]
        if spec.has_shortcut(stage, unit):
            out += [("shortcut.0.weight", (cout, cin, 1, 1), True), *bn_tensors("shortcut.1", cout)]
        return out

    def head_tensors(self, spec):
        last = spec.stage_channels(len(spec.stages) - 1)
        return [("fc.weight", (spec.num_classes, last), True), ("fc.bias", (spec.num_classes,), False)]

    def recognise(self, shapes):
        return sum(1 for n in shapes if _OWN.match(n))

    def infer(self, shapes, where):
        ids = sorted({int(m["unit"]) for m in map(_UNIT.match, shapes) if m})
        if ids != list(range(len(ids))):
            raise EttError(f"{where}: blocks are numbered {ids[:12]}...; expected 0..{len(ids) - 1} without gaps")
        stages: list[int] = []
        width = shape_of(shapes, "conv.weight", where)[0]
        prev = width
        for i in ids:
            cout = shape_of(shapes, f"blocks.{i}.conv1.weight", where)[0]
            if i == 0 or f"blocks.{i}.shortcut.0.weight" in shapes or cout != prev:
                stages.append(0)
            stages[-1] += 1
            prev = cout
        classes = shape_of(shapes, "fc.weight", where)[0]
        return ArchSpec(self.name, tuple(stages), width, "basic", classes)

    def build(self, spec):
        from ettcli.models import CifarResNet as Model

        return Model(spec)


register(CifarResNet())
