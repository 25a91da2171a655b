"""``ett train``: train a ticket from its rewind step with its masks held fixed (torch imported inside)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import typer

from ettcli.commands.common import handle_errors
from ettcli.errors import EttError

TRAIN_HELP = (
    "Files in --out: config.json (every setting), metrics.jsonl (one line per epoch), checkpoint.pt (written "
    "atomically after every epoch and on Ctrl-C), summary.json and final.safetensors (the trained ticket: same "
    "keys and masks as the input). Rerunning the same command resumes an interrupted run and reports a finished "
    "one (--force trains it again). Environment: ETT_DATA (default --data-root), ETT_CACHE (decoded datasets, "
    "default ~/.cache/ett/cache), ETT_RUNS (parent of the default --out, default runs). Several processes: "
    "torchrun --nproc_per_node=N -m ettcli train ..."
)


def register(app: typer.Typer) -> None:
    from ettcli.data import DATASETS

    @app.command(epilog=TRAIN_HELP)
    @handle_errors
    def train(
        ticket: Path = typer.Argument(..., help="The ticket to train (any layout ett reads)."),
        dataset: str = typer.Option(
            None, "--dataset", help=f"One of {', '.join(DATASETS)} (default: the ticket's, else its family's)."
        ),
        data_root: Path = typer.Option(
            None, "--data-root", help="Folder holding the dataset (default $ETT_DATA, else ~/.cache/ett/data)."
        ),
        download: bool = typer.Option(False, "--download", help="Fetch CIFAR with torchvision's downloader first."),
        epochs: int = typer.Option(None, "--epochs", help="Training length in epochs; the schedule keeps its shape."),
        batch_size: int = typer.Option(None, "--batch-size", help="Images per step over all processes."),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
        milestones: str = typer.Option(
            None, "--milestones", help="Steps where lr *= 0.1, e.g. 80ep,120ep (bare numbers are epochs)."
        ),
        weight_decay: float = typer.Option(None, "--weight-decay", help="L2 penalty."),
        warmup: str = typer.Option(None, "--warmup", help="Linear warmup length, e.g. 5ep or 500it."),
        seed: int = typer.Option(0, "--seed", help="Seed of the data order and augmentation."),
        from_step: str = typer.Option(
            None, "--from-step", help="Start here instead of the ticket's rewind step (e.g. 0it, 2ep218it)."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        precision: str = typer.Option(
            "auto", "--precision", help="auto (bf16 where the hardware has it), fp32, bf16 or fp16."
        ),
        compile_: bool = typer.Option(False, "--compile", help="torch.compile the model."),
        workers: int = typer.Option(None, "--workers", help="DataLoader workers for image-folder datasets."),
        out: Path = typer.Option(None, "--out", help="Run folder (default runs/<ticket>-<settings hash>)."),
        force: bool = typer.Option(False, "--force", help="Train again even if --out holds a finished run."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout, nothing else."),
    ) -> None:
        """Train a ticket with its masks fixed, from its rewind step, with its family's recipe."""
        settings = dict(locals())
        run_train(**settings)


