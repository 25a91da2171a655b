"""Scores of the pruning methods that run the network: SNIP, GraSP and SynFlow (torch).

Each scorer works on a copy of the model, so the caller's parameters, gradients and BatchNorm running
statistics never change, and computes in float32 (SNIP, GraSP) or float64 (SynFlow) with autocast turned
off, whatever precision the caller trains in. The score functions take any ``nn.Module`` and the names of
the parameters to score, so they can be checked by hand on a tiny network; :func:`snip`, :func:`grasp`,
:func:`grasp_abs` and :func:`synflow` are the registered methods (see ``ettcli.pruning.METHODS``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ettcli.errors import EttError
from ettcli.mask import Mask
from ettcli.models import model_from_ticket

GRASP_TEMPERATURE = 200.0
SYNFLOW_ROUNDS = 100


# --- models and data -------------------------------------------------------------------------------------------
def fresh_weights(spec, seed: int) -> dict[str, np.ndarray]:
    """Every tensor of a freshly initialised network of ``spec``: the initialisation of ``ett init``."""
    from ettcli.models import init_ticket

    return dict(init_ticket(spec, seed).arrays())


def scoring_batch(spec, root: str | Path, per_class: int, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` training images of every class, normalised as in training, as one batch.

    "First" is the training split's order: file names sorted within each class folder (class folders sorted
    by name), or the file order of torchvision's CIFAR batches. Only those images are decoded. CIFAR-style
    datasets are normalised as in training, ``(x / 255 - mean) / std``; ImageNet-style datasets get the
    test-time transforms (resize, centre crop). No augmentation. Returns float32 NCHW images and int64 labels,
    class by class.
    """
    from ettcli.data import download_dataset, find_layout, load_memory_dataset

    root = Path(root).expanduser()
    if download:
        download_dataset(spec, root)
    kind, where = find_layout(spec, root)
    if kind == "batches":
        data = load_memory_dataset(spec, root)
        idx = []
        for c in range(spec.num_classes):
            have = np.flatnonzero(data.train_y == c)[:per_class]
            _enough(spec, c, len(have), per_class)
            idx.append(have)
        idx = np.concatenate(idx)
        return _normalised(spec, data.train_x[idx]), torch.from_numpy(data.train_y[idx].astype(np.int64))
    files, labels = _first_files(spec, where / "train", per_class)
    y = torch.tensor(labels, dtype=torch.int64)
    if spec.kind == "memory":
        from ettcli.data import decode_images

        return _normalised(spec, decode_images(files, spec.image_size)), y
    return _test_transformed(spec, files), y


def _first_files(spec, train_dir: Path, per_class: int) -> tuple[list[Path], list[int]]:
    """The first ``per_class`` image files of every class folder by name (read with scandir: no stat per file)."""
    from ettcli.data import IMAGE_SUFFIXES, class_folders

    files, labels = [], []
    for c, folder in enumerate(class_folders(spec, train_dir)):
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())
        _enough(spec, c, len(names), per_class)
        files += [folder / n for n in names[:per_class]]
        labels += [c] * per_class
    return files, labels


def _enough(spec, c: int, have: int, want: int) -> None:
    if have < want:
        raise EttError(
            f"{spec.name}: class {c} has only {have} training images, fewer than --samples-per-class {want}; "
            "lower --samples-per-class or point --data-root at the full dataset"
        )


