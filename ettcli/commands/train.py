"""``ett train``: train a ticket from its rewind step with its masks held fixed (torch imported inside)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ettcli.commands import options as opt
from ettcli.commands.common import command_line, handle_errors

TRAIN_HELP = (
    "Files in --out: config.json (the run's identity and every setting), metrics.jsonl (one line per epoch), "
    "checkpoint.pt (written atomically after every epoch and on Ctrl-C, SIGTERM or SIGHUP), summary.json and final.safetensors (the trained ticket: same "
    "keys and masks as the input). Rerunning the same command resumes an interrupted run and reports a finished "
    "one (--force trains it again). Environment: ETT_DATA (default --data-root), ETT_CACHE (decoded datasets, "
    "default ~/.cache/ett/cache), ETT_RUNS (parent of the default --out, default runs). Several processes: "
    "torchrun --nproc_per_node=N -m ettcli train ..."
)


def train(
    ticket: Annotated[Path, typer.Argument(help="The ticket to train (any layout ett reads).")],
    dataset: opt.Dataset = None,
    data_root: opt.DataRoot = None,
    download: opt.Download = False,
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    milestones: opt.Milestones = None,
    weight_decay: opt.WeightDecay = None,
    warmup: opt.Warmup = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
    compile_: opt.Compile = False,
    sync_bn: opt.SyncBn = False,
    workers: opt.Workers = None,
    threads: opt.Threads = None,
    subset: opt.Subset = None,
    recipe: opt.RecipeName = None,
    from_step: Annotated[
        str | None, typer.Option("--from-step", help="Start here instead of the ticket's rewind step (e.g. 0it).")
    ] = None,
    stop_at: Annotated[
        str | None,
        typer.Option(
            "--stop-at",
            help="Stop at this step (e.g. 1000it) and write that state as a ticket whose rewind step it is: "
            "rewind-point weights for a network that never ran IMP.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default $ETT_RUNS/<ticket>-<identity hash>).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if --out holds a finished run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout, nothing else.")] = False,
) -> None:
    """Train a ticket with its masks fixed, from its rewind step, with its dataset's recipe.

    Example: ett train r56.safetensors --dataset cifar10 --data-root ~/data/cifar10 --epochs 160
    """
    from ettcli.train import Interrupted, train_ticket

    settings = opt.settings_from(**locals())
    show = not quiet and int(os.environ.get("RANK", "0")) == 0
    progress = _Progress(sys.stderr.isatty()) if show else None
    try:
        result = train_ticket(
            ticket,
            settings,
            folder=out,
            from_step=from_step,
            stop_at=stop_at,
            force=force,
            hooks=progress.hooks() if progress else None,
            metadata={"ett.command": command_line()},
        )
    except Interrupted as exc:
        if progress:
            progress.close()
        name = signal.Signals(exc.signum).name if exc.signum else "a stop request"
        typer.echo(
            f"ett: interrupted by {name} at step {exc.step}; checkpoint saved in {exc.folder}; "
            "rerun the same command to resume",
            err=True,
        )
        raise typer.Exit(128 + (exc.signum or signal.SIGINT)) from None
    finally:
        if progress:
            progress.close()
    if int(os.environ.get("RANK", "0")) == 0:
        _report(result.summary, result.folder, as_json, finished=result.already_finished)
        if result.late_signal:
            name = signal.Signals(result.late_signal).name
            typer.echo(f"ett: {name} arrived after the run was complete; it is kept", err=True)


def register(app: typer.Typer) -> None:
    app.command(epilog=TRAIN_HELP)(handle_errors(train))


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

        return Hooks(start=self.start, step=self.step, epoch=self.epoch, info=self.info)

    def info(self, line: str) -> None:
        typer.echo(line, err=True)

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
