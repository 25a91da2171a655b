"""How fast `ett stretch` writes a target ticket, against a bare key remap measured in the same run.

    .venv/bin/python bench/transform_speed.py [--repeats 7] [--cases cifar_resnet_20,imagenet_resnet_26,bert_base]

Three transfers, tickets made at benchmark time in a temporary folder (random masks at 73.79%):
  * cifar_resnet_20 -> cifar_resnet_56 (1.3 MiB in, 4.3 MiB out), open_lth init
  * imagenet_resnet_26 -> imagenet_resnet_34, 1000 classes (about 100 MB in), open_lth init
  * a BERT-base-shaped ticket (Hugging Face's names, 12 layers, hidden 768, 110M parameters, masks on the
    layers' weight matrices) -> 24 layers, read as ``--units 'bert.encoder.layer.{i}'``

Each command runs in a fresh interpreter, as a user would run it:
  * bare remap: ``safetensors.numpy.load_file``, rename (and duplicate) keys by the same plan, ``save_file``;
  * ``python -m ettcli stretch SRC --to TARGET -o OUT`` (the real CLI).
Prints wall-time medians, peak RSS (``wait4``'s ru_maxrss of each child) and ett's ratios to the remap.
For the BERT-shaped ticket also ``ett inspect --json`` against a bare header read (open, read the 8-byte
length and the JSON header, parse it) in a fresh interpreter.
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

CASES = [("cifar_resnet_20", "resnet-56", 10), ("imagenet_resnet_26", "resnet-34", 1000), ("bert_base", "units-24", 2)]
BERT_UNITS = "bert.encoder.layer.{i}"
SPARSITY = 0.7379

REMAP = """
import json, sys
from safetensors.numpy import load_file, save_file
src, dst, pairs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
tensors = load_file(src)
save_file({new: tensors[old] for new, old in pairs}, dst)
"""

SAME = """
import sys
import numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "outputs differ"
"""

HEADER = """
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    json.loads(f.read(n))
"""


def make_bert(path: Path, layers: int = 12, hidden: int = 768, ffn: int = 3072, vocab: int = 30522) -> None:
    """A BERT-base-shaped ticket under Hugging Face's names (BertForSequenceClassification, 2 labels)."""
    from ettcli.arch import units
    from ettcli.mask import Mask
    from ettcli.ticket import Ticket

    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}

    def linear(name: str, n_out: int, n_in: int) -> None:
        arrays[name + ".weight"] = rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02
        arrays[name + ".bias"] = np.zeros(n_out, np.float32)

    def norm(name: str) -> None:
        arrays[name + ".weight"], arrays[name + ".bias"] = np.ones(hidden, np.float32), np.zeros(hidden, np.float32)

    for name, rows in (("word", vocab), ("position", 512), ("token_type", 2)):
        arrays[f"bert.embeddings.{name}_embeddings.weight"] = rng.standard_normal((rows, hidden), dtype=np.float32)
    norm("bert.embeddings.LayerNorm")
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            linear(p + part, hidden, hidden)
        norm(p + "attention.output.LayerNorm")
        linear(p + "intermediate.dense", ffn, hidden)
        linear(p + "output.dense", hidden, ffn)
        norm(p + "output.LayerNorm")
    linear("bert.pooler.dense", hidden, hidden)
    linear("classifier", 2, hidden)
    with units(BERT_UNITS):
        ticket = Ticket.from_arrays(arrays)
    layer = [n for n, t in ticket.arch.tensors.items() if t.prunable and t.role == "unit"]
    ticket = ticket.with_masks({n: Mask(rng.random(ticket.tensors[n].shape) >= SPARSITY) for n in layer})
    ticket.save(path)


def make_ticket(arch: str, classes: int, path: Path) -> None:
    if arch == "bert_base":
        return make_bert(path)
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


def run_once(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process, measured with wait4."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd} failed with {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024


def run_pair(a: list[str], b: list[str], repeats: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Alternate the two commands (so that load from other processes hits both alike); medians and peaks."""
    runs: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    run_once(a), run_once(b)  # warm the page cache and the interpreter's files
    for _ in range(repeats):
        for i, cmd in enumerate((a, b)):
            runs[i].append(run_once(cmd))
    return tuple((statistics.median(w for w, _ in r), max(m for _, m in r)) for r in runs.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES), help="comma-separated sources to run")
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
    print(f"{'transfer':52} {'command':10} {'wall s':>7} {'peak MiB':>9} {'wall ratio':>11} {'RSS ratio':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch, to, classes in [c for c in CASES if c[0] in args.cases.split(",")]:
            src = tmp / f"{arch}.safetensors"
            subprocess.run([py, __file__, "--make", arch, str(classes), str(src)], check=True)
            pairs_file = tmp / "pairs.json"
            pairs_file.write_text(json.dumps(remap_pairs(src, to)))
            bare, ett = run_pair(
                [py, "-c", REMAP, str(src), str(tmp / "bare.safetensors"), str(pairs_file)],
                [py, "-m", "ettcli", "stretch", str(src), "--to", to, "-o", str(tmp / "ett.safetensors")],
                args.repeats,
            )
            if arch == "bert_base":
                head, insp = run_pair(
                    [py, "-c", HEADER, str(src)],
                    [py, "-m", "ettcli", "inspect", str(src), "--json"],
                    args.repeats,
                )
            out = tmp / "ett.safetensors"
            # compared in a child: a child forked from a large parent would report the parent's pages as its own
            subprocess.run([py, "-c", SAME, str(tmp / "bare.safetensors"), str(out)], check=True)
            name = f"{arch} -> {to} ({src.stat().st_size / 2**20:.1f} -> {out.stat().st_size / 2**20:.1f} MiB)"
            print(f"{name:52} {'remap':10} {bare[0]:7.3f} {bare[1]:9.0f}")
            print(f"{'':52} {'ett':10} {ett[0]:7.3f} {ett[1]:9.0f} {ett[0] / bare[0]:11.2f} {ett[1] / bare[1]:10.2f}")
            if arch == "bert_base":
                print(f"{'ett inspect --json ' + arch:52} {'header':10} {head[0]:7.3f} {head[1]:9.0f}")
                print(
                    f"{'':52} {'inspect':10} {insp[0]:7.3f} {insp[1]:9.0f} {insp[0] / head[0]:11.2f} "
                    f"{insp[1] / head[1]:10.2f}"
                )


if __name__ == "__main__":
    main()
