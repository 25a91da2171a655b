"""Datasets: the registry, layout detection, decoding and the content-keyed cache, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from train_util import cifar_subset, needs_cifar, write_cifar_batches, write_image_folders

from ettcli.data import (
    DATASETS,
    DatasetSpec,
    default_data_root,
    find_layout,
    folder_datasets,
    get_dataset,
    load_memory_dataset,
)
from ettcli.errors import EttError

CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))


def test_registry_and_unknown_name():
    assert {"cifar10", "cifar100", "imagenet"} <= set(DATASETS)
    assert get_dataset("cifar100").num_classes == 100
    with pytest.raises(EttError, match="unknown dataset 'mnist'; choose one of: cifar10, cifar100, imagenet"):
        get_dataset("mnist")


def test_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ETT_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("ETT_DATA")
    assert default_data_root().parts[-3:] == (".cache", "ett", "data")


def test_image_folders_decode_sorted_classes_and_cache(tmp_path):
    names = ["zebra", "ant", "moth"] + [f"c{i}" for i in range(7)]
    root = write_image_folders(tmp_path / "d", names, per_class=3)
    data = load_memory_dataset(get_dataset("cifar10"), root)
    assert data.classes == sorted(names)
    assert data.train_x.shape == (30, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (30, 32, 32, 3)
    assert data.train_y.tolist() == [i for i in range(10) for _ in range(3)]
    # the PNG pixels survive exactly, in sorted class order
    from PIL import Image

    first_ant = np.asarray(Image.open(root / "train" / "ant" / "0000.png").convert("RGB"))
    assert np.array_equal(data.train_x[0], first_ant)
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 1
    # a changed folder has another key and is decoded again
    shutil.copy(root / "train" / "ant" / "0000.png", root / "train" / "ant" / "0009.png")
    again = load_memory_dataset(get_dataset("cifar10"), root)
    assert len(again.train_y) == 31
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 2


def test_unchanged_folder_is_not_decoded_again(tmp_path, monkeypatch):
    root = write_image_folders(tmp_path / "d", CLASSES, per_class=2)
    first = load_memory_dataset(get_dataset("cifar10"), root)
    import ettcli.data as data_mod

    monkeypatch.setattr(data_mod, "decode_images", lambda *a, **k: pytest.fail("decoded twice"))
    again = load_memory_dataset(get_dataset("cifar10"), root)
    assert np.array_equal(first.train_x, again.train_x) and np.array_equal(first.test_y, again.test_y)


def test_root_with_one_subfolder_is_accepted(tmp_path):
    write_image_folders(tmp_path / "outer" / "cifar10", CLASSES, per_class=1)
    kind, folder = find_layout(get_dataset("cifar10"), tmp_path / "outer")
    assert (kind, folder) == ("folders", tmp_path / "outer" / "cifar10")


def test_torchvision_batches_layout(tmp_path):
    folder, train = write_cifar_batches(tmp_path)
    data = load_memory_dataset(get_dataset("cifar10"), tmp_path)
    assert data.source == str(folder)
    assert data.train_x.shape == (100, 32, 32, 3) and data.test_x.shape == (20, 32, 32, 3)
    assert np.array_equal(data.train_x, train)
    assert data.classes == [f"c{i}" for i in range(10)]


def test_missing_root_and_missing_classes(tmp_path):
    spec = get_dataset("cifar10")
    with pytest.raises(EttError, match="data root .*nowhere does not exist"):
        load_memory_dataset(spec, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EttError, match="no cifar10 data under .*empty: expected cifar-10-batches-py/"):
        load_memory_dataset(spec, tmp_path / "empty")
    root = write_image_folders(tmp_path / "d", CLASSES, per_class=1)
    for c in CLASSES[:3]:
        shutil.rmtree(root / "test" / c)
    with pytest.raises(EttError, match=r"found 7 of 10 class folders under .*test"):
        load_memory_dataset(spec, root)


def test_wrong_image_size_is_named(tmp_path):
    root = write_image_folders(tmp_path / "d", CLASSES, per_class=1, size=28)
    with pytest.raises(EttError, match="image is 28x28, expected 32x32"):
        load_memory_dataset(get_dataset("cifar10"), root)


def test_imagenet_style_folders_stream_with_standard_transforms(tmp_path):
    spec = DatasetSpec("fake_imagenet", 3, "folders", 64, 6, 3, test_dirs=("val", "test"))
    write_image_folders(tmp_path, ["b", "a", "c"], per_class=2, size=80, splits=("train", "val"))
    train, test = folder_datasets(spec, tmp_path)
    assert train.classes == ["a", "b", "c"] and len(train) == 6 and len(test) == 6
    x, y = train[0]
    assert tuple(x.shape) == (3, 64, 64) and y == 0
    x, _ = test[5]
    assert tuple(x.shape) == (3, 64, 64)
    with pytest.raises(EttError, match="found 3 of 1000 class folders"):
        folder_datasets(get_dataset("imagenet"), tmp_path)


@needs_cifar
@pytest.mark.data
def test_real_cifar_subset_decodes(tmp_path_factory):
    root = cifar_subset(tmp_path_factory.getbasetemp())
    data = load_memory_dataset(get_dataset("cifar10"), root)
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    assert data.train_x.shape == (300, 32, 32, 3) and data.test_x.shape == (100, 32, 32, 3)
    mean = data.train_x.reshape(-1, 3).mean(0) / 255
    assert np.all(np.abs(mean - [0.49, 0.48, 0.45]) < 0.08)


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (tmp_path / "dl" / "cifar-10-batches-py").exists():
                write_cifar_batches(tmp_path / "dl")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = load_memory_dataset(get_dataset("cifar10"), tmp_path / "dl", download=True)
    assert calls == [(str(tmp_path / "dl"), True, True), (str(tmp_path / "dl"), False, True)]
    assert data.train_x.shape == (100, 32, 32, 3)

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(EttError, match=r"downloading cifar10 into .* failed \(network is unreachable\)"):
        load_memory_dataset(get_dataset("cifar10"), tmp_path / "other" / "cifar", download=True)
    assert not (tmp_path / "other").exists()  # no empty data root left behind
    (tmp_path / "mine").mkdir()
    with pytest.raises(EttError, match="failed"):
        load_memory_dataset(get_dataset("cifar10"), tmp_path / "mine", download=True)
    assert (tmp_path / "mine").is_dir()  # a folder the user made stays
    with pytest.raises(EttError, match="imagenet cannot be downloaded"):
        load_memory_dataset(get_dataset("imagenet"), tmp_path / "x", download=True)
