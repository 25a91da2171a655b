"""Training throughput: ``ett train``'s loop against a plain open_lth-style loop, in the same run.

The plain loop is what open_lth and ElasticLTH do: in-memory uint8 images through PIL transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader, fp32, NCHW, the
mask multiplied into the weights before each forward. ``ett``'s loop is ``ettcli.train.run_loop`` itself (the
data resident as uint8 on the device, batched augmentation, channels_last, auto precision), run for two
epochs of the same images; the second epoch's rate is reported (the first pays for warm-up).

Both train the same 80%-sparse ticket at batch 128, with the network family's recipe: SGD for the CIFAR
ResNet; for the CIFAR ViT (``--archs cifar_vit_4_64``) AdamW with label smoothing 0.1 in both loops (the
plain loop as a timm/CCT-style script would write it, weight decay on every parameter), and ``ett``'s loop
once at auto precision and once in fp32. Images: the CIFAR-10 copy in ../shared/data when it is
there (decoded once into a temporary cache), else random uint8 images of the same shape.

    .venv/bin/python bench/train_throughput.py                 # CPU, and GPU when CUDA is present
    .venv/bin/python bench/train_throughput.py --images 5120 --devices cpu
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_throughput.py --archs cifar_vit_4_64 --images 2560 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ettcli.arch import parse_arch
from ettcli.data import IMAGENET_MEAN, IMAGENET_STD, InMemory, get_dataset, load_memory_dataset
from ettcli.feeders import MemoryFeeder
from ettcli.models import init_ticket
from ettcli.pruning import magnitude_masks
from ettcli.recipe import customise, recipe_for
from ettcli.runs import RunFolder
from ettcli.train import Hooks, LoopConfig, make_optimizer, resolve_precision, run_loop

ROOT = Path(__file__).resolve().parent.parent
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BATCH = 128


def load_images(n: int, tmp: Path) -> tuple[np.ndarray, np.ndarray, str]:
    if TARBALL.is_file():
        with tarfile.open(TARBALL, "r:gz") as tar:
            tar.extractall(tmp / "cifar", filter="data")
        os.environ.setdefault("ETT_CACHE", str(tmp / "cache"))
        data = load_memory_dataset(get_dataset("cifar10"), tmp / "cifar")
        return data.train_x[:n], data.train_y[:n], f"CIFAR-10 (first {n} of {TARBALL.name}'s training images)"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), "random uint8 images"


def make_ticket(arch: str):
    ticket = init_ticket(parse_arch(arch), seed=0)
    ticket = ticket.with_masks(magnitude_masks(ticket, 0.8))
    return ticket


def ett_loop(arch: str, x, y, device: str, tmp: Path, compile_: bool = False, precision="auto") -> tuple[float, str]:
    """Images/s of ``ettcli.train.run_loop`` over the second of two epochs."""
    ticket = make_ticket(arch)
    prec = resolve_precision(precision, device)
    data = InMemory(x, y, x[:1000], y[:1000], [], "bench")
    feeder = MemoryFeeder(data, get_dataset("cifar10"), BATCH, torch.device(device), 0)
    recipe = customise(recipe_for("cifar10", ticket.arch.family), feeder.per_epoch, epochs=2)
    cfg = LoopConfig(recipe, 0, recipe.total_iterations(feeder.per_epoch), None, device, prec, compile_, False)
    run = RunFolder(Path(tempfile.mkdtemp(dir=tmp)), {"bench": arch})
    run.begin(fresh=True)
    run_loop(ticket, cfg, feeder, run, False, Hooks())
    return run.metrics()[-1]["images_per_second"], prec + (" compiled" if compile_ else "")


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        from torchvision import transforms

        self.x, self.y = x, y
        self.tf = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def plain_loop(arch: str, x, y, device: str, workers: int) -> float:
    """Images/s of an open_lth-style loop (after 3 warm-up steps)."""
    from ettcli.models import build_model

    ticket = make_ticket(arch)
    model = build_model(ticket.arch, seed=None, init=False)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ticket.arrays()})
    model.to(device)
    params = dict(model.named_parameters())
    masks = {k: torch.from_numpy(m.array).to(device=device, dtype=torch.float32) for k, m in ticket.masks.items()}
    vit = ticket.arch.family == "cifar_vit"
    if vit:  # a plain ViT script: AdamW on every parameter, label smoothing
        opt = torch.optim.AdamW(model.parameters(), lr=5.5e-4, weight_decay=0.06)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    smoothing = 0.1 if vit else 0.0
    loader = torch.utils.data.DataLoader(
        _PilDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=workers, pin_memory=device == "cuda"
    )
    model.train()
    seen, t0 = 0, None
    for i, (xb, yb) in enumerate(loader):
        if i == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        xb, yb = xb.to(device), yb.to(device)
        with torch.no_grad():
            for k, m in masks.items():
                params[k].mul_(m)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # open_lth reads the loss every step
        seen += len(yb)
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def compute_only(arch: str, x, device: str, bf16: bool, steps: int = 20) -> float:
    """Images/s of forward, backward and SGD on one fixed batch: the ceiling any loop can reach."""
    from ettcli.models import build_model

    fmt = torch.channels_last if bf16 else torch.contiguous_format
    spec = parse_arch(arch)
    model = build_model(spec, seed=0).to(device=device, memory_format=fmt)
    opt = make_optimizer(model, recipe_for("cifar10", spec.family), spec, device)  # the family's optimizer
    xb = torch.from_numpy(x[:BATCH]).to(device).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=fmt)
    yb = torch.zeros(BATCH, dtype=torch.long, device=device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    for i in range(steps + 3):
        if i == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=bf16):
            loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe_for("cifar10", spec.family).label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10240, help="training images per epoch (default 10240)")
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--plain-workers", default="0,2", help="DataLoader workers tried for the plain loop")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the loops this many times; keep each one's best")
    ap.add_argument(
        "--archs", default=None, help="networks, comma-separated (default: cifar_resnet_20; on CUDA also 56)"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        x, y, what = load_images(args.images, tmp)
        print(f"images: {what}; batch {BATCH}; torch {torch.__version__}; {platform.processor() or platform.machine()}")
        print(f"threads {torch.get_num_threads()}, cpu bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
        for device in args.devices.split(","):
            archs = ["cifar_resnet_20"] + (["cifar_resnet_56"] if device == "cuda" else [])
            if args.archs:
                archs = args.archs.split(",")
            for arch in archs:
                # loops alternate, and each keeps its best round: other load on the machine only slows a loop down
                loops = [(f"plain open_lth-style, {w} workers", w) for w in map(int, args.plain_workers.split(","))]
                loops += [("compute only", False), ("compute only", True)]
                loops += [("ett train loop", False)] + (
                    [("ett train loop, --compile", True)] if device == "cuda" else []
                )
                if arch.startswith("cifar_vit") and device == "cpu":  # narrow ViTs: bf16's casts may not pay
                    loops += [("ett train loop, --precision fp32", "fp32")]
                best: dict[str, tuple[float, str]] = {}
                for r in range(args.rounds):
                    for name, arg in loops:
                        if name.startswith("plain"):
                            rate, prec = plain_loop(arch, x, y, device, arg), "fp32 NCHW"
                        elif name.startswith("compute"):
                            rate = compute_only(arch, x, device, arg)
                            prec = "bf16 channels_last" if arg else "fp32 NCHW"
                            name = f"compute only (one fixed batch, {prec.split()[0]})"
                        elif arg == "fp32":
                            rate, prec = ett_loop(arch, x, y, device, tmp, precision="fp32")
                        else:
                            rate, prec = ett_loop(arch, x, y, device, tmp, arg)
                            prec += " channels_last"
                        print(f"round {r + 1}: {device} {arch} {name}: {rate:,.0f} images/s", flush=True)
                        if rate > best.get(name, (0.0, ""))[0]:
                            best[name] = (rate, prec)
                plain_best = max(v[0] for k, v in best.items() if k.startswith("plain"))
                for name, (rate, prec) in best.items():
                    ratio = rate / plain_best
                    rows.append((device, arch, name, prec, rate, ratio))
    print()
    print("| device | model | loop | precision | images/s | vs best plain |")
    print("|---|---|---|---|---:|---:|")
    for device, arch, loop, prec, rate, ratio in rows:
        print(f"| {device} | {arch} | {loop} | {prec} | {rate:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
