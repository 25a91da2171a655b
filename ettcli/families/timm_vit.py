"""timm's ``VisionTransformer`` and DeiT: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, blocks
``blocks.{i}`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, and where the model
has them ``ls1.gamma``, ``attn.q_norm``), ``norm`` or ``fc_norm``, ``head`` (and DeiT's ``head_dist``).

One stage of blocks; the block count is free (ViT-S/B have 12, ViT-L 24). The variants timm builds are read
from the names present: with or without a class token (``global_pool='avg'``), register tokens, DeiT's
distillation token, a learned position embedding or none, layer scale, q/k norm, a pre-norm. The head count
is not in the weights: the model is built with the q/k norm's head size where there is one, else with the
count timm's own ViTs of that width have, and a warning where they differ or none has that width, unless the
ticket states its count (``ett.heads``; see :mod:`ettcli.families._heads`).
"""

from __future__ import annotations

import re

from ettcli.arch import register
from ettcli.errors import EttError
from ettcli.families._heads import heads_for
from ettcli.families._pattern import PatternFamily

_BLOCK = re.compile(r"^blocks\.\d+\.")
_ATTN = re.compile(r"^blocks\.\d+\.attn\.")
# embed_dim -> num_heads of the ViTs timm 1.0 defines in timm/models/vision_transformer.py, the most common
# first (vit_base_patch16_gap_224 has 16 heads at 768; AIMv2 has 8 at 1024 and 12 at 1536)
HEADS = {
    64: (2,),
    96: (3,),
    192: (3,),
    256: (4,),
    320: (5,),
    384: (6,),
    512: (8,),
    640: (10,),
    768: (12, 16),
    832: (13,),
    896: (14,),
    1024: (16, 8),
    1152: (16,),
    1280: (16,),
    1408: (16,),
    1536: (24, 16, 12),
    1664: (16,),
    2048: (16,),
    3072: (24,),
}


class TimmViT(PatternFamily):
    name = "timm_vit"
    short = "vit"
    unit = "block"
    default_width = 768
    default_block = "vit"
    depth_rule = "the number of blocks"
    pattern = "blocks.{i}"
    head_keys = r"^(norm|fc_norm|head|head_dist|attn_pool)\."
    library_name = "timm VisionTransformer or DeiT"
    signature = "patch_embed.proj.weight, blocks.{i}.attn.qkv.weight, head.weight"
    signature_keys = (
        ("patch_embed.proj.weight", r"^patch_embed\.proj\.weight$"),
        ("blocks.{i}.attn.qkv.weight", r"^blocks\.\d+\.attn\.qkv\.weight$"),
        ("blocks.{i}.mlp.fc1.weight", r"^blocks\.\d+\.mlp\.fc1\.weight$"),
        ("head.weight", r"^head\.weight$"),
    )
    short_example = "vit-12"
    dataset = "imagenet"
    rewind = "0it"
    imp_exclude = ("patch_embed.proj.weight", "head.weight", "head_dist.weight")
    stated_heads = True

    def recognise(self, shapes):
        """The keys of ``blocks.{i}``, where the blocks hold attention and a patch embedding feeds them."""
        if "patch_embed.proj.weight" not in shapes or not any(_ATTN.match(n) for n in shapes):
            return 0
        return sum(1 for n in shapes if _BLOCK.match(n))

    def width_of(self, shapes, layout):
        return int(shapes.get("patch_embed.proj.weight", (0,))[0])

    def block_of(self, shapes):
        return "distilled" if "dist_token" in shapes else "vit"

    def build(self, spec):
        """timm's model at the spec's depth, its options read from the names present (see the module doc)."""
        try:
            from timm.models.deit import VisionTransformerDistilled
            from timm.models.vision_transformer import VisionTransformer
        except ImportError:
            raise EttError(f"{spec.name}: building a timm model needs timm (pip install timm)") from None
        p = spec.prefix
        shapes = {n[len(p) :]: t.shape for n, t in spec.tensors.items()}
        unit = {local: shape for local, shape, _ in self.layout(spec).units[0]}
        if "patch_embed.proj.weight" not in shapes or "mlp.fc1.weight" not in unit:
            raise EttError(
                f"{spec.name}: ett builds timm ViTs with a conv patch embedding and an fc1/fc2 MLP; load the "
                "ticket's tensors (Ticket.masked_state_dict()) into the model you built"
            )
        dim, chans, patch, _ = shapes["patch_embed.proj.weight"]
        cls = "cls_token" in shapes
        dist = "dist_token" in shapes
        regs = shapes["reg_token"][1] if "reg_token" in shapes else 0
        prefix = int(cls) + int(dist) + regs
        kwargs = {}
        if "pos_embed" in shapes:
            seq = shapes["pos_embed"][1]
            side = round((seq - prefix) ** 0.5)
            if prefix and side * side == seq - prefix:
                grid = side
            elif round(seq**0.5) ** 2 == seq:
                grid, kwargs["no_embed_class"] = round(seq**0.5), True
            else:
                raise EttError(f"{spec.name}: {seq} positions are not a square grid plus {prefix} prefix tokens")
        else:
            grid, kwargs["pos_embed"], kwargs["dynamic_img_size"] = 224 // patch, "none", True  # any image size
        if "attn.q_norm.weight" in unit:
            heads = dim // unit["attn.q_norm.weight"][0]
            kwargs["qk_norm"] = True
            if spec.heads and spec.heads != heads:
                raise EttError(
                    f"{spec.name}: ett.heads says {spec.heads} heads, but the q/k norm's size "
                    f"({unit['attn.q_norm.weight'][0]}) makes {heads}; fix or remove ett.heads"
                )
        else:
            heads = heads_for("timm", spec, HEADS)
        if "ls1.gamma" in unit:
            kwargs["init_values"] = 1e-5  # the values come from the ticket
        head = shapes.get("head.weight")
        kwargs.update(
            img_size=grid * patch,
            patch_size=patch,
            in_chans=chans,
            num_classes=head[0] if head else 0,
            embed_dim=dim,
            depth=sum(spec.stages),
            num_heads=heads,
            mlp_ratio=unit["mlp.fc1.weight"][0] / dim,
            qkv_bias="attn.qkv.bias" in unit,
            class_token=cls,
            reg_tokens=regs,
            pre_norm="norm_pre.weight" in shapes,
            final_norm="norm.weight" in shapes or "fc_norm.weight" in shapes,
            fc_norm="fc_norm.weight" in shapes,
            global_pool="map" if "attn_pool.latent" in shapes else "token" if cls else "avg",
        )
        return (VisionTransformerDistilled if dist else VisionTransformer)(**kwargs)


register(TimmViT())
