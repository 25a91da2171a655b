"""torchvision's ResNet layout: ``conv1``, ``bn1``, ``layer{s}.{b}``, ``layer{s}.0.downsample``, ``fc``.

Basic blocks (18, 26, 34) or bottlenecks (26, 50, 101, 152); unit 0 of a stage carries the downsampling
projection where the channels or the stride change. ResNeXt and Wide ResNet share the keys but not the
shapes, and are refused by name.
"""

from __future__ import annotations

import re

from ettcli.arch import ArchSpec, Family, UnitTensors, bn_tensors, register, shape_of
from ettcli.errors import EttError

_UNIT = re.compile(r"^layer(?P<stage>\d+)\.(?P<unit>\d+)\.")
_OWN = re.compile(r"^layer\d+\.\d+\.(conv[123]|bn[123]|downsample\.[01])\.")


class ImageNetResNet(Family):
    name = "imagenet_resnet"
    short = "resnet"
    unit = "block"
    default_width = 64
    standard = {
        "basic": {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3)},
        "bottleneck": {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)},
    }
    default_block = "basic"
    examples = ("imagenet_resnet_34", "imagenet_resnet_50")
    target_example = "imagenet_resnet_34"
    signature = "conv1.weight, layer{1-4}.{b}.conv1.weight, fc.weight"
    signature_keys = (
        ("conv1.weight", r"^conv1\.weight$"),
        ("layer{s}.{b}.conv1.weight", r"^layer\d+\.\d+\.conv1\.weight$"),
        ("fc.weight", r"^fc\.weight$"),
    )
    dataset = "imagenet"
    rewind = "5ep"

    def depth(self, spec):
        return (3 if spec.block == "bottleneck" else 2) * sum(spec.stages) + 2

    def block_in_name(self, spec):
        default = "basic"
        if spec.is_standard():
            default = "basic" if spec.depth in self.standard["basic"] else "bottleneck"
        return spec.block if spec.block != default else None

    def check_block(self, block, depth, name):
        if block is None and depth is not None:
            return "basic" if depth in self.standard["basic"] else "bottleneck"
        return block or self.default_block

    def stage_channels(self, spec, s):
        c = spec.width * 2**s
        return c * 4 if spec.block == "bottleneck" else c

    def unit_prefix(self, spec, stage, unit):
        return f"layer{stage + 1}.{unit}."

    def has_shortcut(self, spec, stage, unit):
        if unit != 0:
            return False
        return stage > 0 or spec.block == "bottleneck" or spec.width != spec.stage_channels(0)

    def stem_tensors(self, spec):
        return [("conv1.weight", (spec.width, 3, 7, 7), True), *bn_tensors("bn1", spec.width)]

    def unit_tensors(self, spec, stage, unit) -> UnitTensors:
        cout = spec.stage_channels(stage)
        cin = cout if unit > 0 else spec.stage_channels(stage - 1) if stage > 0 else spec.width
        out: UnitTensors = []
        if spec.block == "bottleneck":
            mid = spec.width * 2**stage
            out += [("conv1.weight", (mid, cin, 1, 1), True), *bn_tensors("bn1", mid)]
            out += [("conv2.weight", (mid, mid, 3, 3), True), *bn_tensors("bn2", mid)]
            out += [("conv3.weight", (cout, mid, 1, 1), True), *bn_tensors("bn3", cout)]
        else:
            out += [("conv1.weight", (cout, cin, 3, 3), True), *bn_tensors("bn1", cout)]
            out += [("conv2.weight", (cout, cout, 3, 3), True), *bn_tensors("bn2", cout)]
        if spec.has_shortcut(stage, unit):
            out += [("downsample.0.weight", (cout, cin, 1, 1), True), *bn_tensors("downsample.1", cout)]
        return out

    def head_tensors(self, spec):
        last = spec.stage_channels(len(spec.stages) - 1)
        return [("fc.weight", (spec.num_classes, last), True), ("fc.bias", (spec.num_classes,), False)]

    def recognise(self, shapes):
        return sum(1 for n in shapes if _OWN.match(n))

    def infer(self, shapes, where):
        per_stage: dict[int, set[int]] = {}
        for m in map(_UNIT.match, shapes):
            if m:
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
        width = shape_of(shapes, "conv1.weight", where)[0]
        classes = shape_of(shapes, "fc.weight", where)[0]
        spec = ArchSpec(self.name, tuple(stages), width, block, classes)
        _refuse_variants(spec, shapes, where)
        return spec

    def build(self, spec):
        from ettcli.models import ImageNetResNet as Model

        return Model(spec)


def _refuse_variants(spec: ArchSpec, shapes, where: str) -> None:
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


register(ImageNetResNet())
