"""open_lth / ElasticLTH level folders: reading one as a ticket, and exporting a ticket as one.

open_lth stores a lottery run as ``lottery_<hash>/replicate_R/level_L/main/``. A level folder holds

* ``mask.pth``: a dict name -> int 0/1 tensor over every prunable tensor;
* ``model_ep{E}_it{I}.pth``: plain state dicts, one at the level's start step (the rewind step; step 0
  without rewinding) and one at its end (e.g. ``model_ep2_it218.pth`` and ``model_ep160_it0.pth``);
* ``checkpoint.pth``, ``logger``, ``sparsity_report.json``: training state and reports;
* ``hparams.log`` (open_lth writes it in ``level_0/main`` only): every non-default hyperparameter, one
  section per group, e.g. ``Pretraining Training Hyperparameters`` with ``* training_steps => 1000it``
  when the run rewinds to iteration 1000.

The rewind point is the level's start step, never its end: ``hparams.log`` says which it is (looked up in
the folder, then in ``level_0/main`` of the same replicate); without one, one model file is the start and
of two the earlier is; more than two need an explicit step. Steps in file names count epochs at open_lth's
iterations per epoch: ceil(training images / batch size), 391 for CIFAR-10 at 128 and 1252 for ImageNet at
1024, so ``1000it`` is ``model_ep2_it218.pth``.
"""

from __future__ import annotations

import math
import re
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from ettcli.arch import strip_wrappers
from ettcli.errors import EttError
from ettcli.steps import Step, parse_step
from ettcli.stfile import atomic_path, sha256_files, write_error
from ettcli.torchfile import load_arrays, save_torch

if TYPE_CHECKING:
    import numpy as np

    from ettcli.ticket import Ticket

MODEL_FILE = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")
MASK = "mask.pth"
HPARAMS = "hparams.log"
LEVEL_FILES = (MASK, HPARAMS, "checkpoint.pth", "logger", "sparsity_report.json")  # as open_lth names them
_FIELD = re.compile(r"^\s+\* (\w+) => (.*)$")


# --- reading ---------------------------------------------------------------------------------------------
def read_level(
    folder: str | Path, rewind_step: str | None = None
) -> tuple[Path, dict[str, np.ndarray], dict[str, str]]:
    """Read a level folder (or the level above its ``main/``) at its rewind step: the folder read, the model
    file's tensors and the masks (as ``X_mask``) under the family's plain names, and the metadata;
    :func:`ettcli.ticket.read_ticket` makes the ticket of them.

    ``rewind_step`` (``1000it``, ``2ep218it``) names the model file to take, overriding ``hparams.log``; a
    step in iterations matches the file of the same iteration. The metadata records the rewind step, the
    model file used (``ett.source_model``) and ``ett.source_sha256``: the sha256 of ``mask.pth``'s bytes
    followed by the model file's bytes.
    """
    folder = Path(folder)
    if not (folder / MASK).exists() and (folder / "main" / MASK).exists():
        folder = folder / "main"
    mask_file = folder / MASK
    models = sorted(((int(m[1]), int(m[2])), p) for p in folder.iterdir() if (m := MODEL_FILE.match(p.name)))
    if not mask_file.exists() or not models:
        raise EttError(f"{folder}: not an open_lth level folder: expected mask.pth and model_ep{{E}}_it{{I}}.pth files")
    model_file, step, meta = _rewind_model(folder, models, rewind_step)
    state = _unwrapped(load_arrays(model_file), str(model_file))
    for name, v in _unwrapped(load_arrays(mask_file), str(mask_file)).items():
        if name not in state:
            raise EttError(f"{mask_file}: mask for '{name}' has no tensor in {model_file.name}")
        state[name + "_mask"] = v
    meta.update(
        {
            "ett.rewind_step": str(step),
            "ett.source": str(folder),
            "ett.source_model": model_file.name,
            "ett.source_sha256": sha256_files([mask_file, model_file]),
        }
    )
    return folder, state, meta


def _unwrapped(values: dict, where: str) -> dict:
    """``values`` under the family's plain names (wrapper prefixes that every name shares removed)."""
    plain = strip_wrappers(values, where)
    return {plain[k]: v for k, v in values.items()}


