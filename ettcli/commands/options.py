"""Training options, declared once: ``ett train``, ``ett prune imp`` and later commands take the same flags.

Each alias is a ``typing.Annotated`` type that carries its Typer option; :func:`settings_from` turns the
values into the core's :class:`~ettcli.train.TrainSettings` (imported lazily: no torch here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ettcli.data import DATASETS
from ettcli.recipe import RECIPES

Dataset = Annotated[
    str | None,
    typer.Option("--dataset", help=f"One of {DATASETS.choices()} (default: the ticket's, else its family's)."),
]
DataRoot = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Folder holding the dataset: train/<class>/ and test/<class>/ image folders, or torchvision's "
        "cifar-10-batches-py/ (default $ETT_DATA, else ~/.cache/ett/data).",
    ),
]
Download = Annotated[bool, typer.Option("--download", help="Fetch CIFAR with torchvision's downloader first.")]
Epochs = Annotated[
    int | None, typer.Option("--epochs", help="Training length in epochs; the schedule keeps its shape.")
]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Images per step over all processes.")]
Lr = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
Milestones = Annotated[
    str | None, typer.Option("--milestones", help="Steps where lr *= 0.1, e.g. 80ep,120ep (bare numbers are epochs).")
]
WeightDecay = Annotated[float | None, typer.Option("--weight-decay", help="L2 penalty.")]
Warmup = Annotated[str | None, typer.Option("--warmup", help="Linear warmup length, e.g. 5ep or 500it.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the data order and augmentation.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (bf16 where the hardware has it natively, else fp16 on GPUs, fp32 on CPUs), fp32, bf16 or fp16.",
    ),
]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
SyncBn = Annotated[
    bool,
    typer.Option(
        "--sync-bn",
        help="Synchronise BatchNorm statistics across processes (CUDA, torchrun). open_lth has no such option: "
        "off by default, each process normalises over its own share of the batch.",
    ),
]
Workers = Annotated[int | None, typer.Option("--workers", help="DataLoader workers for image-folder datasets.")]
Subset = Annotated[
    int | None,
    typer.Option(
        "--subset",
        help="Train on N training images, class-balanced and the same for every seed (CIFAR-style datasets).",
    ),
]
RecipeName = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help=f"Training recipe, one of {RECIPES.choices()} (default: the family's own, vit for cifar_vit, else "
        "the dataset's); the options above override its values.",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads (default: the cores this process may use). Use 1 on a busy machine."),
]


def settings_from(
    dataset=None,
    data_root=None,
    download=False,
    epochs=None,
    batch_size=None,
    lr=None,
    milestones=None,
    weight_decay=None,
    warmup=None,
    seed=0,
    device="auto",
    precision="auto",
    compile_=False,
    sync_bn=False,
    workers=None,
    threads=None,
    subset=None,
    recipe=None,
    **_,
):
    """The core settings from option values (extra keyword arguments, the command's own, are ignored)."""
    from ettcli.train import TrainSettings

    return TrainSettings(
        dataset=dataset,
        data_root=str(data_root) if data_root else None,
        download=download,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        milestones=milestones,
        weight_decay=weight_decay,
        warmup=warmup,
        seed=seed,
        device=device,
        precision=precision,
        compile=compile_,
        sync_bn=sync_bn,
        workers=workers,
        threads=threads,
        subset=subset,
        recipe=recipe,
    )
