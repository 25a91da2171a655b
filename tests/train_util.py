"""Helpers for the training and data tests: a small real CIFAR-10 subset and tiny synthetic datasets."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

needs_cifar = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"the CIFAR-10 copy {SHARED_DATA} is absent (see ../shared/data/README.md)"
)
needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")

_SUBSETS: dict[tuple[int, int], Path] = {}


def cifar_subset(root: Path, per_class_train: int = 30, per_class_test: int = 10) -> Path:
    """Extract the first few images of every class (train and test) from the shared tarball into ``root``.

    Reads the archive once as a stream and writes only the chosen members; cached per session.
    """
    key = (per_class_train, per_class_test)
    if key in _SUBSETS:
        return _SUBSETS[key]
    out = root / f"cifar10-{per_class_train}-{per_class_test}"
    if SHARED_DATA.is_dir():  # an extracted copy: the first files of every class, by name
        for split, limit in (("train", per_class_train), ("test", per_class_test)):
            for cls in sorted(p for p in (SHARED_DATA / split).iterdir() if p.is_dir()):
                dest = out / split / cls.name
                dest.mkdir(parents=True, exist_ok=True)
                for f in sorted(cls.iterdir())[:limit]:
                    (dest / f.name).write_bytes(f.read_bytes())
        _SUBSETS[key] = out
        return out
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_DATA, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3:
                continue
            split, cls, _ = parts
            limit = per_class_train if split == "train" else per_class_test
            if counts.get((split, cls), 0) >= limit:
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            dest = out / member.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
    _SUBSETS[key] = out
    return out


def write_image_folders(root: Path, classes: list[str], per_class: int, size: int = 32, splits=("train", "test")):
    """Tiny synthetic image folders: each class a distinct colour with noise (PNG, lossless)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256], dtype=np.int16)
                img = np.clip(base + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


def write_cifar_batches(root: Path, n_per_batch: int = 20) -> tuple[Path, np.ndarray]:
    """torchvision's pickled CIFAR-10 layout with random images; returns the folder and the train images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n_per_batch)]
        if name != "test_batch":
            train.append(data)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return folder, np.concatenate(train).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
