"""Masked training of a ticket: faithful to open_lth's recipes, resumable, quick on CPUs and GPUs.

:func:`train_ticket` is the one entry point: ``ett train``, IMP levels and study jobs all call it. Read top
to bottom:

1. :class:`TrainSettings`: how to train (recipe overrides, seed, device, precision, ...), shared by every
   caller; ``None`` means the recipe's value.
2. :func:`train_ticket` resolves them against the ticket and the data (dataset, recipe, start and end
   steps, device and precision), names the run by an identity that covers the ticket's content, asks the
   :class:`~ettcli.runs.RunFolder` whether that run is fresh, resumable or finished, and builds a feeder.
3. :func:`run_loop` trains: the lr is set per iteration from the recipe, masks are re-applied after every
   optimizer step, loss and accuracy accumulate on the device and are read once per epoch, a checkpoint
   (:class:`LoopState` plus model and optimizer) is written after every epoch, and a stop request (a
   signal, or ``hooks.stop``) writes one at the current step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ettcli.cpus import threads_for, usable_cpus
from ettcli.data import DatasetSpec, default_data_root
from ettcli.errors import EttError, Interrupted, Terminated, final_output, take_held_signal, warn
from ettcli.feeders import Feeder, FolderFeeder, MemoryFeeder, iterations_per_epoch
from ettcli.models import Masker, build_model, model_from_ticket, ticket_from_model
from ettcli.recipe import Recipe, customise, recipe_for
from ettcli.runs import CHECKPOINT, FINAL, REWIND, SUMMARY, RunFolder, stem_of
from ettcli.settings import DEVICES, PRECISIONS, TrainSettings, check_choice, dataset_for
from ettcli.steps import Step, format_step, parse_step
from ettcli.ticket import Ticket, as_ticket, read_ticket

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


# --- settings: TrainSettings is declared in ettcli.settings; here, what they resolve to ---------------------------
def resolve_device(choice: str, index: int = 0) -> str:
    """``auto``: CUDA where a GPU this PyTorch build can run is present, else the CPU.

    A GPU that the build has no kernels for (:func:`check_cuda_device`) is refused, under ``auto`` too:
    ``torch.cuda.is_available()`` is true on it, and the first kernel would fail.
    """
    check_choice("device", choice, DEVICES)
    if choice == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if choice == "cuda":
            raise EttError("device cuda: no CUDA device is available here; use cpu or auto")
        return "cpu"
    check_cuda_device(index)
    return "cuda"


def _arch_ok(cap: tuple[int, int], archs: list[str]) -> bool:
    """Whether a device of compute capability ``cap`` runs code from a build for ``archs``.

    ``sm_XY`` machine code runs on devices of major X and minor >= Y (``sm_90a``, ``sm_100f``: the same
    rule, or stricter); ``compute_XY`` PTX is compiled by the driver for any device of capability >= X.Y.
    """
    have = cap[0] * 10 + cap[1]
    for a in archs:
        m = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", a)
        if not m:
            continue
        v = int(m.group(2))
        if m.group(1) == "sm" and v // 10 == cap[0] and v % 10 <= cap[1]:
            return True
        if m.group(1) == "compute" and not m.group(3) and v <= have:
            return True
    return False


def check_cuda_device(index: int) -> tuple[int, int]:
    """The compute capability of GPU ``index``; an EttError if this PyTorch build has no kernels for it.

    Which build to install: CUDA 12.6 wheels carry sm_50 to sm_90 (Maxwell to Hopper), CUDA 12.8 and
    later ones sm_75 (Turing) and newer, Blackwell included.
    """
    cap = tuple(torch.cuda.get_device_capability(index))
    archs = list(torch.cuda.get_arch_list())
    if archs and not _arch_ok(cap, archs):
        name = torch.cuda.get_device_name(index)
        if cap < (7, 5):
            fix = "install a PyTorch build for CUDA 12.6 (pip install torch --index-url https://download.pytorch.org/whl/cu126), which supports sm_50 to sm_90"
        else:
            fix = "install a newer PyTorch build (CUDA 12.8 or later) whose arch list includes it"
        raise EttError(
            f"GPU {index} ({name}, sm_{cap[0]}{cap[1]}) is not supported by this PyTorch build (torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}, built for {' '.join(archs)}); {fix}, or use --device cpu"
        )
    return cap


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(choice: str, device: str, index: int | None = None) -> str:
    """``auto``: bf16 where the hardware has native bf16 (GPUs from Ampere on, sm_80, CPUs with AVX512-BF16
    or AMX), else fp16 with a gradient scaler on GPUs (V100, T4 emulate bf16 slowly) and fp32 on CPUs.

    ``index`` is the GPU to ask (default: the current one; under torchrun, the process's own after
    ``set_device``). An explicit bf16 below sm_80 is kept, with a warning: it runs on slow fallback kernels.

    Measured on an AMD EPYC with AVX512-BF16 (2 cores): CIFAR ResNet-20 trains about 1.7x faster in bf16
    than in fp32; BENCHMARKS.md has the accuracy effect.
    """
    check_choice("precision", choice, PRECISIONS)
    if device == "cuda":
        cap = tuple(torch.cuda.get_device_capability(index))  # None: the current device
    if choice != "auto":
        if choice == "fp16" and device == "cpu":
            raise EttError("precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        if choice == "bf16" and device == "cuda" and cap[0] < 8:
            warn(
                f"precision bf16 on a GPU of compute capability {cap[0]}.{cap[1]}: it has no native bf16 "
                "(that needs 8.0, Ampere, or newer) and runs slow fallback kernels; --precision auto picks fp16"
            )
        return choice
    if device == "cuda":
        return "bf16" if cap[0] >= 8 else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def default_threads() -> int:
    """The CPUs this process may use (its affinity and cgroup quota), not the machine's count."""
    return usable_cpus()


