"""The CIFAR ViT: torchvision's ``VisionTransformer`` on 32x32 images with 4x4 patches, trainable by ``ett``.

A ticket of it is a torchvision ViT state dict (``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}.*``, ``encoder.ln``, ``heads.head``), so everything the torchvision ViT
family does (inference, plans, stretch and squeeze, pruning) holds for it; it is recognised by its 4x4 patch
embedding and its 8x8 grid of positions plus the class token (65), and it adds what training needs:

- names: ``cifar_vit_N`` is N layers at width 256, the ViT-Lite-6/4 shape of Hassani et al. 2021
  (``cifar_vit_6``: 6 layers, width 256, 4 heads, MLP ratio 2); ``cifar_vit_N_W`` another width
  (``cifar_vit_4_64``, a narrow network for CPUs). The MLP is 2x the width. The head count is not in the
  weights, so it follows from the width: 4 heads up to width 256 (ViT-Lite, CCT-7), head dimension 64 above
  it (CCT-14's 6 heads at 384, ViT-B's 12 at 768), unless a ticket states another (``ett.heads``);
- initialisation: torchvision's own (its constructor's), seeded, so ``ett init cifar_vit_6 --seed S`` equals
  ``torch.manual_seed(S); VisionTransformer(32, 4, 6, 4, 256, 512)``;
- training defaults: CIFAR-10 with the ``vit`` recipe (AdamW, warmup and cosine decay, label smoothing;
  :mod:`ettcli.recipe`), and a late IMP rewind step (see :attr:`CifarViT.rewind`).
"""

from __future__ import annotations

import re
from dataclasses import replace

from ettcli.arch import register
from ettcli.errors import EttError
from ettcli.families.torchvision_vit import TorchvisionViT

IMAGE = 32
PATCH = 4
MLP_RATIO = 2


def heads_for(width: int) -> int:
    """4 heads up to width 256, then head dimension 64 (ViT-Lite/CCT-7 at 256, CCT-14 at 384, ViT-B at 768)."""
    if width <= 256:
        if width % 4:
            raise EttError(f"cifar_vit width {width}: must be a multiple of 4 (4 attention heads)")
        return 4
    if width % 64:
        raise EttError(f"cifar_vit width {width}: above 256 it must be a multiple of 64 (head dimension 64)")
    return width // 64


class CifarViT(TorchvisionViT):
    name = "cifar_vit"
    unit = "layer"
    default_width = 256
    depth_rule = "the number of layers; width 256 (ViT-Lite-6/4 at N = 6), _W for another width"
    library_name = "torchvision VisionTransformer on 32x32 images, patch 4,"
    examples = ("cifar_vit_6", "cifar_vit_4_64")
    target_example = "cifar_vit_8"
    short_example = "vit-8"
    dataset = "cifar10"
    recipe = "vit"
    # Late rewinding: Transformers lose their tickets when rewound to initialisation (Brix et al. 2020,
    # "Successfully applying the stabilized lottery ticket hypothesis to the Transformer architecture").
    # 2 epochs is 1% of the 200-epoch recipe (782 iterations at batch 128), the fraction open_lth's 1000
    # iterations are of a CIFAR ResNet's 160 epochs; IMP takes --rewind to choose another.
    rewind = "2ep"
    init_name = "torchvision VisionTransformer (its constructor), seeded"

    def recognise(self, shapes):
        score = super().recognise(shapes)
        proj = tuple(shapes.get("conv_proj.weight", ()))
        pos = tuple(shapes.get("encoder.pos_embedding", ()))
        if score and proj[1:] == (3, PATCH, PATCH) and len(pos) == 3 and pos[1] == (IMAGE // PATCH) ** 2 + 1:
            return score + 1  # ahead of the general torchvision ViT, whose names these are
        return 0

    def names_help(self):
        return f"{self.name}_N (N = {self.depth_rule})"

    def parse_name(self, text, like, num_classes):
        m = _NAME.match(text)
        if not m:
            return None
        depth, width = int(m["depth"]), int(m["width"] or self.default_width)
        if depth < 1:
            raise EttError(f"'{text}': a {self.name} needs at least one layer")
        if width < 1:
            raise EttError(f"'{text}': width must be positive")
        heads_for(width)
        classes = num_classes if num_classes is not None else (like.num_classes if like else 10)
        if classes < 1:
            raise EttError(f"'{text}': a classifier needs at least 1 output, not {classes} (--num-classes)")
        spec = self.infer(vit_shapes(depth, width, classes), text)
        same = like is not None and like.family == self.name
        return replace(
            spec, prefix=like.prefix if same else "", heads=like.heads if same and like.width == width else None
        )

    def build(self, spec):
        from torchvision.models.vision_transformer import VisionTransformer

        width = spec.width
        return VisionTransformer(
            IMAGE,
            PATCH,
            sum(spec.stages),
            spec.heads or heads_for(width),
            width,
            self._mlp(spec),
            num_classes=spec.num_classes,
        )

    def _mlp(self, spec) -> int:
        return next(shape[0] for local, shape, _ in self.layout(spec).units[0] if local == "mlp.0.weight")


def vit_shapes(depth: int, width: int, classes: int) -> dict[str, tuple[int, ...]]:
    """torchvision's ``VisionTransformer(32, 4, depth, heads, width, 2 * width)`` state dict shapes, in its order."""
    d, m, seq = width, MLP_RATIO * width, (IMAGE // PATCH) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "class_token": (1, 1, d),
        "conv_proj.weight": (d, 3, PATCH, PATCH),
        "conv_proj.bias": (d,),
        "encoder.pos_embedding": (1, seq, d),
    }
    for i in range(depth):
        p = f"encoder.layers.encoder_layer_{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "self_attention.in_proj_weight": (3 * d, d),
                p + "self_attention.in_proj_bias": (3 * d,),
                p + "self_attention.out_proj.weight": (d, d),
                p + "self_attention.out_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.0.weight": (m, d),
                p + "mlp.0.bias": (m,),
                p + "mlp.3.weight": (d, m),
                p + "mlp.3.bias": (d,),
            }
        )
    shapes.update(
        {
            "encoder.ln.weight": (d,),
            "encoder.ln.bias": (d,),
            "heads.head.weight": (classes, d),
            "heads.head.bias": (classes,),
        }
    )
    return shapes


_NAME = re.compile(r"^cifar_vit_(?P<depth>\d+)(?:_(?P<width>\d+))?$")

register(CifarViT())
