"""Hugging Face transformers models as families (BERT, ViT, GPT-2, LLaMA): inference from their own state
dicts, stretch and squeeze with explicit mappings and default plans, masks, strict loads and forward passes at
the target depth; model folders read and written for from_pretrained; masks-only files (BERT-Tickets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_user_error
from family_util import check_units_follow, masked_ticket

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

import ettcli  # noqa: E402
from ettcli.errors import EttError  # noqa: E402
from ettcli.hf import write_hf_folder  # noqa: E402
from ettcli.plan import make_plan  # noqa: E402
from ettcli.ticket import Ticket, read_ticket  # noqa: E402
from ettcli.transform import transform  # noqa: E402

transformers.logging.set_verbosity_error()
SMALL = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def bert(layers: int, cls=BertForSequenceClassification, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(num_hidden_layers=layers, vocab_size=100, max_position_embeddings=64, num_labels=3, **SMALL)
    return cls(config).eval()


def vit(layers: int, seed: int = 0):
    torch.manual_seed(seed)
    config = ViTConfig(num_hidden_layers=layers, image_size=32, patch_size=8, num_labels=10, **SMALL)
    return ViTForImageClassification(config).eval()


def gpt2(layers: int, seed: int = 0):
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=layers, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def llama(layers: int, seed: int = 0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, vocab_size=100, **SMALL)).eval()


LAYERS = {
    "hf_bert": lambda m: m.bert.encoder.layer,
    "hf_vit": lambda m: m.vit.layers,
    "hf_gpt2": lambda m: m.transformer.h,
    "hf_llama": lambda m: m.model.layers,
}
BUILDERS = {"hf_bert": bert, "hf_vit": vit, "hf_gpt2": gpt2, "hf_llama": llama}
UNIT = {
    "hf_bert": "bert.encoder.layer.{}.",
    "hf_vit": "vit.layers.{}.",
    "hf_gpt2": "transformer.h.{}.",
    "hf_llama": "model.layers.{}.",
}


def state(ticket: Ticket) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ticket.masked_state_dict().items()}


def forward(family: str, model):
    with torch.no_grad():
        if family == "hf_vit":
            return model(pixel_values=torch.randn(2, 3, 32, 32)).logits
        return model(input_ids=torch.randint(0, 100, (2, 7))).logits


# --- recognition and prunable tensors ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(BUILDERS))
def test_inferred_from_the_libraries_own_names(family):
    t = masked_ticket(BUILDERS[family](3))
    spec = t.arch
    assert (spec.family, spec.stages, spec.width) == (family, (3,), 32)
    assert spec.name == f"{family}_3_32"
    unit = UNIT[family].format(2)
    prunable = set(t.prunable())
    inside = {n for n in prunable if n.startswith(unit)}
    assert len(inside) == (7 if family == "hf_llama" else 4 if family == "hf_gpt2" else 6)
    assert not any("norm" in n.lower() or n.endswith("bias") or "ln_" in n for n in prunable)
    assert not any("position" in n or "wpe" in n or "token" in n.rsplit(".", 1)[-1] for n in prunable)
    left = set(spec.fam.left_dense(spec))
    assert left and not any(n.startswith(UNIT[family].format("")[:-1]) for n in left)  # stem and head only
    assert left <= prunable


def test_bert_without_prefix_with_task_heads_and_a_tied_mlm_head():
    base = masked_ticket(bert(2, BertModel)).arch
    assert base.family == "hf_bert" and base.unit_prefix(0, 1) == "encoder.layer.1."
    mlm = masked_ticket(bert(2, BertForMaskedLM))
    assert "cls.predictions.decoder.weight" in mlm.arch.tensors  # the tied decoder, as state_dict() has it
    out = ettcli.stretch(mlm, "bert-4")
    model = bert(4, BertForMaskedLM, seed=3)
    model.load_state_dict(state(out), strict=True)
    assert forward("hf_bert", model).shape == (2, 7, 100)


def test_gpt2_conv1d_weights_are_in_x_out_and_prunable():
    t = masked_ticket(gpt2(2))
    assert t.arch.tensors["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    assert t.arch.tensors["transformer.h.0.mlp.c_proj.weight"].prunable
    assert "transformer.wpe.weight" not in t.prunable()  # position embeddings: never


def test_vit_in_transformers_4_names_is_recognised():
    """transformers 4 named ViT's layers vit.encoder.layer.{i} with attention.attention.query; the same family."""
    old = {}
    for k, v in vit(2).state_dict().items():
        k = k.replace("vit.layers.", "vit.encoder.layer.").replace(".attention.q_proj.", ".attention.attention.query.")
        old[k] = v.numpy()
    t = Ticket.from_arrays(old)
    assert t.arch.family == "hf_vit" and t.arch.unit_prefix(0, 1) == "vit.encoder.layer.1."
    assert ettcli.stretch(t, "vit-3").arch.tensors.keys() >= {"vit.encoder.layer.2.attention.attention.query.weight"}


