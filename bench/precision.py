"""Precision fidelity: the same short CIFAR-10 run in bf16 (``--precision auto`` on CPUs with native bf16)
and in fp32 (open_lth's precision), same ticket and seed, measured in one run.

Reports, for each training precision: test accuracy when evaluated in the training precision and in fp32,
and training throughput. open_lth trained and evaluated in fp32; under CPU autocast, BatchNorm also runs
in bf16 (its input is bf16), so this measures the whole effect.

    .venv/bin/python bench/precision.py --data-root /tmp/cifar --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch


def evaluate_in(final: Path, data_root: str, precision: str) -> float:
    from ettcli.data import get_dataset, load_memory_dataset
    from ettcli.feeders import MemoryFeeder
    from ettcli.models import load_model
    from ettcli.train import autocast_for, evaluate

    data = load_memory_dataset(get_dataset("cifar10"), data_root)
    feeder = MemoryFeeder(data, get_dataset("cifar10"), 128, torch.device("cpu"), 0)
    model = load_model(final).to(memory_format=torch.channels_last)
    return evaluate(model, feeder.test_batches(), torch.device("cpu"), autocast_for("cpu", precision))[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arch", default="cifar_resnet_20")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--subset", type=int, default=None, help="train on this many images (a quick check)")
    args = ap.parse_args()

    from ettcli.arch import parse_arch
    from ettcli.models import init_ticket
    from ettcli.train import TrainSettings, train_ticket

    tmp = Path(tempfile.mkdtemp(prefix="ett-precision-"))
    ticket = init_ticket(parse_arch(args.arch), seed=args.seed)
    rows = []
    for prec in ("bf16", "fp32"):
        s = TrainSettings(
            data_root=args.data_root,
            epochs=args.epochs,
            precision=prec,
            seed=args.seed,
            threads=args.threads,
            subset=args.subset,
        )
        res = train_ticket(ticket, s, folder=tmp / prec)
        final = res.folder / "final.safetensors"
        rows.append(
            {
                "train_precision": prec,
                "test_acc_eval_same": res.summary["final_test_accuracy"],
                "test_acc_eval_fp32": evaluate_in(final, args.data_root, "fp32"),
                "test_acc_eval_bf16": evaluate_in(final, args.data_root, "bf16"),
                "images_per_second": res.summary["images_per_second"],
                "seconds": res.summary["seconds"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{args.arch}, {args.epochs} epochs, seed {args.seed}, CIFAR-10 at {args.data_root}")
    print("| training precision | test acc (eval in training precision) | eval fp32 | eval bf16 | images/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['train_precision']} | {100 * r['test_acc_eval_same']:.2f}% | {100 * r['test_acc_eval_fp32']:.2f}% "
            f"| {100 * r['test_acc_eval_bf16']:.2f}% | {r['images_per_second']:.0f} |"
        )


if __name__ == "__main__":
    main()
