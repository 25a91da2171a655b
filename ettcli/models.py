"""Torch models of the three families, built from an :class:`~ettcli.arch.ArchSpec`.

Their ``state_dict()`` names and shapes are exactly the spec's (open_lth's CIFAR ResNet and VGG,
torchvision's ResNet layout), so a ticket that passed inference loads with ``strict=True``.
Initialisation follows open_lth: Kaiming normal (fan-in) on every conv and linear weight, BatchNorm
gamma ~ U(0, 1) and beta = 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ettcli.arch import ArchSpec, open_lth_init  # noqa: F401 (open_lth_init: part of this module's API)
from ettcli.errors import EttError
from ettcli.mask import Mask

if TYPE_CHECKING:
    from ettcli.ticket import Ticket


class CifarBlock(nn.Module):
    """open_lth's basic block: two 3x3 convs, a 1x1 stride-2 projection on downsampling blocks."""

    def __init__(self, f_in: int, f_out: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        w = spec.width
        self.conv = nn.Conv2d(3, w, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        blocks, cur = [], w
        for s, n in enumerate(spec.stages):
            for u in range(n):
                f = spec.stage_channels(s)
                blocks.append(CifarBlock(cur, f, downsample=spec.has_shortcut(s, u)))
                cur = f
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cur, spec.num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = out.mean((2, 3))  # global average pool; adaptive_avg_pool2d has no deterministic CUDA backward
        return self.fc(out)


class VggLayer(nn.Module):
    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """open_lth's CIFAR VGG: conv+BN+ReLU layers, a max-pool between stages (no keys), one linear head."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        layers, cur = [], 3
        for s, n in enumerate(spec.stages):
            if s:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n):
                layers.append(VggLayer(cur, spec.stage_channels(s)))
                cur = spec.stage_channels(s)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cur, spec.num_classes)

    def forward(self, x):
        out = self.layers(x)
        out = out.mean((2, 3))  # global average pool; adaptive_avg_pool2d has no deterministic CUDA backward
        return self.fc(out)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock layout (``downsample.0/1``)."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            if downsample
            else None
        )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + idt)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck layout (stride on the 3x3 conv, expansion 4)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if downsample
            else None
        )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + idt)


class ImageNetResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, layer1..N, fc) at any stage list and width."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.conv1 = nn.Conv2d(3, spec.width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.width)
        cur = spec.width
        for s, n in enumerate(spec.stages):
            blocks = []
            for u in range(n):
                stride = 2 if (s > 0 and u == 0) else 1
                cout = spec.stage_channels(s)
                ds = spec.has_shortcut(s, u)
                if spec.block == "bottleneck":
                    blocks.append(Bottleneck(cur, spec.width * 2**s, cout, stride, ds))
                else:
                    blocks.append(BasicBlock(cur, cout, stride, ds))
                cur = cout
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_stages = len(spec.stages)
        self.fc = nn.Linear(cur, spec.num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        x = x.mean((2, 3))  # global average pool; adaptive_avg_pool2d has no deterministic CUDA backward
        return self.fc(x)


class Prefixed(nn.Module):
    """Holds a model under ``model.`` (open_lth wraps torchvision models this way)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def build_model(spec: ArchSpec, seed: int | None = 0, init: bool = True) -> nn.Module:
    """A model of ``spec`` (its family's :meth:`~ettcli.arch.Family.build`) initialised by its family (open_lth's
    scheme unless the family says otherwise), seeded; keys exactly ``spec.tensors``."""
    family = spec.fam
    if seed is not None:
        torch.manual_seed(seed)
    model = family.build(spec)
    if init:
        family.init(model)
    if spec.prefix:
        if spec.prefix != "model.":
            raise EttError(f"no model can be built with key prefix '{spec.prefix}'")
        model = Prefixed(model)
    return model


# --- the ticket <-> model bridge ---------------------------------------------------------------------------------
class Masker:
    """A ticket's masks beside a model's parameters; :meth:`apply` zeroes every pruned weight in place.

    Each mask has its parameter's dtype, device and memory layout (channels_last included), so one
    ``_foreach_mul_`` over all of them stays on the fast path.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Mask | np.ndarray]):
        params = dict(model.named_parameters())
        self.params, self.masks = [], []
        for name, m in masks.items():
            if name not in params:
                raise EttError(f"mask '{name}_mask' has no parameter '{name}' in the model")
            p = params[name]
            values = torch.from_numpy(np.array(m.array if isinstance(m, Mask) else m))
            mask = torch.empty_like(p, requires_grad=False)  # same strides as the parameter
            mask.copy_(values)
            self.params.append(p)
            self.masks.append(mask)

    @torch.no_grad()
    def apply(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


def model_from_ticket(ticket: Ticket, device: str | torch.device = "cpu", masked: bool = True) -> nn.Module:
    """A model of the ticket's architecture holding its tensors (``strict=True``).

    Pruned weights are zeroed unless ``masked=False`` (pruning methods score the unmasked weights).
    """
    model = build_model(ticket.arch, seed=None, init=False)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ticket.arrays()}
    model.load_state_dict(state, strict=True)
    model.to(device)
    if masked:
        Masker(model, ticket.masks).apply()
    return model


def ticket_from_model(
    model: nn.Module, masks: Mapping[str, Mask] | None = None, metadata: Mapping[str, str] | None = None
) -> Ticket:
    """A ticket of the model's ``state_dict()`` (float32 master weights, buffers included) under ``masks``."""
    from ettcli.ticket import Ticket

    arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
    return Ticket.from_arrays(arrays, masks or {}, metadata or {})


def init_ticket(spec: ArchSpec | str, seed: int, num_classes: int | None = None) -> Ticket:
    """A dense ticket of ``spec`` (or of an architecture name, parsed with ``num_classes``) initialised by its
    family (open_lth's scheme by default), seeded; its rewind step is 0."""
    from ettcli.arch import check_fits_in_memory, parse_arch

    if isinstance(spec, str):
        spec = parse_arch(spec, num_classes=num_classes)
    check_fits_in_memory(spec)
    try:
        model = build_model(spec, seed=seed)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise EttError(
            f"not enough memory to build {spec.name} ({spec.num_values:,} parameters and buffers); choose a "
            "smaller width or depth, or free memory"
        ) from None
    metadata = {"ett.seed": str(seed), "ett.init": spec.fam.init_name, "ett.rewind_step": "0it"}
    return ticket_from_model(model, metadata={**metadata, **spec.fam.ticket_metadata(spec)})


def load_model(ticket: Ticket | str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A ready ``nn.Module`` from a ticket or a ticket file: its weights, masks applied (pruned weights 0).

    The masks are applied once; to keep pruned weights at zero while training, use :class:`Masker` and
    call ``apply()`` after every optimizer step::

        model = ettcli.load_model("r56.safetensors")
        masker = ettcli.models.Masker(model, ettcli.read_ticket("r56.safetensors").masks)
    """
    from ettcli.ticket import as_ticket

    return model_from_ticket(as_ticket(ticket), device)
