"""Speed of one training step in bf16 autocast against fp32, by network, on a CPU (or a GPU), in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/precision_speed.py [--archs cifar_resnet_20,cifar_vit_4_64,cifar_vit_6]

One SGD step (forward, backward, update) on a fixed batch of random 32x32 images, the network built by ett
(``build_model``; the ResNets in channels_last, as ``ett train`` runs them); fp32 and bf16 alternate
``--rounds`` times and the best of each is kept. Prints images per second and the bf16 / fp32 ratio: where
bf16 pays on this machine (``--precision auto`` picks bf16 wherever the hardware has it natively).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def step_speed(arch: str, precision: str, device: str, batch: int, steps: int) -> float:
    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    spec = parse_arch(arch)
    conv = spec.fam.name in ("cifar_resnet", "imagenet_resnet", "cifar_vgg")
    layout = torch.channels_last if conv else torch.contiguous_format
    model = build_model(spec, seed=0).to(device, memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=layout)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="cifar_resnet_20,cifar_vit_4_64,cifar_vit_6")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {args.device}, batch {args.batch}, best of {args.rounds}"
    )
    print(f"{'network':18} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    for arch in args.archs.split(","):
        best = {"fp32": 0.0, "bf16": 0.0}
        for _ in range(args.rounds):
            for precision in best:
                best[precision] = max(best[precision], step_speed(arch, precision, args.device, args.batch, args.steps))
        print(f"{arch:18} {best['fp32']:11.0f} {best['bf16']:11.0f} {best['bf16'] / best['fp32']:10.2f}")


if __name__ == "__main__":
    main()