# --- the entry point ---------------------------------------------------------------------------------------------
@dataclass
class Hooks:
    """Callbacks for the caller (the CLI renders progress with them; the core never imports rich).

    ``stop(step)`` is asked after every step; returning True stops at that step boundary with a checkpoint,
    exactly as a signal does.
    """

    start: Callable[[int, int, int], None] = lambda total, per_epoch, step: None  # noqa: E731
    step: Callable[[int], None] = lambda step: None  # noqa: E731
    epoch: Callable[[dict], None] = lambda row: None  # noqa: E731
    stop: Callable[[int], bool] = lambda step: False  # noqa: E731
    info: Callable[[str], None] = lambda line: None  # noqa: E731


@dataclass
class TrainResult:
    summary: dict
    folder: Path
    already_finished: bool
    late_signal: int | None = None  # a signal that arrived once the run was complete on disk (it is kept)
    final: Ticket | None = field(default=None, repr=False)  # the final ticket, where this call trained it

    @property
    def ticket(self) -> Ticket:
        """The final ticket (``final.safetensors``): as this call trained it, else read from the run folder."""
        if self.final is None:
            self.final = read_ticket(RunFolder.reading(self.folder).file(FINAL))
        return self.final


@dataclass
class TrainContext:
    """A ticket and its settings, resolved once: the ticket read, its dataset (class count checked), the data
    root, device, precision and thread count; after :meth:`load`, the data (with ``subset``), the iterations per
    epoch and the customised recipe. ``train_ticket``, LMC and the study's calibration work from it."""

    ticket: Ticket
    path: Path | None  # the file or folder the ticket was read from (None: given as a Ticket without one)
    settings: TrainSettings
    dataset: DatasetSpec
    root: Path
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32", "bf16" or "fp16"
    local: int = 0  # this process's GPU under torchrun
    data: object = None
    n_train: int = 0
    per_epoch: int = 0
    recipe: Recipe | None = None

    @staticmethod
    def resolve(ticket: Ticket | str | os.PathLike, settings: TrainSettings, *, local: int = 0) -> TrainContext:
        """Read ``ticket`` (a :class:`Ticket` or a path), resolve its dataset, device and precision, and set the
        thread count. Under torchrun ``local`` is the process's GPU, made the current device first."""
        path = None if isinstance(ticket, Ticket) else Path(ticket)
        tk = as_ticket(ticket)
        path = path or tk.path
        ds = dataset_for(tk, settings.dataset, path)
        root = Path(settings.data_root).expanduser() if settings.data_root else default_data_root()
        dev = resolve_device(settings.device, local)
        if dev == "cuda":
            torch.cuda.set_device(local)  # first: under torchrun every later question is about this process's GPU
        prec = resolve_precision(settings.precision, dev, local if dev == "cuda" else None)
        torch.set_num_threads(threads_for(settings.threads))
        return TrainContext(tk, path, settings, ds, root, dev, prec, local)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device, self.local if self.device == "cuda" else None)

    @property
    def batch(self) -> int:
        """Images per step over all processes: the setting, else the dataset's recipe's."""
        return (
            self.settings.batch_size
            or recipe_for(self.dataset.name, self.ticket.arch.family, self.settings.recipe).batch_size
        )

    def autocast(self):
        return autocast_for(self.device, self.precision)

    def load(self, rank: int = 0, world: int = 1) -> TrainContext:
        """Load the data (rank 0 first), keep ``subset`` of it, and work out the epoch and the recipe."""
        ds, settings = self.dataset, self.settings
        data = _load_data(ds, self.root, settings.download, rank, world)
        if settings.subset is not None:
            data = training_subset(data, ds, settings.subset)
        n_train = len(data.train_y) if ds.kind == "memory" else len(data[0])
        per_epoch = iterations_per_epoch(n_train, self.batch, world)
        if per_epoch == 0:
            raise EttError(
                f"{ds.name} under {self.root} has {n_train} training images, fewer than one batch of {self.batch}"
            )
        self.data, self.n_train, self.per_epoch = data, n_train, per_epoch
        self.recipe = customise(
            recipe_for(ds.name, self.ticket.arch.family, settings.recipe),
            per_epoch,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            milestones=settings.milestones,
            weight_decay=settings.weight_decay,
            warmup=settings.warmup,
        )
        return self


