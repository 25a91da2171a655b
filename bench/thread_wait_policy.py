"""OpenMP's wait policy on a shared machine: ``OMP_WAIT_POLICY=PASSIVE`` against the default, quiet and loaded.

By default OpenMP threads spin for a while after each parallel region before they sleep. On a machine whose
cores are taken by other processes, a spinning thread holds a core that the thread it waits for needs, and
training slows by an order of magnitude. ``PASSIVE`` makes waiting threads sleep at once. The policy is read
when the OpenMP runtime loads, so every configuration runs in a fresh process with the environment set before
``import torch``.

Each configuration trains a dense CIFAR ResNet-20 (the same model ``ett train`` builds, channels_last, bf16
autocast where the CPU has bf16, SGD at batch 128) on random data for a few seconds after warm-up and reports
images/s. Configurations: wait policy (default, PASSIVE) x threads (1, all the process's CPUs) x load (quiet:
whatever else runs on the machine; loaded: this script also runs one busy-loop process per CPU). Rounds are
interleaved so that a change in the machine's own load hits every configuration alike; ratios are taken within
a round.

    .venv/bin/python bench/thread_wait_policy.py
    .venv/bin/python bench/thread_wait_policy.py --rounds 3 --policies default,PASSIVE,GOMP_SPINCOUNT=10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
import torch
from ettcli.arch import parse_arch
from ettcli.models import build_model
from ettcli.train import cpu_has_bf16
torch.set_num_threads(threads)
model = build_model(parse_arch("cifar_resnet_20")).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
bf16 = cpu_has_bf16()
g = torch.Generator().manual_seed(0)
x = torch.randn(128, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,), generator=g)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(2):
    step()
n, t0 = 0, time.perf_counter()
while n < 3 or time.perf_counter() - t0 < seconds:
    step()
    n += 1
print(json.dumps({"rate": 128 * n / (time.perf_counter() - t0), "steps": n, "bf16": bf16,
                  "policy": os.environ.get("OMP_WAIT_POLICY", "default")}))
"""


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(policy: str, threads: int, seconds: float) -> float:
    """Images/s in a fresh process; ``policy``: ``default``, an ``OMP_WAIT_POLICY`` value, or ``NAME=VALUE``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    if "=" in policy:
        name, value = policy.split("=", 1)
        env[name] = value
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(seconds)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["rate"]


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per configuration")
    ap.add_argument(
        "--policies",
        default="default,PASSIVE",
        help="comma-separated: default, an OMP_WAIT_POLICY value, or NAME=VALUE (e.g. GOMP_SPINCOUNT=10000)",
    )
    args = ap.parse_args()
    policies = args.policies.split(",")
    n = cpus()
    thread_counts = sorted({1, n})
    print(f"{platform.processor() or platform.machine()}, {n} CPU(s) for this process; load average "
          f"{os.getloadavg()[0]:.2f} at the start; python {platform.python_version()}")  # fmt: skip
    table: dict[tuple[str, int, str], list[float]] = {}
    for r in range(args.rounds):
        for load in ("quiet", "loaded"):
            hogs = busy_loops(n) if load == "loaded" else []
            try:
                time.sleep(0.5 if hogs else 0)
                for threads in thread_counts:
                    for name in policies:
                        rate = run(name, threads, args.seconds)
                        table.setdefault((load, threads, name), []).append(rate)
                        print(
                            f"round {r + 1}: {load:6s} {threads} thread(s) {name:8s} {rate:8.1f} images/s", flush=True
                        )
            finally:
                for p in hogs:
                    p.kill()
                    p.wait()
    print()
    others = [p for p in policies if p != "default"]
    print(f"| load | threads | {' | '.join(f'{p} images/s' for p in policies)} | "
          f"{' | '.join(f'{p} / default (per round)' for p in others)} |")  # fmt: skip
    print("|---|---|" + "---|" * (len(policies) + len(others)))
    for load in ("quiet", "loaded"):
        for threads in thread_counts:
            d = table[(load, threads, "default")]
            cells = [", ".join(f"{v:.0f}" for v in table[(load, threads, p)]) for p in policies]
            cells += [", ".join(f"{b / a:.2f}" for a, b in zip(d, table[(load, threads, p)])) for p in others]
            print(f"| {load} | {threads} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
