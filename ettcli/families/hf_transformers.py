"""Hugging Face transformers models as families: BERT, ViT, GPT-2 and LLaMA, read from their own state dicts.

Each family lists the unit patterns its models use, with and without the task model's prefix, in the
names of transformers 4 and 5 (``vit.encoder.layer.{i}`` became ``vit.layers.{i}``), and recognises its
units by what they hold rather than by a fixed list of keys:

========  ======================================================  ===============================================
family    units                                                   recognised by (inside a unit)
========  ======================================================  ===============================================
hf_bert   ``bert.encoder.layer.{i}``, ``encoder.layer.{i}``        ``attention.self.query`` (or ``attention.q_proj``)
                                                                  and ``intermediate.dense``
hf_vit    ``vit.layers.{i}``, ``vit.encoder.layer.{i}``, and        ``layernorm_before``
          both without ``vit.``
hf_gpt2   ``transformer.h.{i}``, ``h.{i}``                        ``attn.c_attn`` (a ``Conv1D``: weight in x out)
hf_llama  ``model.layers.{i}``, ``layers.{i}``                    ``self_attn.q_proj`` and ``mlp.gate_proj``
========  ======================================================  ===============================================

One stage of layers, the first kept in place by default plans, the others replicated or dropped. Stem
(embeddings) and head (pooler, classifier, LM head, final norm) are copied unchanged. A tied LM head
(GPT-2's ``lm_head``, BERT's ``cls.predictions.decoder``) is what the state dict holds: present in a
``state_dict()``, absent from files written by ``save_pretrained``; the output has the same keys as its
source. Prunable, after BERT-Tickets (Chen et al. 2020): the weight matrices inside each layer (attention
and MLP, GPT-2's ``Conv1D`` included); embeddings, pooler and heads are prunable but left dense by default;
LayerNorm, biases, position embeddings and the class token never are.

:attr:`HFFamily.layers_field` names the config field that holds the layer count, for writing a model folder
(:mod:`ettcli.hf`).
"""

from __future__ import annotations

import copy
import re

from ettcli.arch import register
from ettcli.errors import EttError
from ettcli.families._pattern import PatternFamily, compile_pattern


class HFFamily(PatternFamily):
    """A transformers model: candidate unit ``patterns`` and the locals a unit must hold (``unit_holds``)."""

    patterns: tuple[str, ...] = ()
    unit_holds: tuple[str, ...] = ()  # regexes over a unit's local names; every one must match some tensor
    width_local: str = ""  # a unit tensor whose first dimension is the hidden size
    layers_field = "num_hidden_layers"
    unit = "layer"
    library_name = "transformers"
    dataset = "cifar10"
    rewind = "0it"

    def _pattern_of(self, shapes) -> tuple[str, int]:
        """The candidate pattern with the most keys in units that hold what this family's units hold."""
        best = ("", 0)
        holds = [re.compile(h) for h in self.unit_holds]
        for pattern in self.patterns:
            regex = compile_pattern(pattern, self.name)
            units: dict[str, list[str]] = {}
            for name in shapes:
                m = regex.match(name)
                if m:
                    units.setdefault(m["i"], []).append(m["local"])
            if not units or not all(any(h.match(local) for local in units[min(units, key=int)]) for h in holds):
                continue
            count = sum(map(len, units.values()))
            if count > best[1]:
                best = (pattern, count)
        return best

    def recognise(self, shapes):
        return self._pattern_of(shapes)[1]

    def infer(self, shapes, where):
        pattern, _ = self._pattern_of(shapes)
        bound = copy.copy(self)
        bound.pattern = pattern or self.patterns[0]
        return PatternFamily.infer(bound, shapes, where)

    def width_of(self, shapes, layout):
        local = dict((n, s) for n, s, _ in layout.units[0])
        return int(local.get(self.width_local, (0,))[0])

    def is_standard(self, spec):
        return True

    def build(self, spec):
        raise EttError(
            f"{spec.name}: build the model with transformers from its config (AutoModel.from_pretrained on a "
            "folder that ett stretch/squeeze --hf-folder wrote), or load Ticket.masked_state_dict() into it"
        )