def train_ticket(
    ticket: Ticket | str | os.PathLike,
    settings: TrainSettings = TrainSettings(),
    *,
    folder: str | os.PathLike | None = None,
    from_step: str | None = None,
    stop_at: str | None = None,
    snapshot_at: str | None = None,
    force: bool = False,
    hooks: Hooks | None = None,
    metadata: dict[str, str] | None = None,
) -> TrainResult:
    """Train ``ticket`` with its masks fixed and return the run's summary (the ticket and settings resolved by
    :class:`TrainContext`).

    Args:
        ticket: a :class:`Ticket` or a path to any layout ett reads.
        settings: recipe overrides and how to run.
        folder: the run folder (default ``$ETT_RUNS/<ticket stem>-<identity hash>``).
        from_step: start here instead of the ticket's rewind step (``ett.rewind_step``, else 0).
        stop_at: end here instead of at the end of the recipe; the final ticket then records this step as
            its rewind step (``ett train --stop-at``: rewind-point weights for a network that never ran IMP).
        snapshot_at: also keep the whole state at this step as ``rewind.safetensors`` (IMP's level 0).
        force: train again even if the folder holds this run finished.
        hooks: progress callbacks and a stop request.
        metadata: extra metadata for the final ticket (e.g. ``ett.command``).

    Under ``torchrun`` every process calls this; rank 0 writes the files.
    """
    settings.check()
    hooks = hooks or Hooks()
    rank, world, local = _dist_env()
    ctx = TrainContext.resolve(ticket, settings, local=local)
    tk, path, spec, ds, root = ctx.ticket, ctx.path, ctx.ticket.arch, ctx.dataset, ctx.root
    dev, prec = ctx.device, ctx.precision
    start = parse_step(from_step or tk.metadata.get("ett.rewind_step") or "0it")
    build_model(spec, seed=None, init=False)  # an architecture without a model fails here, before any data
    if settings.sync_bn and dev != "cuda":
        raise EttError("synchronised BatchNorm needs CUDA devices; leave it off on CPUs")
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group("nccl" if dev == "cuda" else "gloo")
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(backend_flags(dev, settings.deterministic))
        device = ctx.torch_device
        batch = ctx.batch
        if batch < world:
            raise EttError(f"batch size {batch} is smaller than the {world} processes")
        ctx.load(rank, world)
        data, n_train, per_epoch, recipe = ctx.data, ctx.n_train, ctx.per_epoch, ctx.recipe
        total = recipe.total_iterations(per_epoch)
        first = start.iterations(per_epoch)
        end = parse_step(stop_at).iterations(per_epoch) if stop_at else total
        snap = parse_step(snapshot_at).iterations(per_epoch) if snapshot_at else None
        epoch_note = (
            f"an epoch is {per_epoch} iteration(s): {n_train:,} training images"
            + (f" (--subset {settings.subset})" if settings.subset is not None else "")
            + f" at batch {batch}"
        )
        _check_steps(first, end, total, snap, start, per_epoch, snapshot_at, epoch_note)
        identity = {
            "ticket": tk.fingerprint(),
            "arch": spec.name,
            "start_step": format_step(first, per_epoch),
            "end_step": format_step(end, per_epoch),
            "snapshot_step": None if snap is None else format_step(snap, per_epoch),
            "world_size": world,
            **settings.identity({"dataset": ds.name, "recipe": recipe.as_dict(), "device": dev, "precision": prec}),
        }
        run = RunFolder(Path(folder), identity) if folder else RunFolder.default(stem_of(path or "ticket"), identity)
        state = run.state()  # a folder holding another run is refused here, even with force
        if force:
            state = "fresh"
        if world > 1:
            torch.distributed.barrier()
        if state == "finished":
            return TrainResult(run.summary(), run.path, True)
        # one process trains a run folder at a time: rank 0 holds its lock until the end and tells the others
        refused = None
        if rank == 0:
            try:
                stack.enter_context(run.held())
                state = "fresh" if force else run.state()  # as it is now that no one else is writing it
            except EttError as exc:
                refused = str(exc)
        if world > 1:
            box = [refused, state]
            torch.distributed.broadcast_object_list(box, src=0)
            refused, state = box
        if refused:
            raise EttError(refused)
        if state == "finished":  # another process finished it while this one waited
            return TrainResult(run.summary(), run.path, True)
        if rank == 0:
            hooks.info(recipe.describe())
            settings_record = {
                **asdict(settings),
                "data_root": str(root),
                "ticket_path": str(path) if path else None,
                "per_epoch": per_epoch,
            }
            run.begin(fresh=state == "fresh", settings=settings_record)
        if world > 1:
            torch.distributed.barrier()
        workers = settings.workers if settings.workers is not None else min(8, usable_cpus())
        if ds.kind == "memory":
            feeder = MemoryFeeder(data, ds, recipe.batch_size, device, settings.seed, rank, world)
        else:
            feeder = FolderFeeder(*data, recipe.batch_size, device, settings.seed, workers, rank, world)
        loop = LoopConfig(
            recipe, first, end, snap, dev, prec, settings.compile, settings.sync_bn, rank, world, settings.compile_mode
        )
        summary, model = run_loop(tk, loop, feeder, run, state == "resume", hooks)
        summary.update({"arch": spec.name, "dataset": ds.name})
        if rank == 0:
            meta = {k: v for k, v in tk.metadata.items() if k != "ett.rewind_step"}
            meta.update(
                {
                    "ett.command": "ett train",
                    "ett.dataset": ds.name,
                    "ett.trained_from_step": summary["start_step"],
                    "ett.step": summary["end_step"],
                    "ett.recipe": json.dumps(recipe.as_dict(), sort_keys=True),
                    "ett.seed": str(settings.seed),
                    "ett.precision": prec,
                    "ett.test_accuracy": f"{summary['final_test_accuracy']:.6f}",
                    "ett.ticket_fingerprint": identity["ticket"],
                    **(metadata or {}),
                }
            )
            if stop_at:
                meta["ett.rewind_step"] = summary["end_step"]
            with final_output():  # once final.safetensors is in place, a signal is held, not raised
                final = ticket_from_model(model, tk.masks, meta)
                final.save(run.file(FINAL))
                run.write_json(SUMMARY, summary)
        late = take_held_signal()
        if world > 1:
            torch.distributed.barrier()  # rank 0's files are complete before anyone returns
        return TrainResult(summary, run.path, False, late, final if rank == 0 else None)
    finally:
        stack.close()
        if own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _check_steps(
    first: int, end: int, total: int, snap: int | None, start: Step, per_epoch: int, snap_text=None, note: str = ""
) -> None:
    """Refuse a start, stop or snapshot step outside the training; ``note`` says how long an epoch is."""
    if first >= total:
        raise EttError(
            f"training starts at step {start} ({first} iterations) but ends at {format_step(total, per_epoch)} "
            f"({total} iterations; {note}); "
            "train for more epochs or on more images, or start from an earlier step"
        )
    if not first < end <= total:
        raise EttError(
            f"stop step {format_step(end, per_epoch)} must lie after the start ({format_step(first, per_epoch)}) "
            f"and not past the end of training ({format_step(total, per_epoch)})"
        )
    if snap is not None and not first <= snap <= end:
        # the snapshot is IMP's rewind point (level 0 keeps its state there)
        raise EttError(
            f"rewind step {snap_text or format_step(snap, per_epoch)} ({snap} iterations) lies past the end of "
            f"training at {format_step(end, per_epoch)} ({end} iterations; {note}); choose an earlier --rewind "
            "(a study's imp.rewind), or train for more epochs or on more images"
        )


