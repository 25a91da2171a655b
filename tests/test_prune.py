"""`ett prune METHOD`: exact counts for every baseline, what each writes, the scoring batch, and every bad input."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_user_error, make_ticket
from train_util import cifar_subset, needs_cifar, write_cifar_batches, write_image_folders

import ettcli
from ettcli.data import DATASETS, DatasetSpec, get_dataset, load_memory_dataset
from ettcli.errors import EttError, EttWarning
from ettcli.models import build_model
from ettcli.pruning import METHODS, prune_run
from ettcli.scores import scoring_batch
from ettcli.ticket import read_ticket

ARCHS = ["cifar_resnet_8_4", "cifar_vgg_11_8"]
DATA_FREE = ["magnitude", "random", "uniform", "erk", "synflow"]


def scoring_data(n_per_class: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((10 * n_per_class, 3, 32, 32)).astype(np.float32), np.arange(10 * n_per_class) % 10


@pytest.fixture(scope="module")
def tickets():
    """Per architecture: a dense rewind-point ticket, and a sparse REF of the same network (another seed)."""
    return {a: (make_ticket(a, 0.0, seed=0), make_ticket(a, 0.8, seed=5)) for a in ARCHS}


def _kept(t, names):
    return {n: t.mask(n).kept for n in names}


def _check_masks(result, ticket):
    for name, mask in result.masks.items():
        assert mask.array.dtype == np.bool_ and mask.shape == ticket.tensors[name].shape


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", [*DATA_FREE, "snip", "grasp", "grasp-abs"])
def test_every_baseline_hits_its_target_count_exactly(tickets, arch, method):
    ticket, ref = tickets[arch]
    data = scoring_data() if METHODS[method].data else None
    total, _ = ticket.counts()
    names = ticket.prunable()
    dense = ["fc.weight"] if arch.startswith("cifar_vgg") else []  # open_lth leaves a VGG's classifier dense

    out = prune_run(ticket, method, sparsity=0.73, data=data).ticket
    _check_masks(out, ticket)
    assert out.counts() == (total, round(0.27 * total))
    assert all(n not in out.masks for n in dense)

    out = prune_run(ticket, method, like=ref, data=data, exclude=[]).ticket  # REF prunes every tensor
    assert out.counts() == ref.counts()
    if METHODS[method].layerwise_like:  # random: REF's mask shuffled within each tensor
        assert _kept(out, names) == _kept(ref, names)
    if "layerwise" in METHODS[method].matches:
        out = prune_run(ticket, method, like=ref, match="layerwise", data=data).ticket
        _check_masks(out, ticket)
        assert _kept(out, names) == _kept(ref, names)


@pytest.mark.filterwarnings("ignore::ettcli.errors.EttWarning")  # REF's width-4 shortcut may empty
def test_magnitude_keeps_the_largest_unmasked_weights(tickets):
    ticket, ref = tickets["cifar_resnet_8_4"]
    names = ticket.prunable()
    flat = np.concatenate([np.abs(ticket.array(n)).ravel() for n in names])
    keep = ref.counts()[1]
    out = ettcli.prune(ticket, "magnitude", like=ref)
    kept = np.concatenate([out.masks[n].array.ravel() for n in names])
    assert kept.sum() == keep and flat[kept].min() >= flat[~kept].max()
    inverted = ettcli.prune(ticket, "magnitude", like=ref, invert=True)
    kept = np.concatenate([inverted.masks[n].array.ravel() for n in names])
    assert kept.sum() == keep and flat[kept].max() <= flat[~kept].min()
    for n in names:  # the weights written are TICKET's own, unmasked
        assert np.array_equal(out.array(n), ticket.array(n))


def test_random_is_seeded_and_shuffles_refs_mask(tickets):
    ticket, ref = tickets["cifar_resnet_8_4"]
    a = ettcli.prune(ticket, "random", like=ref, seed=1)
    b = ettcli.prune(ticket, "random", like=ref, seed=1)
    c = ettcli.prune(ticket, "random", like=ref, seed=2)
    names = ticket.prunable()
    assert all(a.masks[n] == b.masks[n] for n in names)
    assert any(a.masks[n] != c.masks[n] for n in names)
    assert any(a.masks[n] != ref.masks[n] for n in names)
    g = ettcli.prune(ticket, "random", like=ref, match="global", seed=1)
    assert g.counts() == ref.counts() and _kept(g, names) != _kept(ref, names)
    assert a.metadata["ett.prune.seed"] == "1" and a.metadata["ett.prune.match"] == "layerwise"


def test_reinit_puts_refs_mask_on_fresh_weights(tickets):
    ticket, ref = tickets["cifar_resnet_8_4"]
    out = ettcli.prune(ticket, "reinit", like=ref, seed=7)
    fresh = build_model(ticket.arch, seed=7).state_dict()
    assert set(out.masks) == set(ref.masks) and all(out.masks[n] == ref.masks[n] for n in ref.masks)
    for name, value in fresh.items():
        assert np.array_equal(out.array(name), value.numpy()), name
    assert not np.array_equal(out.array("conv.weight"), ticket.array("conv.weight"))
    assert out.metadata["ett.seed"] == "7" and out.metadata["ett.rewind_step"] == "0it"
    own = ettcli.prune(ref, "reinit", seed=3)  # without --like: TICKET's own mask
    assert all(own.masks[n] == ref.masks[n] for n in ref.masks)


def test_uniform_and_erk_allocations(tickets):
    ticket, _ = tickets["cifar_resnet_8_4"]
    names = ticket.prunable()
    uni = prune_run(ticket, "uniform", sparsity=0.9)
    for n in names:
        m = uni.ticket.masks[n]
        assert abs(m.kept - 0.1 * m.numel) <= 1, n
        assert uni.per_tensor_target[n] == m.kept
    erk = prune_run(ticket, "erk", sparsity=0.9)
    dens = {n: erk.ticket.masks[n].density for n in names}
    assert dens["conv.weight"] > dens["blocks.2.conv2.weight"]  # small layers denser under ERK
    assert erk.ticket.counts()[1] == uni.ticket.counts()[1]


def test_sanity_ablations(tickets):
    ticket, ref = tickets["cifar_resnet_8_4"]
    names = ticket.prunable()
    base = ettcli.prune(ticket, "magnitude", like=ref)
    shuffled = ettcli.prune(ticket, "magnitude", like=ref, shuffle=3)
    assert _kept(shuffled, names) == _kept(base, names)  # layerwise shuffle keeps per-tensor counts
    assert any(shuffled.masks[n] != base.masks[n] for n in names)
    fresh = ettcli.prune(ticket, "magnitude", like=ref, reinit=9)
    assert all(fresh.masks[n] == base.masks[n] for n in names)
    assert np.array_equal(fresh.array("fc.weight"), build_model(ticket.arch, seed=9).state_dict()["fc.weight"].numpy())
    assert fresh.metadata["ett.prune.reinit"] == "9" and shuffled.metadata["ett.prune.shuffle"] == "3"
    with pytest.raises(EttError, match="sanity ablations"):
        ettcli.prune(ticket, "random", like=ref, invert=True)


def test_layer_collapse_is_named_in_a_warning():
    ticket = make_ticket("cifar_resnet_8_4", 0.0, seed=0)
    arrays = dict(ticket.arrays())
    arrays["blocks.0.conv1.weight"] = arrays["blocks.0.conv1.weight"] * 1e-6
    small = type(ticket).from_arrays(arrays)
    with pytest.warns(EttWarning, match=r"layer collapse: magnitude keeps no weight in blocks\.0\.conv1\.weight"):
        out = ettcli.prune(small, "magnitude", sparsity=0.9)
    assert out.masks["blocks.0.conv1.weight"].kept == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ettcli.prune(ticket, "magnitude", sparsity=0.5)  # no tensor emptied: no warning


def test_masked_rewind_weights_are_warned_about():
    ref = make_ticket("cifar_resnet_8_4", 0.8, seed=1)
    arrays = {n: (a * ref.mask(n).array if n in ref.masks else a) for n, a in ref.arrays()}
    masked = type(ref).from_arrays(arrays, ref.masks)
    with (
        pytest.warns(EttWarning, match="newly kept weights start at zero"),
        pytest.warns(EttWarning, match="kept again"),
    ):
        ettcli.prune(masked, "random", sparsity=0.5)


def test_weights_a_sparse_tickets_mask_prunes_are_kept_again_only_with_a_warning():
    imp_like = make_ticket("cifar_resnet_8_4", 0.8, seed=1)  # masked by magnitude on its own weights
    with pytest.warns(EttWarning, match="ignores its mask") as caught:
        out = ettcli.prune(imp_like, "magnitude", sparsity=0.5)
    revived = sum(int(np.count_nonzero(out.masks[n].array & ~m.array)) for n, m in imp_like.masks.items())
    assert revived > 0 and f"{revived:,} weights TICKET prunes are kept again" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ettcli.prune(imp_like, "magnitude", sparsity=0.9)  # within its mask: nothing kept again, no warning
        ettcli.prune(make_ticket("cifar_resnet_8_4", 0.0), "magnitude", sparsity=0.5)


def test_a_baseline_does_not_carry_imp_keys_of_its_ticket():
    base = make_ticket("cifar_resnet_8_4", 0.0)
    meta = {"ett.imp_level": "0", "ett.imp_folder": "imp/x", "ett.imp_rate": "0.2", "ett.sparsity": "0.000000"}
    level0 = type(base).from_arrays(dict(base.arrays()), {}, {**base.metadata, **meta})
    out = ettcli.prune(level0, "random", sparsity=0.5)
    assert not [k for k in out.metadata if k.startswith("ett.imp") or k == "ett.sparsity"], out.metadata


def test_vgg_classifier_stays_dense_unless_ref_prunes_it():
    ticket = make_ticket("cifar_vgg_11_8", 0.0)
    out = prune_run(ticket, "magnitude", sparsity=0.9)
    assert "fc.weight" not in out.ticket.masks and out.target.dense == ("fc.weight",)
    assert out.ticket.metadata["ett.prune.dense"] == "fc.weight"
    ref = make_ticket("cifar_vgg_11_8", 0.9, seed=1)  # prunes its classifier too
    assert ref.masks["fc.weight"].kept < ref.masks["fc.weight"].numel
    out = ettcli.prune(ticket, "magnitude", like=ref, match="layerwise")
    assert out.masks["fc.weight"].kept == ref.masks["fc.weight"].kept
    with pytest.raises(EttError, match="REF prunes fc.weight"):
        ettcli.prune(ticket, "magnitude", like=ref, match="layerwise", exclude=["fc.weight"])
    with pytest.raises(EttError, match="not a prunable tensor"):
        ettcli.prune(ticket, "magnitude", sparsity=0.5, exclude=["fc.bias"])


# --- the scoring batch ------------------------------------------------------------------------------------------
def test_scoring_batch_takes_the_first_images_of_each_class_in_file_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))
    folder, images = write_cifar_batches(tmp_path / "tv", n_per_batch=30)
    import pickle

    labels = np.concatenate(
        [pickle.load(open(folder / f"data_batch_{i}", "rb"))["labels"] for i in range(1, 6)]  # noqa: SIM115
    )
    spec = get_dataset("cifar10")
    x, y = scoring_batch(spec, tmp_path / "tv", 2)
    want = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(10)])
    assert y.tolist() == labels[want].tolist() == [c for c in range(10) for _ in range(2)]
    mean, std = np.array(spec.mean), np.array(spec.std)
    expect = ((images[want] / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert x.dtype == torch.float32 and x.shape == (20, 3, 32, 32)
    np.testing.assert_allclose(x.numpy(), expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(EttError, match="fewer than --samples-per-class 50"):
        scoring_batch(spec, tmp_path / "tv", 50)


def test_scoring_batch_from_cifar_folders_equals_the_training_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))
    classes = [f"class{c}" for c in range(10)]
    root = write_image_folders(tmp_path / "data", classes, per_class=4)
    spec = get_dataset("cifar10")
    x, y = scoring_batch(spec, root, 3)  # decodes only the 30 images it needs
    data = load_memory_dataset(spec, root)  # what training reads: every image, in the split's order
    want = np.concatenate([np.flatnonzero(data.train_y == c)[:3] for c in range(10)])
    assert y.tolist() == data.train_y[want].tolist()
    expect = ((data.train_x[want] / 255.0 - np.array(spec.mean)) / np.array(spec.std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.numpy(), expect, rtol=1e-5, atol=1e-5)


def test_scoring_batch_from_image_folders_uses_sorted_files_and_test_transforms(tmp_path, monkeypatch):
    spec = DatasetSpec("tiny_folders", 3, "folders", 32, 12, 6, test_dirs=("val",))
    monkeypatch.setitem(DATASETS, spec.name, spec)
    root = write_image_folders(tmp_path / "data", ["b", "a", "c"], per_class=4, size=40, splits=("train", "val"))
    from PIL import Image

    # the first file of class "a" (sorted: a, b, c) is made recognisable
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(root / "train" / "a" / "0000.png")
    x, y = scoring_batch(spec, root, 2)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    white = (1.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x[0].mean(dim=(1, 2)).numpy(), white, rtol=1e-5)
    assert not np.allclose(x[1].mean(dim=(1, 2)).numpy(), white, atol=0.1)


@needs_cifar
@pytest.mark.data
@pytest.mark.parametrize("arch", ARCHS)
def test_snip_and_grasp_on_real_cifar_images(cli, tmp_path_factory, tmp_path, monkeypatch, arch):
    monkeypatch.setenv("ETT_CACHE", str(tmp_path_factory.getbasetemp() / "prune-cache"))
    root = cifar_subset(tmp_path_factory.getbasetemp())
    ticket, ref = tmp_path / "t.safetensors", tmp_path / "ref.safetensors"
    make_ticket(arch, 0.0, seed=0).save(ticket)
    make_ticket(arch, 0.9, seed=1).save(ref)
    for method in ("snip", "grasp"):
        out = tmp_path / f"{method}.safetensors"
        r = cli("prune", method, ticket, "--like", ref, "--data-root", root, "--samples-per-class", "5", "-o", out)
        assert r.exit_code == 0, (r.stderr, r.exception)
        assert "all prunable" in r.stdout and method in r.stdout
        t = read_ticket(out)
        assert t.counts() == read_ticket(ref).counts()
        assert t.metadata["ett.prune.samples_per_class"] == "5" and t.metadata["ett.prune.bn"] == "train"
    # the same scores from the library on the batch the test builds itself: first 5 of each class
    x, y = scoring_batch(get_dataset("cifar10"), root, 5)
    lib = ettcli.prune(ticket, "snip", like=ref, data=(x.numpy(), y.numpy()))
    cli_t = read_ticket(tmp_path / "snip.safetensors")
    assert all(lib.masks[n] == cli_t.masks[n] for n in lib.masks)


# --- the command line --------------------------------------------------------------------------------------------
def test_cli_writes_the_ticket_and_reports_target_against_achieved(cli, tmp_path):
    ticket, ref = tmp_path / "t.safetensors", tmp_path / "ref.safetensors"
    make_ticket("cifar_resnet_8_4", 0.0).save(ticket)
    make_ticket("cifar_resnet_8_4", 0.8, seed=2).save(ref)
    out = tmp_path / "out.safetensors"
    r = cli("prune", "synflow", ticket, "--like", ref, "--match", "layerwise", "-o", out)
    assert r.exit_code == 0, (r.stderr, r.exception)
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out} (synflow, cifar_resnet_8_4, layerwise")
    row = next(line for line in lines if line.startswith("blocks.2.conv2.weight"))
    assert row.split()[-1] == row.split()[-2]  # achieved == target per tensor
    last = lines[-1].split()
    assert last[:2] == ["all", "prunable"] and last[-1] == last[-2] == "80.00%"
    t = read_ticket(out)
    meta = t.metadata
    assert meta["ett.prune.method"] == "synflow" and meta["ett.prune.bn"] == "eval"
    assert meta["ett.like_sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert meta["ett.source_sha256"] == hashlib.sha256(ticket.read_bytes()).hexdigest()
    assert meta["ett.rewind_step"] == "0it" and meta["ett.dataset"] == "cifar10"
    assert meta["ett.command"] == f"ett prune synflow {ticket} --like {ref} --match layerwise -o {out}"
    # -o may name TICKET itself
    r = cli("prune", "magnitude", ticket, "--sparsity", "0.5", "-o", ticket)
    assert r.exit_code == 0, r.stderr
    assert read_ticket(ticket).sparsity() == pytest.approx(0.5, abs=1e-3)


def test_cli_help_defines_each_method_with_an_example(cli):
    r = cli("prune", "--help")
    assert r.exit_code == 0
    for name in METHODS:
        assert name in r.stdout
    r = cli("prune", "synflow", "--help")
    assert "float64" in r.stdout and "Example: ett prune synflow" in r.stdout
    assert "--samples-per-class" not in r.stdout and "--bn" in r.stdout  # only the options that apply
    r = cli("prune", "snip", "--help")
    assert "--samples-per-class" in r.stdout and "--data-root" in r.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["prune", "obd", "T", "--sparsity", "0.5", "-o", "OUT"], ["unknown pruning method 'obd'", "magnitude"]),
        (["prune", "magnitude", "T", "--sparsity", "1.0", "-o", "OUT"], ["outside [0, 1)"]),
        (["prune", "magnitude", "T", "--sparsity", "-0.2", "-o", "OUT"], ["outside [0, 1)"]),
        (["prune", "magnitude", "T", "--sparsity", "0.9999999", "-o", "OUT"], ["= 0 of", "an empty network"]),
        (["prune", "magnitude", "T", "-o", "OUT"], ["give --sparsity S", "--like REF"]),
        (["prune", "magnitude", "T", "--sparsity", "0.5", "--like", "REF", "-o", "OUT"], ["not both"]),
        (["prune", "magnitude", "T", "--sparsity", "0.5", "--match", "layerwise", "-o", "OUT"], ["needs --like REF"]),
        (["prune", "random", "T", "--like", "VGG", "-o", "OUT"], ["cifar_vgg_11_8", "same architecture"]),
        (["prune", "snip", "T", "--like", "C100", "--data-root", "DATA", "-o", "OUT"], ["prunable tensors differ"]),
        (["prune", "snip", "T", "--sparsity", "0.5", "--data-root", "NODATA", "-o", "OUT"], ["does not exist"]),
        (["prune", "grasp", "T", "--sparsity", "0.5", "--data-root", "EMPTY", "-o", "OUT"], ["no cifar10 data"]),
        (["prune", "reinit", "T", "-o", "OUT"], ["no masks to copy"]),
        (["prune", "uniform", "T", "--like", "REF", "--exclude", "bogus", "-o", "OUT"], ["--exclude bogus"]),
        (["prune", "magnitude", "MISSING", "--sparsity", "0.5", "-o", "OUT"], ["no such file"]),
        (["prune", "magnitude", "T", "--sparsity", "0.5", "-o", "NODIR"], ["does not exist"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, args, fragments):
    paths = {
        "T": tmp_path / "t.safetensors",
        "REF": tmp_path / "ref.safetensors",
        "VGG": tmp_path / "vgg.safetensors",
        "C100": tmp_path / "c100.safetensors",
        "OUT": tmp_path / "out.safetensors",
        "DATA": tmp_path,
        "NODATA": tmp_path / "nodata",
        "EMPTY": tmp_path / "empty",
        "MISSING": tmp_path / "missing.safetensors",
        "NODIR": tmp_path / "nodir" / "out.safetensors",
    }
    make_ticket("cifar_resnet_8_4", 0.0).save(paths["T"])
    make_ticket("cifar_resnet_8_4", 0.8, seed=1).save(paths["REF"])
    make_ticket("cifar_vgg_11_8", 0.8).save(paths["VGG"])
    make_ticket("cifar_resnet_8_4", 0.8, num_classes=100).save(paths["C100"])
    paths["EMPTY"].mkdir()
    before = {p: p.read_bytes() for p in tmp_path.glob("*.safetensors")}
    r = cli(*[paths.get(a, a) for a in args])
    assert_user_error(r, *fragments)
    assert not paths["OUT"].exists()
    assert {p: p.read_bytes() for p in tmp_path.glob("*.safetensors")} == before  # inputs untouched
