"""How to train a ticket, declared once: :class:`TrainSettings`, its choices, help text and identity rule.

Every field carries what the front ends need (``help``: the option's help text; ``choices``; ``study``: what
a study's ``[train]`` key expects, for the keys a study may set; ``identity``: whether it changes a run's
result), so the options of ``ett train``, ``ett prune imp`` and ``ett lmc``, the study's ``[train]`` table
and every run's identity are generated from this one declaration. Pure Python: no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ettcli.data import DATASETS
from ettcli.errors import EttError
from ettcli.recipe import COMPILE_MODES, RECIPES

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _setting(default, help: str, *, choices: tuple[str, ...] | None = None, study: str | None = None,
             study_check: str | None = None, identity: bool | str = True, always: bool = False,
             resolved: bool = False):  # fmt: skip
    """A field of :class:`TrainSettings`. ``study``: what a study's ``[train]`` key expects (None: not a study
    key), checked as ``study_check`` says; ``always``: the study records it even when not given.
    ``identity`` says whether it counts toward a run's identity: True, False (it never changes a result: where
    the data lives, worker counts) or ``"if_set"`` (only when it is not the default, so that the runs named
    before it existed keep their names); ``resolved``: a training run counts it through what it resolves to
    (the dataset, the recipe, the device, the precision) rather than as given."""
    meta = {"help": help, "choices": choices, "study": study, "study_check": study_check, "identity": identity,
            "always": always, "resolved": resolved}  # fmt: skip
    return field(default=default, metadata=meta)


def _choose(choices) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


@dataclass(frozen=True)
class TrainSettings:
    """How to train a ticket. ``None`` takes the recipe's (or the environment's) value."""

    dataset: str | None = _setting(
        None, f"One of {DATASETS.choices()} (default: the ticket's, else its family's).", resolved=True
    )  # default: the ticket's ett.dataset, else its family's dataset
    data_root: str | None = _setting(
        None,
        "Folder holding the dataset: train/<class>/ and test/<class>/ image folders, or torchvision's "
        "cifar-10-batches-py/ (default $ETT_DATA, else ~/.cache/ett/data).",
        identity=False,
    )
    download: bool = _setting(False, "Fetch CIFAR with torchvision's downloader first.", identity=False)
    epochs: int | None = _setting(
        None,
        "Training length in epochs; the schedule keeps its shape.",
        study="a positive integer",
        study_check="positive_int",
        resolved=True,
    )  # milestones and warmup keep their fractions
    batch_size: int | None = _setting(
        None,
        "Images per step over all processes.",
        study="a positive integer",
        study_check="positive_int",
        resolved=True,
    )
    lr: float | None = _setting(
        None, "Peak learning rate.", study="a positive number", study_check="positive", resolved=True
    )
    milestones: str | None = _setting(
        None,
        "Steps where lr *= 0.1, e.g. 80ep,120ep (bare numbers are epochs).",
        study="text such as '80ep,120ep'",
        study_check="steps",
        resolved=True,
    )
    weight_decay: float | None = _setting(
        None, "L2 penalty.", study="a number, 0 or more", study_check="non_negative", resolved=True
    )
    warmup: str | None = _setting(
        None,
        "Linear warmup length, e.g. 5ep or 500it.",
        study="text such as '5ep' or '500it'",
        study_check="warmup",
        resolved=True,
    )
    seed: int = _setting(0, "Seed of the data order and augmentation.")
    device: str = _setting(
        "auto", "auto, cpu or cuda.", choices=DEVICES, study="'auto', 'cpu' or 'cuda'", study_check="choice",
        always=True,
        resolved=True,
    )  # fmt: skip
    precision: str = _setting(
        "auto",
        "auto (bf16 where the hardware has it natively, else fp16 on GPUs, fp32 on CPUs), fp32, bf16 or fp16.",
        choices=PRECISIONS,
        study="'auto', 'fp32', 'bf16' or 'fp16'",
        study_check="choice",
        always=True,
        resolved=True,
    )
    compile: bool = _setting(
        False,
        "torch.compile the training step (one batch shape: an epoch's partial last batch and evaluation "
        "run eagerly, so the images and the results are those of an uncompiled run). Compile time is reported "
        "apart from training time.",
        study="true or false",
        study_check="bool",
        always=True,
    )
    compile_mode: str = _setting(
        "default",
        "With --compile: default, reduce-overhead (CUDA graphs: for small networks whose step is bound by "
        "kernel launches), max-autotune or max-autotune-no-cudagraphs.",
        choices=COMPILE_MODES,
        study="'default', 'reduce-overhead' (CUDA graphs), 'max-autotune' or 'max-autotune-no-cudagraphs'",
        study_check="choice",
        identity="if_set",
    )  # only when given: the jobs' names stay those of studies written before it
    deterministic: bool = _setting(
        False,
        "Deterministic GPU kernels only (no cuDNN autotuning): reruns and resumes are bit-identical, a little slower.",
        study="true or false (deterministic GPU kernels: bit-identical reruns)",
        study_check="bool",
        identity="if_set",
    )
    sync_bn: bool = _setting(
        False,
        "Synchronise BatchNorm statistics across processes (CUDA, torchrun). open_lth has no such option: "
        "off by default, each process normalises over its own share of the batch.",
    )
    workers: int | None = _setting(
        None,
        "DataLoader workers for image-folder datasets.",
        study="an integer, 0 or more",
        study_check="int",
        identity=False,
    )
    threads: int | None = _setting(
        None,
        "CPU threads (default: OMP_NUM_THREADS where set, else the CPUs this process may use; more than "
        "those is lowered to them). Use 1 on a busy machine.",
        identity=False,
    )
    subset: int | None = _setting(
        None,
        "Train on N training images, class-balanced and the same for every seed (CIFAR-style datasets).",
        study="a positive integer (train on a seeded, class-balanced subset of this many images)",
        study_check="positive_int",
        identity="if_set",
    )  # the same images for every seed
    recipe: str | None = _setting(
        None,
        f"Training recipe, one of {RECIPES.choices()} (default: the family's own, vit for cifar_vit, else the "
        "dataset's); the options above override its values.",
        choices=tuple(RECIPES),
        study="a registered training recipe name (default: the family's own, else the dataset's)",
        study_check="choice",
        identity="if_set",
        resolved=True,
    )  # a run counts the recipe it resolved to

    def check(self) -> None:
        """Refuse values that cannot train, before any work is done."""
        if self.epochs is not None and self.epochs <= 0:
            raise EttError(f"epochs {self.epochs}: training needs at least 1 epoch")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise EttError(f"{name.replace('_', ' ')} {value}: must be a finite number")
        if self.workers is not None and self.workers < 0:
            raise EttError(f"workers {self.workers}: must be 0 (load in the main process) or more")
        if self.subset is not None and self.subset < 1:
            raise EttError(f"subset {self.subset}: must be at least 1 image")
        if self.threads is not None and self.threads < 1:
            raise EttError(f"threads {self.threads}: must be at least 1")
        for f in fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) is not None and getattr(self, f.name) not in choices:
                raise EttError(f"{f.name.replace('_', ' ')} {getattr(self, f.name)}: choose {_choose(choices)}")

    def identity(self, resolved: dict | None = None) -> dict:
        """The settings that count toward a run's identity, the one rule for every kind of run: every field
        but those that never change a result (:data:`NOT_IDENTITY`: where the data lives, whether it was
        downloaded, workers, threads), and the ``"if_set"`` ones only when set. ``resolved`` (a training
        run's dataset, recipe, device and precision) stands in for the fields that resolve to them."""
        out = {}
        for f in fields(self):
            value, rule = getattr(self, f.name), f.metadata["identity"]
            if (
                not rule
                or (rule == "if_set" and value == f.default)
                or (resolved is not None and f.metadata["resolved"])
            ):
                continue
            out[f.name] = value
        return {**out, **(resolved or {})}


NOT_IDENTITY = tuple(f.name for f in fields(TrainSettings) if not f.metadata["identity"])


def dataset_of(ticket, name: str | None = None):
    """The dataset a ticket trains on: ``name``, else the ticket's ``ett.dataset``, else its family's."""
    from ettcli.data import get_dataset
    from ettcli.recipe import FAMILY_DEFAULTS

    return get_dataset(name or ticket.metadata.get("ett.dataset") or FAMILY_DEFAULTS.lookup(ticket.arch.family).dataset)


def dataset_for(ticket, name: str | None = None, where=None):
    """:func:`dataset_of`, refused unless its class count is the ticket's classifier's (``where``: the ticket as
    the message names it, default its path)."""
    ds = dataset_of(ticket, name)
    spec = ticket.arch
    if spec.num_classes != ds.num_classes:
        head = next((n for n, t in spec.tensors.items() if t.role == "head" and n.endswith("weight")), None)
        shape = f" ({head} {list(spec.tensors[head].shape)})" if head else ""
        raise EttError(
            f"{where or ticket.path or 'the ticket'}: its classifier has {spec.num_classes} outputs{shape} but "
            f"{ds.name} has {ds.num_classes} classes; pick a matching dataset"
        )
    return ds


def setting_fields():
    """The fields of :class:`TrainSettings` in declaration order (each with its help, choices and study key)."""
    return fields(TrainSettings)


def flag(name: str) -> str:
    """The command-line flag of a setting: ``--batch-size`` for ``batch_size``."""
    return "--" + name.replace("_", "-")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else an EttError that lists them (``what``: the setting's name)."""
    if value not in choices:
        raise EttError(f"{what} {value}: choose {_choose(choices)}")
    return value
