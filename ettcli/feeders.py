"""Feeders: where training batches come from, with the order and augmentation of every epoch seeded.

A feeder has ``per_epoch`` (iterations in one epoch, over all processes), ``batches(epoch, start)`` (this
process's share of iterations ``start..per_epoch-1`` of ``epoch``, normalised, channels_last) and
``test_batches()``. The order and the augmentation of every epoch come from a generator seeded by
(seed, epoch) (:func:`epoch_plan`), so any step can be reproduced without replaying the steps before it:
resuming and training from a rewind step fast-forward for free.

* :class:`MemoryFeeder`: a CIFAR-style set resident on the device as uint8, augmented there in batches
  (torchvision's ``RandomCrop(32, padding=4)`` and a horizontal flip, as index arithmetic).
* :class:`FolderFeeder`: image folders (ImageNet) through a DataLoader whose workers decode and augment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Protocol

import torch

from ettcli.data import DatasetSpec, InMemory
from ettcli.errors import EttError

EVAL_BATCH = 1000


class Feeder(Protocol):
    """What the training loop needs from a data source."""

    per_epoch: int

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def iterations_per_epoch(n: int, batch: int, world: int = 1) -> int:
    """open_lth keeps the last partial batch (50,000 / 128 -> 391); one smaller than the process count is dropped."""
    full, rest = divmod(n, batch)
    return full + (1 if rest >= max(world, 1) else 0)


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

    def plain_train_batches(
        self, indices: torch.Tensor, batch: int = EVAL_BATCH
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training images at ``indices``, in that order, normalised but not augmented, ``batch`` at a time.

        For measuring a trained network on its training data and re-estimating its BatchNorm statistics
        (``ett lmc``): the same indices give the same tensors on every call.
        """
        idx = indices.to(self.device)
        for s in range(0, len(idx), batch):
            i = idx[s : s + batch]
            yield self.normalise(self.train_x[i]), self.train_y[i]

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
        keep = workers > 0  # workers live across epochs instead of being spawned again for each
        self.train = torch.utils.data.DataLoader(
            train_ds, batch_sampler=self.sampler, num_workers=workers, pin_memory=pin, persistent_workers=keep
        )
        shard = torch.utils.data.Subset(test_ds, range(rank, len(test_ds), world))
        self.test = torch.utils.data.DataLoader(
            shard, batch_size=max(1, batch // max(world, 1)), num_workers=workers, persistent_workers=keep
        )

    def _to(self, x, y):
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def batches(self, epoch: int, start: int = 0):
        self.sampler.epoch, self.sampler.start = epoch, start
        yield from _plain_errors(self._to(x, y) for x, y in self.train)

    def test_batches(self):
        yield from _plain_errors(self._to(x, y) for x, y in self.test)


def _plain_errors(it):
    """A worker's EttError (an undecodable image) comes back wrapped in a traceback; keep its own line."""
    try:
        yield from it
    except EttError as exc:
        line = str(exc).strip().splitlines()[-1]
        raise EttError(line.split("EttError: ", 1)[-1]) from None
