"""How fast `ett inspect` reads a ticket, against bare reads measured in the same run.

    .venv/bin/python bench/inspect_speed.py [--repeats 5] [--ticket imagenet|bert]

Tickets: ``imagenet`` a ~100 MB ImageNet ResNet-34 (1000 classes), ``bert`` the ~500 MB BERT-base-shaped
ticket of bench/transform_speed.py (12 layers, hidden 768; masks on the layers' weight matrices).

References, each in a fresh interpreter like the CLI:
  * python -c pass                          (interpreter start-up)
  * header read: the 8-byte length and the JSON header, parsed (names, dtypes, shapes, metadata)
  * safetensors.numpy.load_file(path)       (the library reading every tensor)
  * a bare Typer app's --help                (two commands: the floor of any Typer CLI's help)
Prints wall-time and CPU-time (user + system) medians, peak RSS, and ett's ratios to the header read and to the
library read. ``ett --help`` is measured in the same run against the bare Typer app: ett's start-up with nothing
to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADER_READ = (
    "import json, struct, sys; f = open(sys.argv[1], 'rb'); (n,) = struct.unpack('<Q', f.read(8)); "
    "h = json.loads(f.read(n)); print(len(h))"
)

BARE_TYPER = """
import typer
app = typer.Typer(add_completion=False)
@app.command()
def first():
    "One command."
@app.command()
def second():
    "A second command, so that the app is a group."
app()
"""


def make_ticket(path: Path, kind: str = "imagenet") -> int:
    if kind == "bert":
        sys.path.insert(0, str(Path(__file__).parent))
        from transform_speed import make_bert

        make_bert(path)
        return path.stat().st_size
    from ettcli.arch import parse_arch
    from ettcli.mask import Mask
    from ettcli.models import init_ticket

    ticket = init_ticket(parse_arch("imagenet_resnet_34", num_classes=1000), seed=0)
    rng = np.random.default_rng(0)
    ticket = ticket.with_masks({n: Mask(rng.random(ticket.tensors[n].shape) >= 0.7379) for n in ticket.prunable()})
    ticket.save(path)
    return path.stat().st_size


def run(cmd: list[str], repeats: int) -> tuple[float, float, float]:
    """Median wall seconds, peak RSS (MiB) and median CPU seconds (user + system) of one child, from wait4."""
    times, peak, cpu = [], 0.0, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - t0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{cmd} failed with {proc.returncode}")
        peak = max(peak, usage.ru_maxrss / 1024)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(times), peak, statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ticket", choices=("imagenet", "bert"), default="imagenet")
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:  # in a child, so that this process stays small (a forked child inherits its peak RSS)
        make_ticket(Path(args.make), args.ticket)
        return
    py = sys.executable
    # byte-compile ettcli as an install would (PYTHONDONTWRITEBYTECODE, set in some environments, would
    # otherwise make every ett start compile its modules from source)
    import compileall

    import ettcli

    compileall.compile_dir(Path(ettcli.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.ticket}.safetensors"
        subprocess.run([py, __file__, "--ticket", args.ticket, "--make", str(path)], check=True)
        size = path.stat().st_size
        rows = [
            ("python -c pass", [py, "-c", "pass"]),
            ("header read (struct + json)", [py, "-c", HEADER_READ, str(path)]),
            (
                "safetensors.numpy.load_file",
                [py, "-c", f"from safetensors.numpy import load_file; load_file({str(path)!r})"],
            ),
            ("ett inspect --json", [py, "-m", "ettcli", "inspect", str(path), "--json"]),
            ("ett inspect (table)", [py, "-m", "ettcli", "inspect", str(path)]),
            ("bare Typer app --help", [py, "-c", BARE_TYPER, "--help"]),
            ("ett --help", [py, "-m", "ettcli", "--help"]),
        ]
        results = {name: run(cmd, args.repeats) for name, cmd in rows}
    ref = results["safetensors.numpy.load_file"][0]
    head = results["header read (struct + json)"][0]
    what = "imagenet_resnet_34, 1000 classes" if args.ticket == "imagenet" else "BERT-base shape (hf_bert_12)"
    print(f"ticket: {what}, 73.79% sparse, {size / 2**20:.1f} MiB; median of {args.repeats}")
    ref_cpu = results["safetensors.numpy.load_file"][2]
    print(
        f"{'command':32} {'wall s':>8} {'/header':>8} {'/load_file':>10} {'peak MiB':>9} {'cpu s':>6} {'cpu /load_file':>14}"
    )
    for name, (wall, peak, cpu) in results.items():
        print(
            f"{name:32} {wall:8.3f} {wall / head:8.2f} {wall / ref:10.2f} {peak:9.0f} {cpu:6.3f} {cpu / ref_cpu:14.2f}"
        )
    ett, bare = results["ett --help"], results["bare Typer app --help"]
    print(f"ett --help / bare Typer app --help: wall {ett[0] / bare[0]:.2f}, cpu {ett[2] / bare[2]:.2f}")


if __name__ == "__main__":
    main()
