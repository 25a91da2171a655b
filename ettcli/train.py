"""Masked training of a ticket: faithful to open_lth's recipe, resumable, and quick on CPUs and GPUs.

Read top to bottom:

1. :class:`TrainConfig` holds every setting that shapes the result; its hash names the run folder and a
   folder that holds a different config is refused.
2. Feeders yield normalised batches. CIFAR lives on the device as uint8 and is augmented in batches there
   (random 32x32 crops of the zero-padded image, horizontal flips); the order and the augmentation of
   every epoch come from a generator seeded by (seed, epoch), so any step can be reproduced without
   replaying the ones before it. ImageNet streams through a DataLoader with workers.
3. :func:`train` runs the loop: the lr is set per iteration from the recipe, masks are re-applied after
   every optimizer step and after every load, loss and accuracy accumulate on the device and are read once
   per epoch, and a checkpoint is written atomically after every epoch (and at the current step on Ctrl-C).

Only this module and the ``train`` command import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ettcli.data import DatasetSpec, InMemory
from ettcli.errors import EttError
from ettcli.recipe import Recipe
from ettcli.steps import format_step
from ettcli.stfile import atomic_path

CHECKPOINT = "checkpoint.pt"
FINAL = "final.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL_BATCH = 1000


# --- configuration -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run. ``identity()`` (all but where files live) decides if two runs are the same."""

    ticket: str  # path of the input ticket
    ticket_sha256: str
    arch: str
    dataset: str
    recipe: dict  # Recipe.as_dict()
    start_step: str  # where training starts (the ticket's rewind step unless --from-step)
    seed: int  # data order and augmentation
    device: str  # "cpu" or "cuda" (resolved)
    precision: str  # "fp32", "bf16" or "fp16" (resolved)
    compile: bool
    world_size: int
    data_root: str = field(default="", compare=False)
    workers: int = field(default=0, compare=False)

    def identity(self) -> dict:
        d = asdict(self)
        for k in ("data_root", "workers", "ticket"):
            d.pop(k)
        return d

    def short_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise EttError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if choice not in ("cpu", "cuda"):
        raise EttError(f"--device {choice}: choose auto, cpu or cuda")
    return choice


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(choice: str, device: str) -> str:
    """``auto``: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16 (else fp32).

    Measured on an AMD EPYC with AVX512-BF16 (2 cores): CIFAR ResNet-20 trains about 1.7x faster in bf16
    than in fp32, so auto picks bf16 there; CPUs without native bf16 emulate it slowly and get fp32.
    """
    if choice not in ("auto", "fp32", "bf16", "fp16"):
        raise EttError(f"--precision {choice}: choose auto, fp32, bf16 or fp16")
    if choice != "auto":
        if choice == "fp16" and device == "cpu":
            raise EttError("--precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        return choice
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def iterations_per_epoch(n: int, batch: int, world: int = 1) -> int:
    """open_lth keeps the last partial batch (50,000 / 128 -> 391); one smaller than the process count is dropped."""
    full, rest = divmod(n, batch)
    return full + (1 if rest >= max(world, 1) else 0)


# --- feeders ---------------------------------------------------------------------------------------------------
def epoch_plan(seed: int, epoch: int, n: int, pad: int) -> dict[str, torch.Tensor]:
    """The order and the augmentation of one epoch: a permutation and per-position shifts and flips."""
    g = torch.Generator().manual_seed(_mix(seed, epoch))
    return {
        "order": torch.randperm(n, generator=g),
        "dy": torch.randint(0, 2 * pad + 1, (n,), generator=g),
        "dx": torch.randint(0, 2 * pad + 1, (n,), generator=g),
        "flip": torch.randint(0, 2, (n,), generator=g, dtype=torch.bool),
    }


def _mix(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"ett-data:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class MemoryFeeder:
    """A CIFAR-style dataset resident on the device as uint8, augmented in batches on that device."""

    pad = 4

    def __init__(self, data: InMemory, spec: DatasetSpec, batch: int, device: torch.device, seed: int, rank=0, world=1):
        self.device, self.batch, self.seed, self.rank, self.world = device, batch, seed, rank, world
        self.train_x = torch.from_numpy(data.train_x).to(device)  # (N, H, W, 3) uint8
        self.train_y = torch.from_numpy(data.train_y).to(device)
        self.test_x = torch.from_numpy(data.test_x).to(device)
        self.test_y = torch.from_numpy(data.test_y).to(device)
        self.n = len(self.train_y)
        self.per_epoch = iterations_per_epoch(self.n, batch, world)
        side = data.train_x.shape[1]
        # x_norm = x_uint8 * scale + shift, folded from (x / 255 - mean) / std
        std = torch.tensor(spec.std, device=device)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(spec.mean, device=device) / std
        self.ar = torch.arange(side, device=device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float, channels_last in memory (a permute of NHWC)."""
        return (x.float() * self.scale + self.shift).permute(0, 3, 1, 2)

    def augment(self, x: torch.Tensor, dy, dx, flip) -> torch.Tensor:
        """Random crop of the zero-padded image (torchvision's RandomCrop(32, padding=4)) and flip, batched."""
        b, h, w, c = x.shape
        p = self.pad
        padded = x.new_zeros((b, h + 2 * p, w + 2 * p, c))
        padded[:, p : p + h, p : p + w] = x
        rows = dy[:, None] + self.ar[None, :h]  # (B, H)
        cols = torch.where(flip[:, None], dx[:, None] + (w - 1 - self.ar[None, :w]), dx[:, None] + self.ar[None, :w])
        bi = torch.arange(b, device=x.device)[:, None, None]
        return padded[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of iterations ``start..per_epoch-1`` of ``epoch``."""
        plan = {
            k: v.to(self.device, non_blocking=True) for k, v in epoch_plan(self.seed, epoch, self.n, self.pad).items()
        }
        for it in range(start, self.per_epoch):
            sl = slice(it * self.batch, min((it + 1) * self.batch, self.n))
            pos = torch.arange(sl.start, sl.stop, device=self.device)[self.rank :: self.world]
            idx = plan["order"][pos]
            x = self.augment(self.train_x[idx], plan["dy"][pos], plan["dx"][pos], plan["flip"][pos])
            yield self.normalise(x), self.train_y[idx]

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.test_y)
        for s in range(self.rank * EVAL_BATCH, n, EVAL_BATCH * self.world):
            yield self.normalise(self.test_x[s : s + EVAL_BATCH]), self.test_y[s : s + EVAL_BATCH]


class _EpochSampler(torch.utils.data.Sampler):
    """Indices of one epoch from the seeded order, this rank's share of each batch, from a given iteration."""

    def __init__(self, n: int, batch: int, seed: int, rank: int, world: int):
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.per_epoch = iterations_per_epoch(n, batch, world)
        self.epoch, self.start = 0, 0

    def __iter__(self):
        order = epoch_plan(self.seed, self.epoch, self.n, 0)["order"]
        for it in range(self.start, self.per_epoch):
            yield order[it * self.batch : (it + 1) * self.batch][self.rank :: self.world].tolist()

    def __len__(self):
        return self.per_epoch - self.start


class FolderFeeder:
    """Image folders (ImageNet) through a DataLoader with workers; per-image augmentation runs in the workers."""

    def __init__(self, train_ds, test_ds, batch: int, device: torch.device, seed: int, workers: int, rank=0, world=1):
        self.device, self.rank, self.world = device, rank, world
        self.sampler = _EpochSampler(len(train_ds), batch, seed, rank, world)
        self.per_epoch = self.sampler.per_epoch
        pin = device.type == "cuda"
        self.train = torch.utils.data.DataLoader(
            train_ds, batch_sampler=self.sampler, num_workers=workers, pin_memory=pin, persistent_workers=False
        )
        shard = torch.utils.data.Subset(test_ds, range(rank, len(test_ds), world))
        self.test = torch.utils.data.DataLoader(shard, batch_size=max(1, batch // max(world, 1)), num_workers=workers)

    def _to(self, x, y):
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def batches(self, epoch: int, start: int = 0):
        self.sampler.epoch, self.sampler.start = epoch, start
        for x, y in self.train:
            yield self._to(x, y)

    def test_batches(self):
        for x, y in self.test:
            yield self._to(x, y)


# --- masks -------------------------------------------------------------------------------------------------------
class Masker:
    """The ticket's masks on the device; ``apply()`` zeroes every pruned weight in place."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, np.ndarray], device: torch.device):
        params = dict(model.named_parameters())
        self.params, self.masks = [], []
        for name, m in masks.items():
            p = params[name]
            self.params.append(p)
            self.masks.append(torch.from_numpy(np.array(m)).to(device=device, dtype=p.dtype))

    @torch.no_grad()
    def apply(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


# --- the run folder ------------------------------------------------------------------------------------------------
def prepare_out(out: Path, cfg: TrainConfig, force: bool) -> str:
    """Check ``out`` against ``cfg``: "fresh", "resume" or "finished"; a different run there is an EttError."""
    cfg_path = out / CONFIG
    if out.exists() and not out.is_dir():
        raise EttError(f"--out {out} is a file; name a folder")
    if cfg_path.is_file():
        try:
            have = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            raise EttError(f"{cfg_path}: not valid JSON; remove the folder or choose another --out") from None
        want = cfg.identity()
        diff = sorted(
            k for k in set(have.get("identity", {})) | set(want) if have.get("identity", {}).get(k) != want.get(k)
        )
        if diff:
            show = ", ".join(f"{k}: {have.get('identity', {}).get(k)!r} there, {want.get(k)!r} now" for k in diff[:3])
            raise EttError(
                f"{out} holds a run with different settings ({show}); choose another --out or remove that folder"
            )
        if force:
            for name in (CHECKPOINT, METRICS, SUMMARY, FINAL):
                (out / name).unlink(missing_ok=True)
            return "fresh"
        if (out / SUMMARY).is_file() and (out / FINAL).is_file():
            return "finished"
        if (out / CHECKPOINT).is_file():
            return "resume"
    elif out.is_dir() and any(p.name in (CHECKPOINT, METRICS, SUMMARY, FINAL) for p in out.iterdir()):
        raise EttError(f"{out} holds run files but no {CONFIG}; choose another --out or remove that folder")
    return "fresh"


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# --- the loop ------------------------------------------------------------------------------------------------------
@dataclass
class Hooks:
    """Callbacks for progress display (the CLI renders them; the core never imports rich)."""

    start: Callable[[int, int, int], None] = lambda total, per_epoch, step: None  # noqa: E731
    step: Callable[[int], None] = lambda step: None  # noqa: E731
    epoch: Callable[[dict], None] = lambda row: None  # noqa: E731


class Interrupted(Exception):
    """Training stopped on Ctrl-C after writing a checkpoint at ``step``."""

    def __init__(self, step: str, out: Path):
        super().__init__(step)
        self.step, self.out = step, out


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return torch.autocast(device, enabled=False)
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def train(
    cfg: TrainConfig,
    recipe: Recipe,
    ticket,
    feeder,
    out: Path,
    state: str,
    hooks: Hooks | None = None,
    dist_info: tuple[int, int] = (0, 1),
) -> dict:
    """Train ``ticket`` with ``recipe`` into ``out`` (``state`` from :func:`prepare_out`); returns the summary."""
    from ettcli.models import build_model

    hooks = hooks or Hooks()
    rank, world = dist_info
    lead = rank == 0
    device = torch.device(cfg.device, torch.cuda.current_device() if cfg.device == "cuda" else None)
    per_epoch = feeder.per_epoch
    total = recipe.total_iterations(per_epoch)
    from ettcli.steps import parse_step

    start = parse_step(cfg.start_step).iterations(per_epoch)
    if start >= total:
        raise EttError(
            f"training starts at step {cfg.start_step} ({start} iterations) but the recipe ends at {total}; "
            "train for more --epochs or pass --from-step"
        )

    # model: the ticket's tensors, strict, masks applied at once
    model = build_model(ticket.arch, seed=None, init=False)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in ticket.arrays()}
    model.load_state_dict(sd, strict=True)
    model.to(device=device, memory_format=torch.channels_last)
    masker = Masker(model, {k: m.array for k, m in ticket.masks.items()}, device)
    masker.apply()
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, foreach=True
    )
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.precision == "fp16")
    step, metrics, elapsed, train_seconds, images_done, partial = start, [], 0.0, 0.0, 0.0, None
    if state == "resume":
        ck = torch.load(out / CHECKPOINT, map_location=device, weights_only=True)
        if ck.get("identity") != cfg.identity():
            raise EttError(f"{out / CHECKPOINT} belongs to another run; remove it or pass --force")
        model.load_state_dict(ck["model"], strict=True)
        masker.apply()
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_cpu"])
        step, metrics = int(ck["step"]), list(ck["metrics"])
        elapsed, train_seconds, images_done = float(ck["elapsed"]), float(ck["train_seconds"]), float(ck["images"])
        partial = ck.get("partial")
        if lead:  # the metrics file may hold a line written after this checkpoint's epoch
            with atomic_path(out / METRICS) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in metrics))
    runner = model
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    if cfg.compile:
        runner = torch.compile(runner)

    def checkpoint(at: int, partial: dict | None) -> None:
        if not lead:
            return
        _save_checkpoint(
            out / CHECKPOINT,
            {
                "identity": cfg.identity(),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "step": at,
                "metrics": metrics,
                "elapsed": elapsed + time.perf_counter() - t0,
                "train_seconds": train_seconds,
                "images": images_done,
                "partial": partial,  # an interrupted epoch's running sums and seconds
            },
        )

    # Ctrl-C sets a flag checked between steps (a Python bool: no device sync), so the checkpoint is written
    # at a step boundary; a second Ctrl-C interrupts at once. A debug hook simulates the first at a given step.
    stop = {"flag": False}
    stop_at = int(os.environ.get("ETT_INTERRUPT_AT_STEP", "-1"))
    kill_at = int(os.environ.get("ETT_KILL_AT_STEP", "-1"))
    old_handler = None
    if world == 1 and _main_thread():

        def on_sigint(signum, frame):
            if stop["flag"]:
                raise KeyboardInterrupt
            stop["flag"] = True

        old_handler = signal.signal(signal.SIGINT, on_sigint)

    hooks.start(total, per_epoch, step)
    t0 = time.perf_counter()
    autocast = _autocast(cfg.device, cfg.precision)
    try:
        while step < total:
            epoch, first = divmod(step, per_epoch)
            model.train()
            # loss sum, correct, images: accumulated on the device, read once per epoch
            sums = torch.zeros(3, device=device, dtype=torch.float64)
            epoch_s = 0.0
            if partial is not None:
                sums, epoch_s, partial = partial["sums"].to(device), float(partial["seconds"]), None
            t_epoch = time.perf_counter()
            for x, y in feeder.batches(epoch, first):
                lr = recipe.lr_at(step, per_epoch)
                for g in opt.param_groups:
                    g["lr"] = lr
                with autocast:
                    logits = runner(x)
                    loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                masker.apply()  # momentum and weight decay would otherwise revive pruned weights
                with torch.no_grad():  # python scalars enter as kernel arguments: no host-device copy
                    sums[0] += loss.detach() * len(y)
                    sums[1] += (logits.argmax(1) == y).sum()
                    sums[2] += len(y)
                step += 1
                hooks.step(step)
                if step == kill_at:
                    os._exit(137)
                if step == stop_at:
                    stop["flag"] = True
                if stop["flag"]:
                    break
            if cfg.device == "cuda":
                torch.cuda.synchronize()
            epoch_s += time.perf_counter() - t_epoch
            if stop["flag"] and step % per_epoch:
                checkpoint(step, {"sums": sums.cpu(), "seconds": epoch_s})
                raise Interrupted(format_step(step, per_epoch), out)
            # end of an epoch: one sync for the train metrics, evaluation, a checkpoint
            if world > 1:
                torch.distributed.all_reduce(sums)
            tr = sums.tolist()
            train_seconds += epoch_s
            images_done += tr[2]
            test_loss, test_acc = evaluate(runner, model, feeder, device, autocast, world)
            row = {
                "epoch": step // per_epoch,
                "step": format_step(step, per_epoch),
                "lr": lr,
                "train_loss": tr[0] / max(tr[2], 1),
                "train_accuracy": tr[1] / max(tr[2], 1),
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "images_per_second": tr[2] / max(epoch_s, 1e-9),
                "elapsed_seconds": elapsed + time.perf_counter() - t0,
            }
            metrics.append(row)
            if lead:
                with open(out / METRICS, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            checkpoint(step, None)
            hooks.epoch(row)
            if stop["flag"]:
                raise Interrupted(format_step(step, per_epoch), out)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)

    masker.apply()
    last = metrics[-1]
    summary = {
        "final_test_accuracy": last["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in metrics),
        "final_train_accuracy": last["train_accuracy"],
        "final_test_loss": last["test_loss"],
        "images_per_second": images_done / max(train_seconds, 1e-9),
        "sparsity": ticket.sparsity(),
        "epochs": recipe.epochs,
        "start_step": cfg.start_step,
        "steps": total - start,
        "device": _device_name(device),
        "precision": cfg.precision,
        "world_size": world,
        "seconds": elapsed + time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "arch": cfg.arch,
        "dataset": cfg.dataset,
    }
    if lead:
        _save_final(model, ticket, out / FINAL, cfg, recipe, summary, format_step(total, per_epoch))
        _write_json(out / SUMMARY, summary)
    return summary


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate(runner, model, feeder, device, autocast, world: int) -> tuple[float, float]:
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


def _save_final(model, ticket, path: Path, cfg: TrainConfig, recipe: Recipe, summary: dict, end: str) -> None:
    from ettcli.ticket import Ticket

    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}  # float32 master weights
    meta = {k: v for k, v in ticket.metadata.items() if k != "ett.rewind_step"}
    meta.update(
        {
            "ett.command": "ett train",
            "ett.dataset": cfg.dataset,
            "ett.trained_from_step": cfg.start_step,
            "ett.step": end,
            "ett.recipe": json.dumps(recipe.as_dict(), sort_keys=True),
            "ett.seed": str(cfg.seed),
            "ett.precision": cfg.precision,
            "ett.test_accuracy": f"{summary['final_test_accuracy']:.6f}",
            "ett.source_sha256": cfg.ticket_sha256,
        }
    )
    Ticket.from_arrays(arrays, ticket.masks, meta, where=str(path)).save(path)