def training_subset(data, ds, n: int):
    """``n`` training images, class-balanced (``n // classes`` each, one more for the first ``n % classes``
    classes), drawn by a fixed seed so that every run, whatever its own seed, trains on the same images."""
    import numpy as np

    if ds.kind != "memory":
        raise EttError(f"subset: {ds.name} is read from image folders; a training subset needs an in-memory dataset")
    y = data.train_y
    classes = np.unique(y)
    per, extra = divmod(n, len(classes))
    rng = np.random.default_rng(0)
    chosen = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        want = per + (1 if i < extra else 0)
        if want > len(idx):
            raise EttError(
                f"subset {n}: class {data.classes[int(c)] if int(c) < len(data.classes) else c} has only {len(idx)} "
                f"training images, fewer than the {want} a balanced subset takes from it; choose a smaller subset"
            )
        chosen.append(np.sort(rng.choice(idx, want, replace=False)))
    keep = np.sort(np.concatenate(chosen))
    return replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep])


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _load_data(ds, root: Path, download: bool, rank: int, world: int):
    """CIFAR-style data in memory (rank 0 decodes first, the others read its cache) or folder datasets."""
    if ds.kind != "memory":
        from ettcli.data import folder_datasets

        return folder_datasets(ds, root)
    from ettcli.data import load_memory_dataset

    failed = data = None
    if rank == 0:
        try:
            data = load_memory_dataset(ds, root, download=download)
        except EttError as exc:  # reach the barrier anyway: the other ranks then fail on their own
            failed = exc
    if world > 1:
        torch.distributed.barrier()
    if failed is not None:
        raise failed
    return data if rank == 0 else load_memory_dataset(ds, root)


