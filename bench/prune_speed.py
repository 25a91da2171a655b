"""Scoring time of the one-shot baselines against one training epoch, measured in the same run (CPU).

For each network: ``ettcli.pruning.prune_run`` for snip, grasp and synflow (100 rounds) at 90% sparsity on a
dense open_lth-initialised ticket, with a scoring batch of 10 images per class already in memory (random
32x32 images: the cost does not depend on their content). This is everything ``ett prune`` does except
reading the ticket file and decoding the 100 images: building the model, scoring, selecting, writing the
masks into a new ticket.

The training epoch is extrapolated: a few SGD steps at batch 128 (forward, backward, step, on random 32x32
inputs, channels_last, with the precision ``ett train --precision auto`` picks on this CPU) are timed after
warm-up, and the time per step is multiplied by 391 (50,000 CIFAR-10 images at batch 128). The trainer's
data path costs about 1% on top (BENCHMARKS.md, Training), so this is a slight underestimate of the epoch.

Each measurement keeps the best of ``--repeats`` rounds, training and scoring alternating, so that load from
other processes lowers both about equally.

    .venv/bin/python bench/prune_speed.py
    .venv/bin/python bench/prune_speed.py --archs cifar_resnet_20 --repeats 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ettcli.arch import parse_arch
from ettcli.models import build_model, init_ticket
from ettcli.pruning import prune_run
from ettcli.train import resolve_precision

BATCH = 128
STEPS_PER_EPOCH = 391
METHODS = ("snip", "grasp", "synflow")
GOAL = 0.05


def epoch_seconds(arch: str, precision: str, steps: int) -> float:
    """Seconds per step of forward, backward and SGD at batch 128, times 391."""
    model = build_model(parse_arch(arch), seed=0).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)

    def step():
        with ctx:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps * STEPS_PER_EPOCH


def scoring_seconds(ticket, method: str, data) -> float:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer-collapse warnings are beside the point here
        out = prune_run(ticket, method, sparsity=0.9, data=data if method != "synflow" else None)
    elapsed = time.perf_counter() - t0
    assert out.ticket.counts()[1] == out.target.keep
    return elapsed


def imp_overhead_seconds(arch: str, tmp: Path) -> float:
    """What one IMP level costs besides its training: reading the previous level's final weights, pruning
    ceil(0.2 x remaining) by global magnitude, building the rewind-state ticket under the new masks, writing
    and checking it, and the run identity (the ticket's content hash) that names the level's run folder."""
    from ettcli.lottery import _save_if_changed, prune_level
    from ettcli.mask import Mask
    from ettcli.runs import RunFolder
    from ettcli.ticket import Ticket, read_ticket

    dense = init_ticket(parse_arch(arch), seed=0)
    rewound, final = tmp / f"{arch}-rewind.safetensors", tmp / f"{arch}-final.safetensors"
    dense.save(rewound)
    init_ticket(parse_arch(arch), seed=1).save(final)  # stands in for the previous level's trained weights
    masks = {n: Mask.ones_like(dense.tensors[n].shape) for n in dense.prunable()}
    out = tmp / f"{arch}-level"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    trained = read_ticket(final)
    masks = prune_level(trained, masks, 0.2, "global")
    state = read_ticket(rewound)
    ticket = Ticket.from_arrays(dict(state.arrays()), masks, {"ett.rewind_step": "1000it"})
    ticket = _save_if_changed(ticket, out / "ticket.safetensors", {})
    RunFolder(out, {"ticket": ticket.fingerprint()}).state()
    return time.perf_counter() - t0


def machine() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="cifar_resnet_20,cifar_resnet_56")
    ap.add_argument("--repeats", type=int, default=2, help="rounds; each figure is the best of them")
    ap.add_argument("--steps", type=int, default=5, help="timed SGD steps per training measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", "cpu")
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((100, 3, 32, 32)).astype(np.float32), np.arange(100) % 10)
    print(f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.2f}")
    print(
        f"training epoch: {args.steps} timed SGD steps at batch {BATCH} ({precision}, channels_last, random "
        f"32x32 inputs) extrapolated to {STEPS_PER_EPOCH} steps; best of {args.repeats} rounds"
    )
    rows = []
    for arch in args.archs.split(","):
        ticket = init_ticket(parse_arch(arch), seed=0)
        best = {m: float("inf") for m in ("epoch", *METHODS)}
        for _ in range(args.repeats):
            best["epoch"] = min(best["epoch"], epoch_seconds(arch, precision, args.steps))
            for m in METHODS:
                best[m] = min(best[m], scoring_seconds(ticket, m, data))
        for m in METHODS:
            rows.append((arch, m, best[m], best["epoch"]))
    print(f"\n| model | method | scoring s | epoch s (extrapolated) | share of an epoch | goal < {GOAL:.0%} |")
    print("|---|---|---:|---:|---:|---|")
    for arch, m, s, e in rows:
        ok = "yes" if s / e < GOAL else "no"
        print(f"| {arch} | {m} | {s:.2f} | {e:.1f} | {100 * s / e:.2f}% | {ok} |")
    print("\n| model | IMP overhead per level, s (pruning, rewinding, writing, run identity) | goal < 1 s |")
    print("|---|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            s = min(imp_overhead_seconds(arch, Path(tmp)) for _ in range(args.repeats))
            print(f"| {arch} | {s:.3f} | {'yes' if s < 1 else 'no'} |")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
