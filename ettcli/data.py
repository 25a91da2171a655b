"""Datasets for ``ett train``: a registry, where the files live, and how they are read.

CIFAR-10/100 are small enough to live in memory as one uint8 array (N, 32, 32, 3) plus int64 labels, which
the training loop keeps resident on its device and augments in batches. Two on-disk layouts are read:

* torchvision's (``cifar-10-batches-py/`` or ``cifar-100-python/``, as ``--download`` writes it), class
  order as torchvision has it;
* image folders, ``train/<class>/*`` and ``test/<class>/*`` (or a root with one subfolder that holds them),
  class order sorted by folder name.

Image folders are decoded once with Pillow (in a process pool for large sets) into a cached ``.npz`` keyed
by a hash of the file list with sizes and modification times, written atomically under the cache folder
(``$ETT_CACHE``, default ``~/.cache/ett/cache``), so a changed folder is decoded again and an unchanged one
never is.

ImageNet stays on disk: image folders ``train/<class>/*`` and ``val/<class>/*`` (``test/`` accepted) read
through a DataLoader with workers and the standard ImageNet transforms.

Nothing here imports torch or numpy at module level (the CLI reads the registry for its help text).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ettcli.errors import EttError
from ettcli.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# open_lth normalises CIFAR with the ImageNet statistics, and so does ett.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its name, classes, image size and on-disk conventions."""

    name: str
    num_classes: int
    kind: str  # "memory": decoded once and held as uint8 arrays; "folders": streamed from image folders
    image_size: int  # side of the training crop, pixels
    train_size: int  # images in the full training split (for messages)
    test_size: int  # images in the full test split
    batches_dir: str = ""  # torchvision's folder name for the pickled batches format
    torchvision_class: str = ""  # torchvision.datasets class used by --download
    test_dirs: tuple[str, ...] = ("test",)  # accepted names of the held-out split's folder
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    recipe: str = "cifar"  # the training recipe for this data (ettcli.recipe.RECIPES)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (a name registers once)."""
    return DATASETS.register(spec.name, spec)


register(DatasetSpec("cifar10", 10, "memory", 32, 50_000, 10_000, "cifar-10-batches-py", "CIFAR10"))
register(DatasetSpec("cifar100", 100, "memory", 32, 50_000, 10_000, "cifar-100-python", "CIFAR100"))
register(DatasetSpec("imagenet", 1000, "folders", 224, 1_281_167, 50_000, test_dirs=("val", "test"), recipe="imagenet"))


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset called ``name``; an unknown name is an EttError listing the known ones."""
    return DATASETS.lookup(name)


def default_data_root() -> Path:
    """``$ETT_DATA`` if set, else ``~/.cache/ett/data``."""
    return Path(os.environ.get("ETT_DATA") or Path.home() / ".cache" / "ett" / "data")


def cache_dir() -> Path:
    """``$ETT_CACHE`` if set, else ``~/.cache/ett/cache`` (decoded arrays live here)."""
    return Path(os.environ.get("ETT_CACHE") or Path.home() / ".cache" / "ett" / "cache")


@dataclass
class InMemory:
    """A dataset held as arrays: images uint8 (N, H, W, 3), labels int64 (N,), for train and test."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str  # where it was read from, for messages and provenance