# --- the loop ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopConfig:
    recipe: Recipe
    first: int  # iteration training starts at
    end: int  # iteration training stops at
    snapshot: int | None  # iteration whose state is kept as rewind.safetensors
    device: str
    precision: str
    compile: bool
    sync_bn: bool
    rank: int = 0
    world: int = 1
    compile_mode: str = "default"


@dataclass
class LoopState:
    """Everything the loop carries between steps besides the model and optimizer; with them, the checkpoint."""

    step: int
    metrics: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # wall seconds of earlier sessions of this run
    train_seconds: float = 0.0  # seconds spent in training steps (evaluation and compiling excluded)
    compile_seconds: float = 0.0  # seconds of the compiled model's first steps, almost all of it compiling
    images: float = 0.0
    partial: dict | None = None  # an interrupted epoch's running sums and seconds

    def checkpoint(self, model, opt, scaler, elapsed: float) -> dict:
        return {
            "loop": {**asdict(self), "elapsed": elapsed},
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }

    @staticmethod
    def restore(ck: dict, model, opt, scaler) -> LoopState:
        model.load_state_dict(ck["model"], strict=True)
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_cpu"])
        return LoopState(**ck["loop"])


@contextlib.contextmanager
def backend_flags(device: str, deterministic: bool):
    """cuDNN autotuning and TF32 matmuls and convolutions on CUDA, or deterministic kernels; restored on exit.

    TF32 is set through the ``fp32_precision`` API alone: PyTorch raises when code reads TF32 flags that
    were set through both it and the legacy ``allow_tf32`` flags. ``deterministic`` turns autotuning off
    and asks for deterministic algorithms everywhere (an operation without one raises).
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_tf32 = (matmul.fp32_precision, cudnn.conv.fp32_precision) if new_api and device == "cuda" else None
    try:
        if device == "cuda":
            cudnn.benchmark = not deterministic
            if new_api:
                matmul.fp32_precision = "tf32"
                cudnn.conv.fp32_precision = "tf32"
            else:  # PyTorch before 2.9
                matmul.allow_tf32 = cudnn.allow_tf32 = True
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
            cudnn.deterministic = True
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved_warn)
        if saved_tf32 is not None:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved_tf32


def _compile(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile`` with ``mode`` (one of :data:`COMPILE_MODES`)."""
    return torch.compile(module, mode=None if mode == "default" else mode)