class HFBert(HFFamily):
    name = "hf_bert"
    short = "bert"
    default_width = 768
    patterns = ("bert.encoder.layer.{i}", "encoder.layer.{i}")
    unit_holds = (r"^attention\.(self\.query|q_proj)\.weight$", r"^intermediate\.dense\.weight$")
    width_local = "attention.output.LayerNorm.weight"
    head_keys = r"^(bert\.)?pooler\.|^(classifier|cls|qa_outputs)\."
    signature = "bert.encoder.layer.{i}.attention.self.query.weight, bert.embeddings.word_embeddings.weight"
    signature_keys = (
        ("embeddings.word_embeddings.weight", r"(^|\.)embeddings\.word_embeddings\.weight$"),
        (
            "encoder.layer.{i}.attention.self.query.weight",
            r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query\.weight$",
        ),
        ("encoder.layer.{i}.intermediate.dense.weight", r"(^|\.)encoder\.layer\.\d+\.intermediate\.dense\.weight$"),
    )
    short_example = "bert-24"
    examples = ()


class HFViT(HFFamily):
    name = "hf_vit"
    short = "vit"
    default_width = 768
    patterns = ("vit.layers.{i}", "vit.encoder.layer.{i}", "layers.{i}", "encoder.layer.{i}")
    unit_holds = (r"^layernorm_before\.weight$",)
    width_local = "layernorm_before.weight"
    head_keys = r"^(vit\.)?(layernorm|pooler)\.|^classifier\."
    signature = "vit.embeddings.patch_embeddings.projection.weight, vit.layers.{i}.layernorm_before.weight"
    signature_keys = (
        ("embeddings.patch_embeddings.projection.weight", r"(^|\.)embeddings\.patch_embeddings\.projection\.weight$"),
        ("layers.{i}.layernorm_before.weight", r"(^|\.)(layers|encoder\.layer)\.\d+\.layernorm_before\.weight$"),
    )
    short_example = "vit-24"
    dataset = "imagenet"


class HFGPT2(HFFamily):
    name = "hf_gpt2"
    short = "gpt2"
    default_width = 768
    patterns = ("transformer.h.{i}", "h.{i}")
    unit_holds = (r"^attn\.c_attn\.weight$",)
    width_local = "ln_1.weight"
    layers_field = "n_layer"
    head_keys = r"^(transformer\.)?ln_f\.|^(lm_head|score)\."
    signature = "transformer.wte.weight, transformer.h.{i}.attn.c_attn.weight"
    signature_keys = (
        ("transformer.wte.weight", r"(^|\.)wte\.weight$"),
        ("transformer.h.{i}.attn.c_attn.weight", r"(^|\.)h\.\d+\.attn\.c_attn\.weight$"),
    )
    short_example = "gpt2-24"

    def prunable(self, name, shape):
        return super().prunable(name, shape) and not name.endswith("wpe.weight")  # positions, never pruned


class HFLlama(HFFamily):
    name = "hf_llama"
    short = "llama"
    default_width = 4096
    patterns = ("model.layers.{i}", "layers.{i}")
    unit_holds = (r"^self_attn\.q_proj\.weight$", r"^mlp\.gate_proj\.weight$")
    width_local = "input_layernorm.weight"
    head_keys = r"^(model\.)?norm\.|^(lm_head|score)\."
    signature = "model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight"
    signature_keys = (
        ("model.embed_tokens.weight", r"(^|\.)embed_tokens\.weight$"),
        ("model.layers.{i}.self_attn.q_proj.weight", r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$"),
        ("model.layers.{i}.mlp.gate_proj.weight", r"(^|\.)layers\.\d+\.mlp\.gate_proj\.weight$"),
    )
    short_example = "llama-32"


for _family in (HFBert(), HFViT(), HFGPT2(), HFLlama()):
    register(_family)
