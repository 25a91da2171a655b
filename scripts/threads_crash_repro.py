"""Plain torch, no ett loop: does training crash at a given thread count on this machine?

On a 2-core machine (torch 2.14.1, oneDNN 3.12, AMD EPYC with AVX512-BF16, 2026-12-04) this crashed with 3
threads in fp32 and in bf16, every try (``--threads 3 8 --tries 2``: 139 SIGSEGV, 139; bf16 134 SIGABRT, 139),
while 2 threads ran and 8 ran here; ``ett train`` itself crashed with 8 (``free(): invalid next size``,
``double free or corruption``). ``ett`` therefore never runs torch with more threads than the CPUs a process
may use (``ettcli/cpus.py``). The cause is narrower: ``--batch`` shows a crash at or below the core count
whenever the thread count does not divide the batch (2 threads: batches 3, 5, 7, 9, 15, 81 crashed, every
even one from 2 to 128 ran; 3 threads: 128 crashed, 129 ran; 4 threads: 6 crashed, 8 ran), in the backward
pass of channels_last convolutions (contiguous tensors, and forward passes, ran), so ``ett``'s CPU training
also keeps its thread count a divisor of each batch (``ettcli/train.py``). Rerun this on other machines and
torch versions:

    .venv/bin/python scripts/threads_crash_repro.py --threads 2 --batch 5 --tries 3

    .venv/bin/python scripts/threads_crash_repro.py                        # 1 .. 2 x the CPUs, fp32 and bf16
    .venv/bin/python scripts/threads_crash_repro.py --threads 3 8 --tries 3 --precision fp32

Each try is a fresh process: a network built by ``ettcli.models.build_model`` (default: the width-4 CIFAR
ResNet-20 that crashed ``ett train``; a width-16 one with 8 threads did not finish 20 steps in 120 s there),
channels_last, 20 SGD steps at batch 128 (``--batch``) on random data, ``torch.set_num_threads(N)`` (the process's affinity is
not changed, so N may exceed the CPUs it may use). The table gives each try's exit status: 0 ran, 134 SIGABRT,
139 SIGSEGV, "timeout" did not finish in --timeout seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys

CHILD = r"""
import sys, torch
from ettcli.arch import parse_arch
from ettcli.models import build_model
threads, precision, arch, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
model = build_model(parse_arch(arch)).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
g = torch.Generator().manual_seed(0)
for _ in range(20):
    x = torch.randn(batch, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
"""


def status(code: int | None) -> str:
    if code is None:
        return "timeout"
    if code < 0:
        return f"{128 - code} ({signal.Signals(-code).name})"
    return str(code)


def main() -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=list(range(1, 2 * cpus + 1)))
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--arch", default="cifar_resnet_20_4", help="any architecture name ett init takes")
    ap.add_argument("--batch", type=int, default=128, help="images per step (a short last batch is small)")
    ap.add_argument("--tries", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    import torch

    print(f"{platform.processor() or platform.machine()}, {cpus} CPU(s) for this process, torch {torch.__version__}, "
          f"{args.arch}")  # fmt: skip
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    print("| threads | precision | exit status of each try |")
    print("|---|---|---|")
    for n in args.threads:
        for prec in precisions:
            codes = []
            for _ in range(args.tries):
                try:
                    p = subprocess.run([sys.executable, "-c", CHILD, str(n), prec, args.arch, str(args.batch)], env=env, capture_output=True,
                                       timeout=args.timeout)  # fmt: skip
                    codes.append(p.returncode)
                except subprocess.TimeoutExpired:
                    codes.append(None)
            print(f"| {n} | {prec} | {', '.join(status(c) for c in codes)} |", flush=True)


if __name__ == "__main__":
    main()