# --- layout detection ---------------------------------------------------------------------------------------
def find_layout(spec: DatasetSpec, root: Path) -> tuple[str, Path]:
    """Where the data sits under ``root``: ("batches", folder) or ("folders", folder holding train/test).

    A root that holds exactly one subfolder with the data (as an extracted archive often does) is accepted.
    """
    root = Path(root)
    if not root.exists():
        raise EttError(
            f"data root {root} does not exist; pass --data-root DIR (default $ETT_DATA or ~/.cache/ett/data)"
            + (" or --download" if spec.torchvision_class else "")
        )
    if not root.is_dir():
        raise EttError(f"data root {root} is a file; pass the folder that holds the {spec.name} data")
    candidates = [root] + [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for cand in candidates:
        if spec.batches_dir and (cand / spec.batches_dir).is_dir():
            return "batches", cand / spec.batches_dir
        if cand.name == spec.batches_dir and cand.is_dir():
            return "batches", cand
        if (cand / "train").is_dir() and _test_dir(spec, cand) is not None:
            return "folders", cand
        if cand is root and len(candidates) > 2:
            break  # several subfolders: do not guess which one holds the data
    expected = f"{spec.batches_dir}/ (torchvision's format) or " if spec.batches_dir else ""
    test = "|".join(spec.test_dirs)
    hint = "; pass --download to fetch it" if spec.torchvision_class else ""
    raise EttError(
        f"no {spec.name} data under {root}: expected {expected}train/<class>/ and {test}/<class>/ folders{hint}"
    )


def _test_dir(spec: DatasetSpec, folder: Path) -> Path | None:
    for name in spec.test_dirs:
        if (folder / name).is_dir():
            return folder / name
    return None


def class_folders(spec: DatasetSpec, split_dir: Path, expect: int | None = None) -> list[Path]:
    """The class folders of one split, sorted by name; fewer than the dataset's classes is an EttError."""
    expect = spec.num_classes if expect is None else expect
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) != expect:
        raise EttError(
            f"{spec.name}: found {len(folders)} of {expect} class folders under {split_dir}; "
            "the dataset is missing or incomplete (re-extract it or point --data-root elsewhere)"
        )
    for f in folders:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in f.iterdir()):
            raise EttError(f"{spec.name}: class folder {f} holds no images")
    return folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# --- CIFAR ----------------------------------------------------------------------------------------------------
def load_memory_dataset(spec: DatasetSpec, root: str | os.PathLike, download: bool = False) -> InMemory:
    """Read a CIFAR-style dataset into memory, from torchvision's batches or from image folders."""
    root = Path(root).expanduser()
    if download:
        download_dataset(spec, root)
    kind, where = find_layout(spec, root)
    if kind == "batches":
        return _read_batches(spec, where)
    return _read_folders(spec, where)


