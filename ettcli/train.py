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
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ettcli.errors import EttError, Terminated, final_output, take_held_signal
from ettcli.feeders import Feeder, FolderFeeder, MemoryFeeder, iterations_per_epoch
from ettcli.models import Masker, build_model, model_from_ticket, ticket_from_model
from ettcli.recipe import FAMILY_DEFAULTS, Recipe, customise, recipe_for
from ettcli.runs import FINAL, REWIND, SUMMARY, RunFolder, stem_of
from ettcli.steps import Step, format_step, parse_step
from ettcli.ticket import Ticket, read_ticket

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


# --- settings --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """How to train a ticket. ``None`` takes the recipe's (or the environment's) value."""

    dataset: str | None = None  # default: the ticket's ett.dataset, else its family's dataset
    data_root: str | None = None  # default: $ETT_DATA, else ~/.cache/ett/data
    download: bool = False  # fetch CIFAR with torchvision first
    epochs: int | None = None  # training length; milestones and warmup keep their fractions
    batch_size: int | None = None  # images per optimizer step, over all processes
    lr: float | None = None  # peak learning rate
    milestones: str | None = None  # steps where lr *= gamma, e.g. "80ep,120ep"
    weight_decay: float | None = None
    warmup: str | None = None  # linear warmup length, e.g. "5ep"
    seed: int = 0  # data order and augmentation
    device: str = "auto"  # auto, cpu or cuda
    precision: str = "auto"  # auto, fp32, bf16 or fp16
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # synchronise BatchNorm statistics across processes
    workers: int | None = None  # DataLoader workers (image folders)
    threads: int | None = None  # CPU threads (default: the cores this process may use)
    subset: int | None = None  # train on this many training images, class-balanced, the same for every seed
    recipe: str | None = None  # a registered recipe by name (default: the family's own, else the dataset's)

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
        if self.device not in ("auto", "cpu", "cuda"):
            raise EttError(f"device {self.device}: choose auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise EttError(f"precision {self.precision}: choose auto, fp32, bf16 or fp16")


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise EttError("device cuda: no CUDA device is available here; use cpu or auto")
    if choice not in ("cpu", "cuda"):
        raise EttError(f"device {choice}: choose auto, cpu or cuda")
    return choice


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(choice: str, device: str) -> str:
    """``auto``: bf16 where the hardware has native bf16 (GPUs from Ampere on, CPUs with AVX512-BF16 or AMX),
    else fp16 on GPUs (V100, T4 emulate bf16 slowly) and fp32 on CPUs.

    Measured on an AMD EPYC with AVX512-BF16 (2 cores): CIFAR ResNet-20 trains about 1.7x faster in bf16
    than in fp32; BENCHMARKS.md has the accuracy effect.
    """
    if choice not in ("auto", "fp32", "bf16", "fp16"):
        raise EttError(f"precision {choice}: choose auto, fp32, bf16 or fp16")
    if choice != "auto":
        if choice == "fp16" and device == "cpu":
            raise EttError("precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        return choice
    if device == "cuda":
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


class Interrupted(Exception):
    """Training stopped (a signal or ``hooks.stop``) after writing a checkpoint at ``step``."""

    def __init__(self, step: str, folder: Path, signum: int | None):
        super().__init__(step)
        self.step, self.folder, self.signum = step, folder, signum


@dataclass
class TrainResult:
    summary: dict
    folder: Path
    already_finished: bool
    late_signal: int | None = None  # a signal that arrived once the run was complete on disk (it is kept)


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
    """Train ``ticket`` with its masks fixed and return the run's summary.

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
    path = None if isinstance(ticket, Ticket) else Path(ticket)
    tk = ticket if isinstance(ticket, Ticket) else read_ticket(ticket)
    path = path or tk.path
    spec = tk.arch
    family = FAMILY_DEFAULTS.lookup(spec.family)
    from ettcli.data import default_data_root, get_dataset

    ds = get_dataset(settings.dataset or tk.metadata.get("ett.dataset") or family.dataset)
    if spec.num_classes != ds.num_classes:
        head = next(n for n, t in spec.tensors.items() if t.role == "head" and n.endswith("weight"))
        raise EttError(
            f"{path or 'the ticket'}: its classifier has {spec.num_classes} outputs ({head} "
            f"{list(spec.tensors[head].shape)}) but {ds.name} has {ds.num_classes} classes; pick a matching dataset"
        )
    start = parse_step(from_step or tk.metadata.get("ett.rewind_step") or "0it")
    root = Path(settings.data_root).expanduser() if settings.data_root else default_data_root()
    build_model(spec, seed=None, init=False)  # an architecture without a model fails here, before any data

    rank, world, local = _dist_env()
    dev = resolve_device(settings.device)
    prec = resolve_precision(settings.precision, dev)
    if settings.sync_bn and dev != "cuda":
        raise EttError("synchronised BatchNorm needs CUDA devices; leave it off on CPUs")
    torch.set_num_threads(settings.threads or default_threads())
    if dev == "cuda":
        torch.cuda.set_device(local)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group("nccl" if dev == "cuda" else "gloo")
    stack = contextlib.ExitStack()
    try:
        device = torch.device(dev, local if dev == "cuda" else None)
        base = recipe_for(ds.name, spec.family, settings.recipe)
        batch = settings.batch_size or base.batch_size
        if batch < world:
            raise EttError(f"batch size {batch} is smaller than the {world} processes")
        data = _load_data(ds, root, settings.download, rank, world)
        if settings.subset is not None:
            data = _subset(data, ds, settings.subset)
        n_train = len(data.train_y) if ds.kind == "memory" else len(data[0])
        per_epoch = iterations_per_epoch(n_train, batch, world)
        if per_epoch == 0:
            raise EttError(f"{ds.name} under {root} has {n_train} training images, fewer than one batch of {batch}")
        recipe = customise(
            base,
            per_epoch,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            milestones=settings.milestones,
            weight_decay=settings.weight_decay,
            warmup=settings.warmup,
        )
        total = recipe.total_iterations(per_epoch)
        first = start.iterations(per_epoch)
        end = parse_step(stop_at).iterations(per_epoch) if stop_at else total
        snap = parse_step(snapshot_at).iterations(per_epoch) if snapshot_at else None
        _check_steps(first, end, total, snap, start, per_epoch)
        identity = {
            "ticket": tk.fingerprint(),
            "arch": spec.name,
            "dataset": ds.name,
            "recipe": recipe.as_dict(),
            "start_step": format_step(first, per_epoch),
            "end_step": format_step(end, per_epoch),
            "snapshot_step": None if snap is None else format_step(snap, per_epoch),
            "seed": settings.seed,
            "device": dev,
            "precision": prec,
            "compile": settings.compile,
            "sync_bn": settings.sync_bn,
            "world_size": world,
        }
        if settings.subset is not None:
            identity["subset"] = settings.subset
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
        workers = settings.workers if settings.workers is not None else min(8, os.cpu_count() or 1)
        if ds.kind == "memory":
            feeder = MemoryFeeder(data, ds, recipe.batch_size, device, settings.seed, rank, world)
        else:
            feeder = FolderFeeder(*data, recipe.batch_size, device, settings.seed, workers, rank, world)
        loop = LoopConfig(recipe, first, end, snap, dev, prec, settings.compile, settings.sync_bn, rank, world)
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
                ticket_from_model(model, tk.masks, meta).save(run.file(FINAL))
                run.write_json(SUMMARY, summary)
        late = take_held_signal()
        if world > 1:
            torch.distributed.barrier()  # rank 0's files are complete before anyone returns
        return TrainResult(summary, run.path, False, late)
    finally:
        stack.close()
        if own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _check_steps(first: int, end: int, total: int, snap: int | None, start: Step, per_epoch: int) -> None:
    if first >= total:
        raise EttError(
            f"training starts at step {start} ({first} iterations) but the recipe ends at {total}; "
            "train for more epochs or start from an earlier step"
        )
    if not first < end <= total:
        raise EttError(
            f"stop step {format_step(end, per_epoch)} must lie after the start ({format_step(first, per_epoch)}) "
            f"and not past the end of training ({format_step(total, per_epoch)})"
        )
    if snap is not None and not first <= snap <= end:
        raise EttError(
            f"snapshot step {format_step(snap, per_epoch)} must lie between the start "
            f"({format_step(first, per_epoch)}) and the end ({format_step(end, per_epoch)}) of training"
        )


def _subset(data, ds, n: int):
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


@dataclass
class LoopState:
    """Everything the loop carries between steps besides the model and optimizer; with them, the checkpoint."""

    step: int
    metrics: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # wall seconds of earlier sessions of this run
    train_seconds: float = 0.0  # seconds spent in training steps (evaluation excluded)
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


def _autocast(device: str, precision: str):
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
    fast = torch.compile(model) if cfg.compile else model
    runner = fast
    if cfg.world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            fast, device_ids=[device.index] if device.index is not None else None
        )
    autocast = _autocast(cfg.device, cfg.precision)

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
            epoch_s = 0.0
            if st.partial is not None:
                sums, epoch_s, st.partial = st.partial["sums"].to(device), float(st.partial["seconds"]), None
            t_epoch = time.perf_counter()
            for x, y in feeder.batches(epoch, first):
                lr = recipe.lr_at(st.step, per_epoch)
                for g in opt.param_groups:
                    g["lr"] = lr
                with autocast:
                    logits = runner(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                masker.apply()  # momentum and weight decay would otherwise revive pruned weights
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
            epoch_s += time.perf_counter() - t_epoch
            elapsed = st.elapsed + time.perf_counter() - t0
            if int(bad) >= 0:
                raise EttError(
                    f"the training loss became non-finite at step {format_step(int(bad), per_epoch)} "
                    f"(epoch {epoch + 1}); the last good checkpoint is kept in {run.path}; try a lower learning rate"
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
            test_loss, test_acc = evaluate(fast, feeder, device, autocast, cfg.world)
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
                    f"the test loss became non-finite after step {row['step']}; the last good checkpoint is kept "
                    f"in {run.path}; try a lower learning rate"
                )
            st.metrics.append(row)
            if lead:
                run.append_metrics(row)
                run.save_checkpoint(st.checkpoint(model, opt, scaler, st.elapsed + time.perf_counter() - t0))
            hooks.epoch(row)
            if stop.requested and st.step < cfg.end:
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
    }, model


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
def evaluate(model, feeder: Feeder, device, autocast, world: int) -> tuple[float, float]:
    """Test loss and accuracy with pruned weights exactly zero (BatchNorm in eval mode)."""
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for x, y in feeder.test_batches():
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