def test_a_bert_missing_its_mlp_is_refused_naming_the_closest_family(cli, tmp_path):
    from safetensors.numpy import save_file

    sd = {k: v.numpy() for k, v in bert(2).state_dict().items() if "intermediate" not in k}
    save_file(sd, str(tmp_path / "odd.safetensors"))
    assert_user_error(cli("inspect", tmp_path / "odd.safetensors"), "closest: hf_bert", "intermediate.dense.weight")


# --- transforms -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize(
    ("layers", "to", "mapping"), [(3, 5, "0:0;1:1,3;2:2,4"), (3, 4, "0:0;1:3;2:1,2"), (5, 3, "0:0;3:1;4:2")]
)
def test_transform_with_an_explicit_mapping_loads_strictly_and_runs(tmp_path, family, layers, to, mapping):
    src = masked_ticket(BUILDERS[family](layers))
    src.save(tmp_path / "src.safetensors")
    src = read_ticket(tmp_path / "src.safetensors")
    plan = make_plan(src, stages=(to,), mapping=mapping)
    out = transform(src, stages=(to,), mapping=mapping)
    check_units_follow(src, out, plan)
    out.save(tmp_path / "out.safetensors")
    again = read_ticket(tmp_path / "out.safetensors")
    model = BUILDERS[family](to, seed=5)
    assert set(model.state_dict()) == set(again.tensors)
    model.load_state_dict(state(again), strict=True)
    params = dict(model.named_parameters())
    for name in (n for n in again.masks if again.arch.tensors[n].role == "unit"):  # tied stem/head: one mask wins
        assert int(torch.count_nonzero(params[name])) <= again.masks[name].kept, name
    logits = forward(family, model)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", list(BUILDERS))
def test_default_plans_keep_the_first_layer_and_replicate_the_others(family):
    short = {"hf_bert": "bert", "hf_vit": "vit", "hf_gpt2": "gpt2", "hf_llama": "llama"}[family]
    src = masked_ticket(BUILDERS[family](3))
    assert make_plan(src, f"{short}-5").mapping == "0:0;1:1,2;2:3,4"
    assert make_plan(src, f"{short}-5", order="append").mapping == "0:0;1:1,3;2:2,4"
    assert make_plan(src, stages="2", drop="tail").mapping == "0:0;1:1"
    assert make_plan(src, stages="2").mapping == "0:0;1:1"