def _normalised(spec, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ``(x / 255 - mean) / std`` as in training."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    mean = torch.tensor(spec.mean).view(1, 1, 1, 3)
    std = torch.tensor(spec.std).view(1, 1, 1, 3)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def _test_transformed(spec, files: list[Path]) -> torch.Tensor:
    from PIL import Image
    from torchvision import transforms

    resize = round(spec.image_size * 256 / 224)
    tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(spec.image_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    xs = []
    for f in files:
        with Image.open(f) as im:
            xs.append(tf(im.convert("RGB")))
    return torch.stack(xs)


# --- scoring helpers -------------------------------------------------------------------------------------------------
@contextmanager
def _exact(device_type: str):
    """Gradients on, autocast off, TF32 off: scores in the model's own dtype whatever context the caller runs in
    (on GPUs from Ampere on, float32 matmuls and convolutions run in TF32 once training has turned it on).

    Attention (the Transformer families) runs on PyTorch's math kernel: the fused CPU and flash kernels have
    no double backward, which GraSP's Hessian-gradient product needs, and the math kernel computes in the
    model's dtype (float64 for SynFlow) on every device.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.enable_grad(), torch.autocast(device_type, enabled=False), _ieee_fp32(), sdpa_kernel(SDPBackend.MATH):
        yield


@contextmanager
def _ieee_fp32():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if not hasattr(matmul, "fp32_precision"):  # PyTorch before 2.9: the legacy flags
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        return
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def _scoring_copy(model: nn.Module, dtype: torch.dtype, bn: str, device: str | torch.device | None = None) -> nn.Module:
    net = copy.deepcopy(model)
    net.to(dtype=dtype)
    if device is not None:
        net.to(device)
    net.train(bn == "train")
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    return net


def _params(net: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    params = dict(net.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise EttError(f"no parameter named {missing[0]} in the network")
    return [params[n] for n in names]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to_numpy(scores: Sequence[torch.Tensor], names: Sequence[str], method: str) -> dict[str, np.ndarray]:
    out = {}
    for name, s in zip(names, scores):
        a = s.detach().cpu().numpy()
        if np.isnan(a).any():
            raise EttError(
                f"{method} scores of {name} are not numbers (NaN); the weights or the data hold non-finite values"
            )
        out[name] = a
    return out


# --- SNIP ----------------------------------------------------------------------------------------------------------
def snip_scores(
    model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor, bn: str = "train"
) -> dict[str, np.ndarray]:
    """|g * w| per weight, g the gradient of the mean cross-entropy over the batch (float32, model unchanged)."""
    device = _device_of(model)
    net = _scoring_copy(model, torch.float32, bn)
    params = _params(net, names)
    with _exact(device.type):
        loss = F.cross_entropy(net(x.to(device, torch.float32)), y.to(device))
        grads = torch.autograd.grad(loss, params)
    return _to_numpy([(g * p).abs() for g, p in zip(grads, params)], names, "snip")


# --- GraSP ---------------------------------------------------------------------------------------------------------
def grasp_scores(
    model: nn.Module,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    bn: str = "train",
    temperature: float = GRASP_TEMPERATURE,
) -> dict[str, np.ndarray]:
    """GraSP's S = -w * (H g) per weight (float32, model unchanged).

    g is the gradient of the mean cross-entropy of ``logits / temperature`` with respect to the scored
    weights; H g is the gradient of ``g_stopped . g`` (double backpropagation), at the same temperature, over
    the same batch. The Hessian is that of the scored weights only, as in the authors' code.
    """
    device = _device_of(model)
    net = _scoring_copy(model, torch.float32, bn)
    params = _params(net, names)
    with _exact(device.type):
        loss = F.cross_entropy(net(x.to(device, torch.float32)) / temperature, y.to(device))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        z = sum((g.detach() * g).sum() for g in grads)
        hg = torch.autograd.grad(z, params)
    return _to_numpy([-(p.detach() * h) for p, h in zip(params, hg)], names, "grasp")


# --- SynFlow -------------------------------------------------------------------------------------------------------
def linearised(model: nn.Module, bn: str = "eval", device=None) -> nn.Module:
    """A float64 copy with every parameter and floating buffer replaced by its absolute value."""
    net = _scoring_copy(model, torch.float64, bn, device)
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.abs_()
    return net


def synflow_round(net: nn.Module, params: Sequence[torch.Tensor], input_shape: Sequence[int]) -> list[torch.Tensor]:
    """One SynFlow scoring pass on a linearised network: |w * dR/dw|, R the sum of the outputs for x = 1."""
    device = params[0].device if params else torch.device("cpu")
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    with _exact(device.type):
        r = net(x).sum()
        grads = torch.autograd.grad(r, params)
    return [(g * p).detach().abs() for g, p in zip(grads, params)]


def synflow_scores(
    model: nn.Module, names: Sequence[str], input_shape: Sequence[int], bn: str = "eval"
) -> dict[str, np.ndarray]:
    """The scores of SynFlow's first round (no weight pruned yet), float64."""
    net = linearised(model, bn)
    params = _params(net, names)
    return _to_numpy(synflow_round(net, params, input_shape), names, "synflow")


def synflow_masks(
    model: nn.Module,
    target,
    input_shape: Sequence[int],
    bn: str = "eval",
    invert: bool = False,
    rounds: int = SYNFLOW_ROUNDS,
    device=None,
) -> dict[str, Mask]:
    """Iterative SynFlow to ``target`` (a :class:`~ettcli.pruning.Target`) over ``rounds`` rounds.

    Round k keeps ``target.at(k / rounds)`` weights (exponential schedule, the last round exactly the
    target), chosen among those the previous round kept; the masks are applied to the linearised weights
    before each round. Selection runs on the CPU in float64.
    """
    names = list(target.sizes)
    net = linearised(model, bn, device)
    params = _params(net, names)
    masks = {n: Mask.ones_like(target.shapes[n]) for n in names}
    dev = params[0].device if params else torch.device("cpu")
    for k in range(1, rounds + 1):
        if k > 1:
            with torch.no_grad():
                for n, p in zip(names, params):
                    p.mul_(torch.from_numpy(masks[n].array).to(dev, torch.float64))
        scores = _to_numpy(synflow_round(net, params, input_shape), names, "synflow")
        masks = target.at(k / rounds).select(scores, invert=invert, allowed=masks)
    return masks


# --- the registered methods ----------------------------------------------------------------------------------------
def _model(job) -> nn.Module:
    model = model_from_ticket(job.ticket, masked=False)
    return model.to(job.device) if job.device != "cpu" else model


def _batch(job) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(job.data, tuple):
        x, y = job.data
        return torch.as_tensor(np.asarray(x), dtype=torch.float32), torch.as_tensor(np.asarray(y), dtype=torch.int64)
    from ettcli.data import default_data_root

    root = job.data if job.data is not None else default_data_root()
    return scoring_batch(job.dataset, root, job.samples_per_class, job.download)


def snip(job) -> dict[str, Mask]:
    x, y = _batch(job)
    return job.select(snip_scores(_model(job), job.names, x, y, job.bn))


def grasp(job) -> dict[str, Mask]:
    """Remove the largest S = -w * Hg: keep the top of -S."""
    x, y = _batch(job)
    s = grasp_scores(_model(job), job.names, x, y, job.bn)
    return job.select({n: -v for n, v in s.items()})


def grasp_abs(job) -> dict[str, Mask]:
    x, y = _batch(job)
    s = grasp_scores(_model(job), job.names, x, y, job.bn)
    return job.select({n: np.abs(v) for n, v in s.items()})


def synflow(job) -> dict[str, Mask]:
    shape = (3, job.dataset.image_size, job.dataset.image_size)
    return synflow_masks(_model(job), job.target, shape, job.bn, job.invert, device=job.device)
