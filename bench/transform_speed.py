"""How fast `ett stretch` writes a target ticket, against a bare key remap measured in the same run.

    .venv/bin/python bench/transform_speed.py [--repeats 7]

Three transfers, tickets made at benchmark time in a temporary folder (random masks at 73.79%):
  * cifar_resnet_20 -> cifar_resnet_56 (open_lth init; 1.3 MiB in, 4.3 MiB out)
  * imagenet_resnet_26 -> imagenet_resnet_34, 1000 classes (open_lth init; about 100 MB in)
  * a BERT-base-shaped ticket (Hugging Face BertForSequenceClassification names: 12 layers, hidden 768,
    vocabulary 30,522; random weights, masks on the layers' weight matrices) -> 24 layers (about 500 MB in)

``--case bert`` (or ``cifar``, ``imagenet``) runs one of them.

Each command runs in a fresh interpreter, as a user would run it:
  * bare remap: ``safetensors.numpy.load_file``, rename (and duplicate) keys by the same plan, ``save_file``;
  * ``python -m ettcli stretch SRC --to TARGET -o OUT`` (the real CLI).
Prints wall-time medians, peak RSS (``wait4``'s ru_maxrss of each child) and ett's ratios to the remap, and
the median CPU time (user + system, from ``wait4``) of each: on a shared, loaded machine a child waits for a
core for a while, which the wall time counts and the CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    "cifar": ("cifar_resnet_20", "resnet-56", 10),
    "imagenet": ("imagenet_resnet_26", "resnet-34", 1000),
    "bert": ("bert_base", "bert-24", 2),
}
SPARSITY = 0.7379

REMAP = """
import json, sys
from safetensors.numpy import load_file, save_file
src, dst, pairs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
tensors = load_file(src)
save_file({new: tensors[old] for new, old in pairs}, dst)
"""


def bert_base_arrays(layers: int = 12, hidden: int = 768, vocab: int = 30522, classes: int = 2, seed: int = 0):
    """A BERT-base-shaped state dict (BertForSequenceClassification's names and shapes), random float32 values."""
    rng = np.random.default_rng(seed)
    shapes = {
        "bert.embeddings.word_embeddings.weight": (vocab, hidden),
        "bert.embeddings.position_embeddings.weight": (512, hidden),
        "bert.embeddings.token_type_embeddings.weight": (2, hidden),
        "bert.embeddings.LayerNorm.weight": (hidden,),
        "bert.embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (hidden, hidden), (hidden,)
        shapes[p + "attention.output.LayerNorm.weight"] = shapes[p + "attention.output.LayerNorm.bias"] = (hidden,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (
            (4 * hidden, hidden),
            (4 * hidden,),
        )
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (hidden, 4 * hidden), (hidden,)
        shapes[p + "output.LayerNorm.weight"] = shapes[p + "output.LayerNorm.bias"] = (hidden,)
    shapes.update(
        {
            "bert.pooler.dense.weight": (hidden, hidden),
            "bert.pooler.dense.bias": (hidden,),
            "classifier.weight": (classes, hidden),
            "classifier.bias": (classes,),
        }
    )
    return {name: rng.standard_normal(shape, dtype=np.float32) * 0.02 for name, shape in shapes.items()}


def make_bert(path: Path) -> None:
    """The BERT-base-shaped ticket, masks at SPARSITY on every weight matrix inside the layers."""
    from ettcli.mask import Mask
    from ettcli.ticket import Ticket

    arrays = bert_base_arrays()
    dense = Ticket.from_arrays(arrays)
    rng = np.random.default_rng(1)
    units = [n for n in dense.prunable() if dense.arch.tensors[n].role == "unit"]
    masks = {n: Mask(rng.random(dense.tensors[n].shape, dtype=np.float32) >= SPARSITY) for n in units}
    dense.with_masks(masks).save(path)


def make_ticket(arch: str, classes: int, path: Path) -> None:
    if arch == "bert_base":
        make_bert(path)
        return
    from ettcli.arch import parse_arch
    from ettcli.mask import Mask
    from ettcli.models import init_ticket

    ticket = init_ticket(parse_arch(arch, num_classes=classes), seed=0)
    rng = np.random.default_rng(0)
    ticket = ticket.with_masks({n: Mask(rng.random(ticket.tensors[n].shape) >= SPARSITY) for n in ticket.prunable()})
    ticket.save(path)


def remap_pairs(path: Path, to: str) -> list[tuple[str, str]]:
    """(target key, source key) for every tensor and mask, from ett's own plan (numpy only)."""
    from ettcli.plan import make_plan
    from ettcli.ticket import read_ticket

    ticket = read_ticket(path)
    pairs = []
    for new, (old, _) in make_plan(ticket.arch, to).tensor_sources().items():
        pairs.append((new, old))
        if old in ticket.masks:
            pairs.append((new + "_mask", old + "_mask"))
    return pairs


def run_once(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of one child process, from wait4."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd} failed with {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def run_pair(a: list[str], b: list[str], repeats: int):
    """Alternate the two commands (so that load from other processes hits both alike); for each, the median
    wall time, the peak RSS and the median CPU time."""
    runs: dict[int, list[tuple[float, float, float]]] = {0: [], 1: []}
    run_once(a), run_once(b)  # warm the page cache and the interpreter's files
    for _ in range(repeats):
        for i, cmd in enumerate((a, b)):
            runs[i].append(run_once(cmd))
    return tuple(
        (statistics.median(w for w, _, _ in r), max(m for _, m, _ in r), statistics.median(c for _, _, c in r))
        for r in runs.values()
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--case", choices=sorted(CASES), action="append", help="run only these cases (repeatable)")
    ap.add_argument("--make", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:  # in a child, so that this process stays small
        make_ticket(args.make[0], int(args.make[1]), Path(args.make[2]))
        return
    py = sys.executable
    # byte-compile ettcli as an install would (numpy and safetensors come compiled; PYTHONDONTWRITEBYTECODE,
    # set in some environments, would otherwise make every ett start compile its modules from source)
    import compileall

    import ettcli

    compileall.compile_dir(Path(ettcli.__file__).parent, quiet=1)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; median of {args.repeats} runs")
    print(
        f"{'transfer':52} {'command':10} {'wall s':>7} {'peak MiB':>9} {'wall ratio':>11} {'RSS ratio':>10} "
        f"{'cpu s':>6} {'cpu ratio':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch, to, classes in (CASES[c] for c in args.case or CASES):
            src = tmp / f"{arch}.safetensors"
            subprocess.run([py, __file__, "--make", arch, str(classes), str(src)], check=True)
            pairs_file = tmp / "pairs.json"
            pairs_file.write_text(json.dumps(remap_pairs(src, to)))
            bare, ett = run_pair(
                [py, "-c", REMAP, str(src), str(tmp / "bare.safetensors"), str(pairs_file)],
                [py, "-m", "ettcli", "stretch", str(src), "--to", to, "-o", str(tmp / "ett.safetensors")],
                args.repeats,
            )
            out = tmp / "ett.safetensors"
            from safetensors.numpy import load_file

            a, b = load_file(tmp / "bare.safetensors"), load_file(out)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "outputs differ"
            del a, b
            name = f"{arch} -> {to} ({src.stat().st_size / 2**20:.1f} -> {out.stat().st_size / 2**20:.1f} MiB)"
            print(f"{name:52} {'remap':10} {bare[0]:7.3f} {bare[1]:9.0f} {'':11} {'':10} {bare[2]:6.3f}")
            print(
                f"{'':52} {'ett':10} {ett[0]:7.3f} {ett[1]:9.0f} {ett[0] / bare[0]:11.2f} {ett[1] / bare[1]:10.2f} "
                f"{ett[2]:6.3f} {ett[2] / bare[2]:10.2f}"
            )


if __name__ == "__main__":
    main()