def download_dataset(spec: DatasetSpec, root: Path) -> None:
    """Fetch a dataset with torchvision's downloader into ``root`` (needs the internet)."""
    if not spec.torchvision_class:
        raise EttError(f"{spec.name} cannot be downloaded by ett; place its image folders under --data-root")
    import shutil

    import torchvision

    created = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except BaseException as exc:  # network errors come in many types; an interrupt cleans up too
        if created:  # leave no empty or half-downloaded folder that ett made
            shutil.rmtree(created[-1], ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EttError(
            f"downloading {spec.name} into {root} failed ({reason}); check the network or --data-root"
        ) from None


def _read_batches(spec: DatasetSpec, folder: Path) -> InMemory:
    """torchvision's pickled CIFAR batches (trusted files that torchvision itself writes and reads)."""
    import numpy as np

    if spec.name == "cifar100":
        train_files, test_files, label_key, meta_file, names_key = (
            ["train"],
            ["test"],
            "fine_labels",
            "meta",
            "fine_label_names",
        )
    else:
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key, meta_file, names_key = ["test_batch"], "labels", "batches.meta", "label_names"

    def read(names):
        xs, ys = [], []
        for n in names:
            p = folder / n
            if not p.is_file():
                raise EttError(f"{spec.name}: {p} is missing; the download is incomplete (rerun with --download)")
            with open(p, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    classes = [str(i) for i in range(spec.num_classes)]
    if (folder / meta_file).is_file():
        with open(folder / meta_file, "rb") as fh:
            classes = list(pickle.load(fh, encoding="latin1")[names_key])
    return InMemory(train_x, train_y, test_x, test_y, classes, str(folder))


def _read_folders(spec: DatasetSpec, folder: Path) -> InMemory:
    import numpy as np

    from ettcli.stfile import atomic_path

    test_dir = _test_dir(spec, folder)
    train_classes = class_folders(spec, folder / "train")
    test_classes = class_folders(spec, test_dir)
    names = [p.name for p in train_classes]
    if names != [p.name for p in test_classes]:
        missing = sorted(set(names) ^ {p.name for p in test_classes})
        raise EttError(f"{spec.name}: train and {test_dir.name} class folders differ under {folder}: {missing}")
    listing = {
        split: [(i, f) for i, c in enumerate(classes) for f in _image_files(c)]
        for split, classes in (("train", train_classes), ("test", test_classes))
    }
    key = _listing_key(spec, folder, listing)
    path = cache_dir() / f"{spec.name}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return InMemory(z["train_x"], z["train_y"], z["test_x"], z["test_y"], names, str(folder))
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache entry is decoded again
    arrays = {}
    for split, items in listing.items():
        arrays[f"{split}_x"] = decode_images([f for _, f in items], spec.image_size)
        arrays[f"{split}_y"] = np.array([i for i, _ in items], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return InMemory(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], names, str(folder))


def _listing_key(spec: DatasetSpec, folder: Path, listing: dict) -> str:
    """A content key for a folder dataset: every file's relative path, size and modification time."""
    h = hashlib.sha256(f"{spec.name}:{spec.image_size}:v1\n".encode())
    for split, items in listing.items():
        for label, f in items:
            st = f.stat()
            h.update(f"{split}\t{label}\t{f.relative_to(folder)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def open_image(path) -> Image.Image:
    """Decode one image as RGB; an unreadable or damaged file is an EttError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise EttError(
            f"{path}: cannot decode this image (not a format Pillow reads); replace or remove the file"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EttError(f"{path}: cannot decode this image ({reason}); replace or remove the file") from None


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    import numpy as np

    files, size = args
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        arr = np.asarray(open_image(f))
        if arr.shape != (size, size, 3):
            raise EttError(f"{f}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
        out[i] = arr
    return out


def decode_images(files: list[Path], size: int) -> np.ndarray:
    """Decode images of one size into (N, size, size, 3) uint8, in a process pool for large sets."""
    import numpy as np

    names = [str(f) for f in files]
    workers = min(os.cpu_count() or 1, 8)
    if len(names) < 4000 or workers < 2:
        return _decode_chunk((names, size))
    from concurrent.futures import ProcessPoolExecutor

    step = -(-len(names) // (workers * 4))
    chunks = [(names[i : i + step], size) for i in range(0, len(names), step)]
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_decode_chunk, chunks)))


# --- ImageNet-style image folders ---------------------------------------------------------------------------------
def folder_datasets(spec: DatasetSpec, root: str | os.PathLike, expect_classes: int | None = None):
    """torchvision ImageFolder datasets (train, test) with the standard ImageNet transforms."""
    from torchvision import datasets, transforms

    kind, folder = find_layout(spec, Path(root).expanduser())
    if kind != "folders":
        raise EttError(f"{spec.name}: expected image folders under {root}")
    test_dir = _test_dir(spec, folder)
    classes = class_folders(spec, folder / "train", expect_classes)
    test_classes = class_folders(spec, test_dir, expect_classes)
    if [c.name for c in classes] != [c.name for c in test_classes]:
        raise EttError(f"{spec.name}: train and {test_dir.name} class folders differ under {folder}")
    normalize = transforms.Normalize(spec.mean, spec.std)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(spec.image_size, scale=(0.1, 1.0), ratio=(0.8, 1.25)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    resize = round(spec.image_size * 256 / 224)
    test_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(spec.image_size), transforms.ToTensor(), normalize]
    )
    return (
        datasets.ImageFolder(str(folder / "train"), train_tf, loader=open_image),
        datasets.ImageFolder(str(test_dir), test_tf, loader=open_image),
    )