def test_cli_inspect_plan_stretch_squeeze_on_bert(cli, tmp_path):
    path = tmp_path / "bert.safetensors"
    masked_ticket(bert(4)).save(path)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["stages"], info["arch"]) == ("hf_bert", [4], "hf_bert_4_32")
    roles = {t["name"]: t["role"] for t in info["tensors"]}
    assert roles["bert.embeddings.word_embeddings.weight"] == "stem" and roles["classifier.weight"] == "head"
    r = cli("plan", path, "--to", "bert-6", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["mapping"] == "0:0;1:1,2;2:3,4;3:5"
    deep = tmp_path / "bert8.safetensors"
    r = cli("stretch", path, "--stages", "8", "--mapping", "0:0;1:1,2,3;2:4,5;3:6,7", "-o", deep)
    assert r.exit_code == 0, r.stderr
    bert(8).load_state_dict(state(read_ticket(deep)), strict=True)
    r = cli("squeeze", deep, "--to", "bert-2", "--drop", "tail", "-o", tmp_path / "bert2.safetensors")
    assert r.exit_code == 0, r.stderr
    back = read_ticket(tmp_path / "bert2.safetensors")
    assert back.metadata["ett.plan"] == "0:0;1:1"
    bert(2).load_state_dict(state(back), strict=True)


def test_convert_from_a_torch_state_dict_and_magnitude_pruning_leaves_embeddings_dense(cli, tmp_path):
    pt = tmp_path / "gpt2.pt"
    torch.save(gpt2(2).state_dict(), pt)
    path = tmp_path / "gpt2.safetensors"
    r = cli("convert", pt, "-o", path)
    assert r.exit_code == 0, r.stderr
    assert read_ticket(path).arch.name == "hf_gpt2_2_32"
    out = tmp_path / "pruned.safetensors"
    for method in ("magnitude", "random", "uniform", "erk"):
        r = cli("prune", method, path, "--sparsity", "0.5", "-o", out)
        assert r.exit_code == 0, (method, r.stderr)
        t = read_ticket(out)
        assert "transformer.wte.weight" not in t.masks and "lm_head.weight" not in t.masks, method
        assert abs(t.sparsity() - 0.5) < 0.15, (method, t.sparsity())


# --- model folders ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["hf_bert", "hf_gpt2", "hf_llama", "hf_vit"])
def test_model_folder_read_then_written_at_a_new_depth_loads_with_from_pretrained(cli, tmp_path, family):
    model = BUILDERS[family](3)
    model.save_pretrained(tmp_path / "src")
    t = read_ticket(tmp_path / "src")
    assert t.arch.stages == (3,) and json.loads(t.metadata["ett.hf_config"])["model_type"] == family[3:]
    if family == "hf_gpt2":
        assert "lm_head.weight" not in t.tensors  # tied to wte: not in the saved file
    rng = np.random.default_rng(0)
    unit = t.arch.unit_prefix(0, 1)  # the names on disk (transformers 5 saves ViT under its 4.x names)
    pruned = [n for n in t.prunable() if n.startswith(unit)]
    assert len(pruned) >= 4
    given = {n + "_mask": torch.from_numpy((rng.random(t.tensors[n].shape) < 0.3).astype(np.float32)) for n in pruned}
    torch.save(given, tmp_path / "mask.pt")
    out = tmp_path / "out"
    r = cli("stretch", tmp_path / "src", "--stages", "5", "--masks", tmp_path / "mask.pt", "--hf-folder", out)
    assert r.exit_code == 0, r.stderr
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left
    config = json.loads((out / "config.json").read_text())
    assert config["n_layer" if family == "hf_gpt2" else "num_hidden_layers"] == 5
    loaded, info = type(model).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert len(LAYERS[family](loaded.eval())) == 5
    written = read_ticket(out)
    for copy in (1, 2):  # interpolate: unit 1 fills positions 1 and 2
        for n in pruned:
            name = n.replace(unit, t.arch.unit_prefix(0, copy))
            expected = (t.array(n) != 0) & (given[n + "_mask"].numpy() != 0)
            assert np.array_equal(written.array(name) != 0, expected), name  # pruned at zero, the rest as the source
    assert torch.isfinite(forward(family, loaded)).all()
    # the folder is read back as a ticket, and its zeros are the masks again
    back = read_ticket(out).masks_from_zeros()
    assert back.arch.stages == (5,) and 0.0 < back.sparsity() < 1.0


def test_tied_llama_folder_keeps_its_names(tmp_path):
    """A tied LLaMA saves every name under 'model.' (no lm_head): the folder written keeps them, as save_pretrained
    of the target depth does."""
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, vocab_size=100, tie_word_embeddings=True, **SMALL)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "src")
    t = read_ticket(tmp_path / "src")
    assert t.arch.unit_prefix(0, 1) == "model.layers.1." and "lm_head.weight" not in t.tensors
    write_hf_folder(ettcli.stretch(t, "llama-3"), tmp_path / "out", tmp_path / "src")
    config.num_hidden_layers = 3
    LlamaForCausalLM(config).save_pretrained(tmp_path / "ref")
    from safetensors import safe_open

    with (
        safe_open(tmp_path / "out" / "model.safetensors", "np") as a,
        safe_open(tmp_path / "ref" / "model.safetensors", "np") as b,
    ):
        assert set(a.keys()) == set(b.keys())
    loaded, info = LlamaForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_sharded_model_folder_is_read(tmp_path):
    model = bert(2)
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    t = read_ticket(tmp_path / "src")
    assert t.arch.name == "hf_bert_2_32" and set(t.tensors) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert np.array_equal(t.array(name), value.numpy()), name