def _rewind_model(folder: Path, models: list, rewind_step: str | None) -> tuple[Path, Step, dict]:
    """The model file at the rewind step, the step, and metadata learned on the way (the dataset)."""
    found = ", ".join(str(Step(*s)) for s, _ in models)
    hparams = _find_hparams(folder)
    step, dataset, per_epoch = read_hparams(hparams) if hparams is not None else (None, None, None)
    meta = {"ett.dataset": dataset} if dataset else {}
    if rewind_step is not None:
        step, said = parse_step(rewind_step), "--rewind-step"
    elif hparams is not None:
        said = str(hparams)
    elif len(models) <= 2:  # the level's start (the rewind point) and, once trained, its end
        (ep, it), path = models[0]
        return path, Step(ep, it), meta
    else:
        raise EttError(
            f"{folder}: {len(models)} model files (steps {found}) and no {HPARAMS} to say which is the rewind "
            f"point; name it, e.g. ett convert {folder} --rewind-step {Step(*models[0][0])} -o ticket.safetensors"
        )
    hits = [p for s, p in models if _same_step(s, step, per_epoch)]
    if len(hits) != 1:
        what = "no model file" if not hits else f"{len(hits)} model files"
        raise EttError(
            f"{folder}: rewind step {step} (from {said}) matches {what} there (steps found: {found}); "
            "name one of those with --rewind-step"
        )
    return hits[0], step, meta


def _same_step(file_step: tuple[int, int], step: Step, per_epoch: int | None) -> bool:
    """Whether model_ep{E}_it{I} is ``step``: at ``per_epoch`` iterations an epoch where it is known, else
    when written the same way or when the two are the same iteration at some whole number of iterations an
    epoch greater than I (``1000it`` is ``model_ep2_it218.pth`` at 391)."""
    ep, it = file_step
    if per_epoch:
        return ep * per_epoch + it == step.iterations(per_epoch)
    if (ep, it) == (step.ep, step.it):
        return True
    if ep == step.ep:
        return False
    p, rest = divmod(step.it - it, ep - step.ep)
    return rest == 0 and p > it


def _find_hparams(folder: Path) -> Path | None:
    here = folder / HPARAMS
    if here.is_file():
        return here
    level = folder.parent
    if re.fullmatch(r"level_\d+", level.name):  # open_lth writes it once per replicate, in level_0/main
        there = level.parent / "level_0" / folder.name / HPARAMS
        if there.is_file():
            return there
    return None