def run_train(
    ticket: Path,
    dataset: str | None = None,
    data_root: Path | None = None,
    download: bool = False,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    milestones: str | None = None,
    weight_decay: float | None = None,
    warmup: str | None = None,
    seed: int = 0,
    from_step: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile_: bool = False,
    workers: int | None = None,
    out: Path | None = None,
    force: bool = False,
    quiet: bool = False,
    as_json: bool = False,
) -> dict:
    """The ``train`` command as a function: validate, load, train, render."""
    from ettcli.data import default_data_root, get_dataset
    from ettcli.recipe import customise, recipe_for
    from ettcli.steps import parse_step
    from ettcli.stfile import sha256_file
    from ettcli.ticket import read_ticket

    if epochs is not None and epochs <= 0:
        raise EttError(f"--epochs {epochs}: training needs at least 1 epoch")
    tk = read_ticket(ticket)
    spec = tk.arch
    base = recipe_for(spec.family)
    ds = get_dataset(dataset or tk.metadata.get("ett.dataset") or base.dataset)
    if spec.num_classes != ds.num_classes:
        head = next(n for n, t in spec.tensors.items() if t.role == "head" and n.endswith("weight"))
        raise EttError(
            f"{ticket}: its classifier has {spec.num_classes} outputs ({head} {list(spec.tensors[head].shape)}) "
            f"but {ds.name} has {ds.num_classes} classes; pick a matching --dataset"
        )
    start = parse_step(from_step or tk.metadata.get("ett.rewind_step") or "0it")
    root = Path(data_root).expanduser() if data_root else default_data_root()

    import torch

    from ettcli import train as core
    from ettcli.models import build_model

    build_model(spec, seed=None, init=False)  # an architecture no model exists for fails here, before any data
    rank, world, local = _dist_env()
    dev = core.resolve_device(device)
    prec = core.resolve_precision(precision, dev)
    if dev == "cuda":
        torch.cuda.set_device(local)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev == "cuda" else "gloo")
    try:
        torch_device = torch.device(dev, local if dev == "cuda" else None)
        batch = batch_size or base.batch_size
        if batch < world:
            raise EttError(f"--batch-size {batch} is smaller than the {world} processes")
        if ds.kind == "memory":
            from ettcli.data import load_memory_dataset

            # rank 0 downloads and decodes first; the others then read its cache
            failed = None
            if rank == 0:
                try:
                    data = load_memory_dataset(ds, root, download=download)
                except EttError as exc:  # reach the barrier anyway: the other ranks then fail on their own
                    failed = exc
            if world > 1:
                torch.distributed.barrier()
            if failed is not None:
                raise failed
            if rank != 0:
                data = load_memory_dataset(ds, root)
            n_train = len(data.train_y)
        else:
            from ettcli.data import folder_datasets

            train_ds, test_ds = folder_datasets(ds, root)
            n_train = len(train_ds)
        per_epoch = core.iterations_per_epoch(n_train, batch, world)
        if per_epoch == 0:
            raise EttError(f"{ds.name} under {root} has {n_train} training images, fewer than one batch of {batch}")
        recipe = customise(
            base,
            per_epoch,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            milestones=milestones,
            weight_decay=weight_decay,
            warmup=warmup,
        )
        recipe = dataclasses.replace(recipe, dataset=ds.name)
        nworkers = workers if workers is not None else min(8, os.cpu_count() or 1)
        cfg = core.TrainConfig(
            ticket=str(ticket),
            ticket_sha256=sha256_file(ticket) if Path(ticket).is_file() else "",
            arch=spec.name,
            dataset=ds.name,
            recipe=recipe.as_dict(),
            start_step=str(start),
            seed=seed,
            device=dev,
            precision=prec,
            compile=compile_,
            world_size=world,
            data_root=str(root),
            workers=nworkers,
        )
        if out is None:
            stem = Path(ticket).name.split(".")[0] or "ticket"
            out = Path(os.environ.get("ETT_RUNS", "runs")) / f"{stem}-{cfg.short_hash()}"
        out = Path(out)
        state = core.prepare_out(out, cfg, force)
        if world > 1:
            torch.distributed.barrier()
        if state == "finished":
            summary = json.loads((out / core.SUMMARY).read_text())
            if rank == 0:
                _report(summary, out, as_json, finished=True)
            return summary
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if state == "fresh":
                (out / core.METRICS).unlink(missing_ok=True)
                (out / core.CHECKPOINT).unlink(missing_ok=True)
            core._write_json(out / core.CONFIG, {"identity": cfg.identity(), "settings": cfg.__dict__})
        if world > 1:
            torch.distributed.barrier()
        if ds.kind == "memory":
            feeder = core.MemoryFeeder(data, ds, recipe.batch_size, torch_device, seed, rank, world)
        else:
            feeder = core.FolderFeeder(train_ds, test_ds, recipe.batch_size, torch_device, seed, nworkers, rank, world)
        show = rank == 0 and not quiet
        progress = _Progress(sys.stderr.isatty()) if show else None
        if show and state == "resume":
            typer.echo(f"resuming {out}", err=True)
        hooks = progress.hooks() if progress else None
        try:
            summary = core.train(cfg, recipe, tk, feeder, out, state, hooks, (rank, world))
        except core.Interrupted as exc:
            if progress:
                progress.close()
            typer.echo(
                f"ett: interrupted at step {exc.step}; checkpoint saved in {exc.out}; rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            if progress:
                progress.close()
            typer.echo(
                f"ett: interrupted; the last epoch's checkpoint is in {out}; rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(130) from None
        if progress:
            progress.close()
        if rank == 0:
            _report(summary, out, as_json, finished=False)
        return summary
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _report(summary: dict, out: Path, as_json: bool, finished: bool) -> None:
    if as_json:
        typer.echo(json.dumps({**summary, "out": str(out), "already_finished": finished}))
        return
    what = "already finished (pass --force to train again)" if finished else "trained"
    typer.echo(
        f"{out}: {what}; test accuracy {100 * summary['final_test_accuracy']:.2f}% "
        f"(best {100 * summary['best_test_accuracy']:.2f}%), sparsity {100 * summary['sparsity']:.2f}%, "
        f"{summary['images_per_second']:.0f} images/s on {summary['device']} {summary['precision']}, "
        f"{summary['seconds']:.1f} s"
    )


class _Progress:
    """Rich bars (epochs and batches) on a terminal; one plain line per epoch otherwise. Both on stderr."""

    def __init__(self, tty: bool):
        self.tty = tty
        self.bar = None

    def hooks(self):
        from ettcli.train import Hooks

        return Hooks(start=self.start, step=self.step, epoch=self.epoch)

    def start(self, total: int, per_epoch: int, step: int) -> None:
        self.per_epoch, self.total = per_epoch, total
        if not self.tty:
            typer.echo(f"training {total - step} steps ({per_epoch} per epoch) from step {step}", err=True)
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.epochs = self.bar.add_task("epochs", total=total // per_epoch, completed=step // per_epoch, info="")
        self.batches = self.bar.add_task("batches", total=per_epoch, completed=step % per_epoch, info="")

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.batches, completed=(step - 1) % self.per_epoch + 1)

    def epoch(self, row: dict) -> None:
        line = (
            f"epoch {row['epoch']} ({row['step']}): lr {row['lr']:.4g}, train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_accuracy']:.2f}%, test loss {row['test_loss']:.4f} "
            f"acc {100 * row['test_accuracy']:.2f}%, {row['images_per_second']:.0f} images/s"
        )
        if self.bar is None:
            typer.echo(line, err=True)
            return
        info = f"loss {row['train_loss']:.3f}  test {100 * row['test_accuracy']:.2f}%"
        self.bar.update(self.epochs, completed=row["epoch"], info=info)
        self.bar.update(self.batches, completed=0)
        self.bar.console.print(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