def test_hf_folder_is_refused_without_a_config_or_into_a_non_empty_folder(cli, tmp_path):
    path = tmp_path / "bert.safetensors"
    masked_ticket(bert(2)).save(path)
    r = cli("stretch", path, "--stages", "3", "--hf-folder", tmp_path / "out")
    assert_user_error(r, "--hf-folder needs the model's config.json")
    assert not (tmp_path / "out").exists()
    bert(2).save_pretrained(tmp_path / "src")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = cli("stretch", tmp_path / "src", "--stages", "3", "--hf-folder", tmp_path / "full")
    assert_user_error(r, "full", "not an empty folder")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_converted_ticket_keeps_the_config_for_a_later_hf_folder(cli, tmp_path):
    gpt2(2).save_pretrained(tmp_path / "src")
    r = cli("convert", tmp_path / "src", "-o", tmp_path / "t.safetensors")
    assert r.exit_code == 0, r.stderr
    r = cli("squeeze", tmp_path / "t.safetensors", "--to", "gpt2-1", "--hf-folder", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "out").config.n_layer == 1


# --- masks-only files ----------------------------------------------------------------------------------------------
def test_bert_tickets_mask_file_beside_the_weights(cli, tmp_path):
    model = bert(2)
    weights = tmp_path / "pytorch_model.pt"
    torch.save(model.state_dict(), weights)
    rng = np.random.default_rng(0)
    names = [n for n in masked_ticket(model).prunable() if ".encoder.layer." in n]
    mask = {
        n + "_mask": torch.from_numpy((rng.random(model.state_dict()[n].shape) < 0.2).astype(np.float32)) for n in names
    }
    torch.save(mask, tmp_path / "mask.pt")
    r = cli("inspect", weights, "--masks", tmp_path / "mask.pt", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    masked = {t["name"] for t in info["tensors"] if t["masked"]}
    assert masked == set(names) and 0.6 < info["sparsity"] < 0.9
    r = cli("convert", weights, "--masks", tmp_path / "mask.pt", "-o", tmp_path / "t.safetensors")
    assert r.exit_code == 0, r.stderr
    t = read_ticket(tmp_path / "t.safetensors")
    for n in names:
        assert np.array_equal(t.masks[n].array, mask[n + "_mask"].numpy() != 0), n


def test_mask_file_naming_an_unknown_tensor_or_given_twice_is_refused(cli, tmp_path):
    path = tmp_path / "bert.safetensors"
    masked_ticket(bert(2)).save(path)
    torch.save({"bert.encoder.layer.9.output.dense.weight_mask": torch.ones(32, 64)}, tmp_path / "mask.pt")
    assert_user_error(cli("inspect", path, "--masks", tmp_path / "mask.pt"), "already has masks")
    Ticket.from_arrays({k: v.numpy() for k, v in bert(2).state_dict().items()}).save(tmp_path / "dense.safetensors")
    r = cli(
        "stretch",
        tmp_path / "dense.safetensors",
        "--stages",
        "3",
        "--masks",
        tmp_path / "mask.pt",
        "-o",
        tmp_path / "o.safetensors",
    )
    assert_user_error(r, "layer.9.output.dense.weight_mask", "names no tensor")
    assert not (tmp_path / "o.safetensors").exists()


def test_hf_names_need_a_source():
    with pytest.raises(EttError, match="read from its state dict"):
        ettcli.parse_arch("hf_bert_12")
