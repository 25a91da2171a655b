"""Write ettcli/flops_table.json: the dense per-layer forward FLOPs of the architectures the shipped studies and
the paper use, counted by torch's flop counter exactly as :func:`ettcli.flops.layer_flops` counts them.

    python scripts/make_flops_table.py

With the table, ``ett study run --dry-run`` needs no torch for these architectures on a machine it has never
run on; any other architecture is counted once and cached under $ETT_CACHE. tests/test_study_flops.py checks
entries of the table against a fresh count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ettcli.flops import _TABLE, _count, _key  # noqa: E402

CIFAR_RESNETS = [f"cifar_resnet_{d}" for d in (8, 14, 20, 26, 32, 38, 44, 50, 56, 110)]
CIFAR_VGGS = [f"cifar_vgg_{d}" for d in (11, 13, 16, 19)]
IMAGENET_RESNETS = [f"imagenet_resnet_{d}" for d in (18, 26, 34, 50)]
# (architecture, classes, image size): CIFAR-10 and CIFAR-100 at 32 pixels, ImageNet at 224
ENTRIES = [(a, c, 32) for a in CIFAR_RESNETS + CIFAR_VGGS for c in (10, 100)] + [
    (a, 1000, 224) for a in IMAGENET_RESNETS
]


def main() -> None:
    table = {_key(a, c, s): _count(a, c, s) for a, c, s in ENTRIES}
    path = ROOT / "ettcli" / _TABLE
    path.write_text(json.dumps(table, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {path}: {len(table)} architectures, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
