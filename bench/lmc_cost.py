"""The cost of an ``ett lmc`` measurement next to one training epoch, measured in the same run.

Trains a CIFAR ResNet-20 ticket for one epoch (through ``ettcli.train.train_ticket``, as ``ett lmc`` does for
each copy), then measures a path with ``ettcli.lmc.lmc_pair`` three ways: 11 alphas with BatchNorm
re-estimated on 50 batches of 128 and the full test set (the measurement's core), the same plus the
10,000-image train subset (``ett lmc``'s default), and the core without the BatchNorm reset. The path runs
between two trained copies: ``--pair A B`` (e.g. the two runs of an earlier ``ett lmc``), else the epoch just
trained and a second one-epoch copy (seed 1). The cost depends on the architecture and the images, not on the
weights. Prints one Markdown table row per measurement with the seconds of each part.

    ETT_CACHE=/tmp/ett/cache .venv/bin/python bench/lmc_cost.py --data-root /tmp/cifar
    ETT_CACHE=/tmp/ett/cache .venv/bin/python bench/lmc_cost.py --data-root /tmp/cifar --pair A.safetensors B.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="CIFAR-10 (image folders or torchvision's batches)")
    ap.add_argument("--arch", default="cifar_resnet_20")
    ap.add_argument("--sparsity", type=float, default=0.0, help="global magnitude sparsity of the ticket")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pair", nargs=2, type=Path, default=None, help="two trained tickets of --arch to measure")
    args = ap.parse_args()

    import torch

    from ettcli.arch import parse_arch
    from ettcli.lmc import lmc_pair
    from ettcli.models import init_ticket
    from ettcli.pruning import magnitude_masks
    from ettcli.train import TrainSettings, train_ticket

    tmp = Path(tempfile.mkdtemp(prefix="lmc-cost-"))
    os.environ["ETT_RUNS"] = str(tmp / "runs")
    ticket = init_ticket(parse_arch(args.arch), seed=0)
    if args.sparsity:
        ticket = ticket.with_masks(magnitude_masks(ticket, args.sparsity))
    path = ticket.save(tmp / f"{args.arch}.safetensors")
    base = TrainSettings(data_root=args.data_root, epochs=1, precision=args.precision, threads=args.threads)

    rows = []
    finals = []
    for seed in (0,) if args.pair else (0, 1):
        t = time.perf_counter()
        res = train_ticket(path, replace(base, seed=seed))
        wall = time.perf_counter() - t
        s = res.summary
        finals.append(res.folder / "final.safetensors")
        rows.append(
            (
                f"train 1 epoch (seed {seed}, 391 steps)",
                wall,
                f"{s['train_seconds']:.1f} s training + test evaluation; {s['images_per_second']:.0f} images/s, "
                f"{s['precision']}",
            )
        )
    epoch = min(r[1] for r in rows)
    finals = args.pair or finals

    for name, kw in (
        ("lmc: 11 alphas, BN reset 50x128, full test set", {"train_images": 0}),
        ("lmc: the same + 10,000 train images (default)", {"train_images": 10_000}),
        ("lmc: 11 alphas, no BN reset, full test set", {"train_images": 0, "bn_reset": False}),
    ):
        t = time.perf_counter()
        rec = lmc_pair(*finals, base, alphas=11, bn_batches=50, out=tmp / f"lmc-{len(rows)}", **kw)
        wall = time.perf_counter() - t
        sec = rec["seconds"]
        parts = f"BN reset {sec['bn_reset']:.1f} s, test {sec['test']:.1f} s, train {sec['train']:.1f} s"
        rows.append((name, wall, f"{parts}; test instability {rec['test']['instability']:.2f} pp"))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| what | wall s | x one epoch | parts |")
    print("|---|---:|---:|---|")
    for name, wall, parts in rows:
        print(f"| {name} | {wall:.1f} | {wall / epoch:.2f} | {parts} |")
    print(json.dumps({"tmp": str(tmp)}))


if __name__ == "__main__":
    main()