def autocast_for(device: str, precision: str):
    """The autocast context of ``precision`` on ``device`` (disabled for fp32)."""
    if precision == "fp32":
        return torch.autocast(device, enabled=False)
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class _StopRequest:
    """Signals (SIGINT, SIGTERM, SIGHUP) set a flag checked between steps, so the checkpoint is written at a
    step boundary; a second signal interrupts at once. Only where handlers can be installed: the main
    thread of a single process (under torchrun the launcher owns the signals)."""

    def __init__(self, active: bool):
        self.signum: int | None = None
        self.requested = False
        self._old: dict = {}
        self.active = active and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.active:
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise Terminated(signum)
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def run_loop(
    ticket: Ticket, cfg: LoopConfig, feeder: Feeder, run: RunFolder, resume: bool, hooks: Hooks
) -> tuple[dict, torch.nn.Module]:
    """Train from ``cfg.first`` (or the checkpoint) to ``cfg.end``; returns the summary and the trained model."""
    lead = cfg.rank == 0
    device = torch.device(cfg.device, torch.cuda.current_device() if cfg.device == "cuda" else None)
    per_epoch, recipe = feeder.per_epoch, cfg.recipe

    # the model: the ticket's tensors, strict, channels_last, masks applied at once and after every step
    model = model_from_ticket(ticket, device).to(memory_format=torch.channels_last)
    if cfg.world > 1 and cfg.sync_bn:  # open_lth has no synchronised BatchNorm: off by default
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    masker = Masker(model, ticket.masks)
    opt = make_optimizer(model, recipe, ticket.arch, cfg.device)
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.precision == "fp16")
    st = LoopState(step=cfg.first)
    if resume:
        st = LoopState.restore(run.load_checkpoint(device), model, opt, scaler)
        masker.apply()
        if lead:
            run.rewrite_metrics(st.metrics)
    # DDP first, then compile: compiled around DDP, the gradient all-reduce overlaps the backward pass
    runner = model
    if cfg.world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    fast = runner
    # steps until the compiled graphs are built (CUDA graph modes record on the second and third calls)
    settling = (3 if cfg.compile_mode in ("reduce-overhead", "max-autotune") else 1) if cfg.compile else 0
    if cfg.compile:
        # a fresh cache for every run: a study worker training one network after another would otherwise
        # reach dynamo's recompile limit after a few and silently run the rest eagerly
        torch._dynamo.reset()
        fast = _compile(runner, cfg.compile_mode)
    # the compiled step sees one batch shape: the partial last batch of an epoch (50,000 = 390 x 128 + 80
    # on CIFAR-10) runs eagerly, so every epoch trains on the same images as without compile and nothing
    # is compiled twice; evaluation runs eagerly too (a third graph would cost more than it saves)
    static = len(range(cfg.rank, recipe.batch_size, cfg.world))
    graphs = cfg.compile and cfg.device == "cuda" and cfg.compile_mode in ("reduce-overhead", "max-autotune")
    autocast = autocast_for(cfg.device, cfg.precision)
    threads = _threads_dividing(static) if device.type == "cpu" else 0

    def save_rewind() -> None:
        if lead and not run.file(REWIND).is_file():
            meta = {**ticket.metadata, "ett.rewind_step": format_step(st.step, per_epoch)}
            ticket_from_model(model, ticket.masks, meta).save(run.file(REWIND))

    hooks.start(cfg.end, per_epoch, st.step)
    t0 = time.perf_counter()
    lr = recipe.lr_at(st.step, per_epoch)
    with _StopRequest(active=cfg.world == 1) as stop:
        if cfg.snapshot == st.step:
            save_rewind()
        while st.step < cfg.end:
            epoch, first = divmod(st.step, per_epoch)
            model.train()
            # loss sum, correct, images, first non-finite step: on the device, read once per epoch
            sums = torch.zeros(3, device=device, dtype=torch.float64)
            bad = torch.full((), -1, device=device, dtype=torch.int64)
            epoch_s = epoch_compile = 0.0
            if st.partial is not None:
                sums, epoch_s, st.partial = st.partial["sums"].to(device), float(st.partial["seconds"]), None
            t_epoch = time.perf_counter()
            for x, y in feeder.batches(epoch, first):
                lr = recipe.lr_at(st.step, per_epoch)
                for g in opt.param_groups:
                    g["lr"] = lr
                net = fast if len(y) == static else runner
                if graphs and net is fast:
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are not read again
                timing = settling > 0 and net is fast
                if timing:
                    _sync(device)
                    t_compile = time.perf_counter()
                odd = threads and len(y) % threads  # a short last batch that the threads do not divide
                if odd:
                    torch.set_num_threads(math.gcd(len(y), threads))
                with autocast:
                    logits = net(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                masker.apply()  # momentum and weight decay would otherwise revive pruned weights
                if odd:
                    torch.set_num_threads(threads)
                if timing:
                    _sync(device)
                    spent = time.perf_counter() - t_compile
                    st.compile_seconds += spent
                    epoch_compile += spent
                    settling -= 1
                with torch.no_grad():  # python scalars enter as kernel arguments: no host-device copy
                    sums[0] += loss.detach() * len(y)
                    sums[1] += (logits.argmax(1) == y).sum()
                    sums[2] += len(y)
                    bad = torch.where(torch.isfinite(loss.detach()) | (bad >= 0), bad, st.step)
                st.step += 1
                hooks.step(st.step)
                if st.step == cfg.snapshot:
                    save_rewind()
                if hooks.stop(st.step):
                    stop.requested = True
                if stop.requested or st.step == cfg.end:
                    break
            if cfg.device == "cuda":
                torch.cuda.synchronize()
            epoch_s += time.perf_counter() - t_epoch - epoch_compile
            elapsed = st.elapsed + time.perf_counter() - t0
            if int(bad) >= 0:
                raise EttError(
                    f"the training loss became non-finite at step {format_step(int(bad), per_epoch)} "
                    f"(epoch {epoch + 1}); {_kept(run)}; try a lower learning rate"
                )
            at_boundary = st.step % per_epoch == 0 or st.step == cfg.end
            if stop.requested and not at_boundary:
                if lead:
                    st.partial = {"sums": sums.cpu(), "seconds": epoch_s}
                    run.save_checkpoint(st.checkpoint(model, opt, scaler, elapsed))
                raise Interrupted(format_step(st.step, per_epoch), run.path, stop.signum)
            # end of an epoch (or of training): one sync for the train metrics, evaluation, a checkpoint
            if cfg.world > 1:
                torch.distributed.all_reduce(sums)
            tr = sums.tolist()
            st.train_seconds += epoch_s
            st.images += tr[2]
            if cfg.world > 1:  # every rank evaluates the BatchNorm statistics rank 0 saves
                for b in model.buffers():
                    torch.distributed.broadcast(b, 0)
            test_loss, test_acc = evaluate(model, feeder.test_batches(), device, autocast, cfg.world)
            done = st.step / per_epoch
            row = {
                "epoch": int(done) if done == int(done) else round(done, 4),
                "step": format_step(st.step, per_epoch),
                "lr": lr,
                "train_loss": tr[0] / max(tr[2], 1),
                "train_accuracy": tr[1] / max(tr[2], 1),
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "images_per_second": tr[2] / max(epoch_s, 1e-9),
                "elapsed_seconds": st.elapsed + time.perf_counter() - t0,
            }
            if not math.isfinite(test_loss):
                raise EttError(
                    f"the test loss became non-finite after step {row['step']}; {_kept(run)}; try a lower learning rate"
                )
            st.metrics.append(row)
            if lead:
                run.append_metrics(row)
                run.save_checkpoint(st.checkpoint(model, opt, scaler, st.elapsed + time.perf_counter() - t0))
            hooks.epoch(row)
            if stop.requested:
                break
    # a stop that arrived during the last step or the final test pass is honoured too: the run ends here with
    # its checkpoint at the end step (rerunning writes the final files without training again)
    if stop.requested:
        raise Interrupted(format_step(st.step, per_epoch), run.path, stop.signum)

    masker.apply()
    last = st.metrics[-1]
    return {
        "final_test_accuracy": last["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in st.metrics),
        "final_train_accuracy": last["train_accuracy"],
        "final_test_loss": last["test_loss"],
        "images_per_second": st.images / max(st.train_seconds, 1e-9),
        "sparsity": ticket.sparsity(),
        "epochs": recipe.epochs,
        "start_step": format_step(cfg.first, per_epoch),
        "end_step": format_step(cfg.end, per_epoch),
        "steps": cfg.end - cfg.first,
        "device": _device_name(device),
        "precision": cfg.precision,
        "world_size": cfg.world,
        "seconds": st.elapsed + time.perf_counter() - t0,
        "train_seconds": st.train_seconds,
        "compile_seconds": st.compile_seconds,
    }, model


def _kept(run: RunFolder) -> str:
    """What a failed run leaves: its last good checkpoint, or nothing that a corrected command would not replace."""
    if run.file(CHECKPOINT).is_file():
        return f"the last good checkpoint is kept in {run.path}"
    return f"no checkpoint was reached, so a corrected command may reuse {run.path}"


def _threads_dividing(batch: int) -> int:
    """torch's thread count for CPU training, lowered to the largest count that divides ``batch``.

    torch 2.14's CPU backward of channels_last convolutions crashes the process (SIGSEGV, SIGABRT) on a batch
    that the thread count does not divide: 2 threads and a batch of 5, 3 threads and 128, 4 and 6 (see
    scripts/threads_crash_repro.py --batch). A full batch gets a dividing count here, with a warning; the
    training step runs a short last batch on the threads that divide it."""
    threads = torch.get_num_threads()
    fit = max(d for d in range(1, threads + 1) if batch % d == 0)
    if fit < threads:
        warn(
            f"{threads} threads do not divide the batch of {batch} images; training on {fit} thread(s) (torch's "
            "CPU convolutions crash on a batch that the threads do not divide)"
        )
        torch.set_num_threads(fit)
    return fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: torch.nn.Module, recipe: Recipe, spec, device: str) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's parameters.

    ``decay="matrices"`` puts weight decay on the prunable tensors only (weight matrices and conv kernels,
    as the spec says), never on biases, LayerNorm, position embeddings or the class token, as ViT recipes do.
    """
    kind = {"fused": True} if device == "cuda" else {"foreach": True}
    params = list(model.named_parameters())
    if recipe.decay == "matrices":
        decayed = {n for n, t in spec.tensors.items() if t.prunable}
        groups = [
            {"params": [p for n, p in params if n in decayed], "weight_decay": recipe.weight_decay},
            {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": [p for _, p in params], "weight_decay": recipe.weight_decay}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999), **kind)
    if recipe.optimizer != "sgd":
        raise EttError(f"recipe {recipe.name}: unknown optimizer '{recipe.optimizer}'; use sgd or adamw")
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, **kind)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate(model, batches, device, autocast, world: int = 1) -> tuple[float, float]:
    """Mean loss and accuracy over ``batches`` (BatchNorm in eval mode; pruned weights are zero), summed over
    processes; the model is left in train mode."""
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for x, y in batches:
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        sums[0] += loss
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    if world > 1:
        torch.distributed.all_reduce(sums)
    loss_sum, correct, n = sums.tolist()
    model.train()
    return loss_sum / max(n, 1), correct / max(n, 1)
