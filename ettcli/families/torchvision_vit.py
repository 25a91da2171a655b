"""torchvision's ``VisionTransformer``: ``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}`` (attention with a fused ``in_proj_weight``), ``encoder.ln``, ``heads.head``.

One stage of encoder layers; the layer count is free (vit_b and vit_l have 12 and 24). The head count is
not in the weights: the model is built with the count torchvision's own ViT of that width has (12 at 768,
16 at 1024 and at 1280, vit_h_14's head size being 80), and at another width with head size 64 and a
warning, unless the ticket states its count (``ett.heads``; see :mod:`ettcli.families._heads`).
"""

from __future__ import annotations

from ettcli.arch import register
from ettcli.errors import EttError
from ettcli.families._heads import heads_for
from ettcli.families._pattern import PatternFamily

HEADS = {768: (12,), 1024: (16,), 1280: (16,)}  # torchvision's vit_b_*, vit_l_*, vit_h_14


class TorchvisionViT(PatternFamily):
    name = "torchvision_vit"
    short = "vit"
    unit = "layer"
    default_width = 768
    pattern = "encoder.layers.encoder_layer_{i}"
    head_keys = r"^(encoder\.ln\.|heads\.)"
    library_name = "torchvision VisionTransformer"
    signature = "conv_proj.weight, encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight, heads.head.weight"
    signature_keys = (
        ("conv_proj.weight", r"^conv_proj\.weight$"),
        ("class_token", r"^class_token$"),
        (
            "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight",
            r"^encoder\.layers\.encoder_layer_\d+\.self_attention\.in_proj_weight$",
        ),
        ("heads.head.weight", r"^heads\.head\.weight$"),
    )
    short_example = "vit-24"
    dataset = "imagenet"
    rewind = "0it"
    imp_exclude = ("conv_proj.weight", "heads.head.weight")
    stated_heads = True

    def width_of(self, shapes, layout):
        return int(shapes.get("conv_proj.weight", (0,))[0])

    def build(self, spec):
        from torchvision.models.vision_transformer import VisionTransformer

        shapes = {n: t.shape for n, t in spec.tensors.items()}
        hidden, _, patch, _ = shapes[spec.prefix + "conv_proj.weight"]
        seq = shapes[spec.prefix + "encoder.pos_embedding"][1]
        side = round((seq - 1) ** 0.5)
        mlp = next(s[0] for n, s in shapes.items() if n.endswith(".mlp.0.weight"))
        heads = heads_for("torchvision", spec, HEADS)
        if side * side != seq - 1:
            raise EttError(f"{spec.name}: {seq} positions are not a square grid plus the class token")
        return VisionTransformer(
            side * patch, patch, sum(spec.stages), heads, hidden, mlp, num_classes=spec.num_classes
        )


register(TorchvisionViT())