def parse_hparams(path: Path) -> dict[str, dict[str, str]]:
    """An ``hparams.log``: section title -> {field: value}, values as written."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        if m := _FIELD.match(line):
            if current is None:
                raise EttError(f"{path}: not an open_lth hparams.log: field '{m[1]}' before any section title")
            current[m[1]] = m[2].strip()
        elif not line[0].isspace():
            current = sections.setdefault(line.strip(), {})
        else:
            raise EttError(f"{path}: not an open_lth hparams.log: unexpected line '{line.strip()[:60]}'")
    return sections


def read_hparams(path: Path) -> tuple[Step, str | None, int | None]:
    """The rewind step an ``hparams.log`` records (0 without rewinding), its dataset if ett knows it, and the
    iterations per epoch (None where the dataset or batch size is unknown)."""
    sections = parse_hparams(path)
    text = sections.get("Pretraining Training Hyperparameters", {}).get("training_steps", "0it")
    try:
        step = parse_step(text)
    except EttError as exc:
        raise EttError(f"{path}: {exc}") from None
    data = sections.get("Dataset Hyperparameters", {})
    dataset, per_epoch = data.get("dataset_name"), None
    from ettcli.data import DATASETS

    if dataset not in DATASETS:
        return step, None, None
    try:
        batch = int(data.get("batch_size", ""))
        fraction = float(data.get("subsample_fraction", "1"))
    except ValueError:
        return step, dataset, None
    if batch > 0:
        per_epoch = math.ceil(DATASETS[dataset].train_size * fraction / batch)
    return step, dataset, per_epoch


# --- writing ---------------------------------------------------------------------------------------------
def open_lth_epoch(ticket: Ticket) -> tuple[str, int, int]:
    """(dataset, batch size, iterations per epoch) that open_lth's step names assume for this ticket.

    The dataset is the ticket's (``ett.dataset``) or its family's default; the batch size is that dataset's
    recipe's (CIFAR 128, ImageNet 1024), as in open_lth's defaults.
    """
    from ettcli.recipe import recipe_for
    from ettcli.settings import dataset_of

    ds = dataset_of(ticket)
    batch = recipe_for(ds.name, ticket.arch.family).batch_size
    return ds.name, batch, math.ceil(ds.train_size / batch)


def write_open_lth(ticket: Ticket, folder: str | Path, step: str | None = None, *, force: bool = False) -> Path:
    """Export ``ticket`` as an open_lth level folder; returns the model file written.

    Writes ``mask.pth`` (int 0/1 over every prunable tensor), the weights as ``model_ep{E}_it{I}.pth`` at the
    rewind step (``step``, else the ticket's, else 0) in open_lth's epochs, and an ``hparams.log`` recording
    the dataset, batch size, model and rewind step, so that reading the folder back gives the same ticket
    and step. A folder that holds anything is refused unless ``force``, which first clears the level files
    open_lth would read (model files, mask, hparams.log, checkpoint.pth, logger, sparsity report): an old
    model file beside a new mask would be read as one ticket. Nothing is left behind on failure.
    """
    import torch

    folder = Path(folder)
    rewind = parse_step(step or ticket.metadata.get("ett.rewind_step") or "0it")
    dataset, batch, per_epoch = open_lth_epoch(ticket)
    ep, it = divmod(rewind.iterations(per_epoch), per_epoch)
    model_name = f"model_ep{ep}_it{it}.pth"
    if folder.exists() and not folder.is_dir():
        raise EttError(f"{folder}: exists and is not a folder; an open_lth level is a folder: choose another path")
    if not folder.parent.is_dir():
        raise EttError(f"{folder}: its folder {folder.parent} does not exist; create it or choose another path")
    created = not folder.exists()
    stale: list[Path] = []
    if not created:
        entries = sorted(folder.iterdir())
        if entries and not force:
            raise EttError(
                f"{folder}: is not empty (holds {entries[0].name}{' and more' if len(entries) > 1 else ''}); "
                "choose a new folder, or pass --force to replace the open_lth level files in it"
            )
        stale = [p for p in entries if (MODEL_FILE.match(p.name) and p.name != model_name) or p.name in LEVEL_FILES]
    import numpy as np

    state = {n: torch.from_numpy(np.array(a)) for n, a in ticket.arrays()}
    masks = {n: torch.from_numpy(ticket.mask(n).array.astype(np.int32)) for n in ticket.prunable()}
    hparams = _hparams_text(ticket.arch.name, dataset, batch, rewind)
    if created:
        try:
            folder.mkdir()
        except OSError as exc:
            raise write_error(folder, exc) from None
    try:
        for path in stale:  # first: an interrupted export must never pair an old file with new ones
            path.unlink()
        with ExitStack() as stack:
            tmp = {name: stack.enter_context(atomic_path(folder / name)) for name in (MASK, model_name, HPARAMS)}
            save_torch(masks, tmp[MASK])
            save_torch(state, tmp[model_name])
            tmp[HPARAMS].write_text(hparams, encoding="utf-8")
    except BaseException as exc:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if isinstance(exc, OSError):
            raise write_error(Path(exc.filename or folder), exc) from None
        raise
    return folder / model_name


def _hparams_text(model: str, dataset: str, batch: int, rewind: Step) -> str:
    """The sections of open_lth's hparams.log that ett knows (its Desc.save layout, sections sorted)."""
    data = f"    * dataset_name => {dataset}\n    * batch_size => {batch}\n"
    text = f"Dataset Hyperparameters\n{data}Model Hyperparameters\n    * model_name => {model}\n"
    if rewind != Step():
        text += f"Pretraining Dataset Hyperparameters\n{data}"
        text += f"Pretraining Training Hyperparameters\n    * training_steps => {rewind}\n"
    return text
