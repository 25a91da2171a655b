"""Make the small tickets in fixtures/ (each under 2 MB), reproducibly.

    python scripts/make_fixtures.py            # writes fixtures/*.safetensors

Each fixture is an open_lth-initialised network (seed 0) with a one-shot global magnitude mask at an
IMP sparsity level (1 - 0.8^L). They are for trying the commands and for tests: their weights are
untrained, so they are not winning tickets.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ettcli.arch import parse_arch
from ettcli.models import init_ticket
from ettcli.pruning import magnitude_masks

FIXTURES = [
    # (file name, architecture, IMP levels)
    ("cifar_resnet_20_l4.safetensors", "cifar_resnet_20", 4),  # 59.04 %
    ("cifar_resnet_20_l10.safetensors", "cifar_resnet_20", 10),  # 89.26 %
    ("cifar_vgg_16_8_l6.safetensors", "cifar_vgg_16_8", 6),  # 73.79 %
    ("imagenet_resnet_18_8_l6.safetensors", "imagenet_resnet_18_8", 6),  # 73.79 %
]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, arch, levels in FIXTURES:
        ticket = init_ticket(parse_arch(arch), seed=0)
        sparsity = 1 - 0.8**levels
        ticket = ticket.with_masks(magnitude_masks(ticket, sparsity))
        ticket.metadata["ett.note"] = f"fixture: seeded init, one-shot magnitude mask at IMP level {levels}"
        path = ticket.save(out / name)
        print(f"{path}: {arch}, sparsity {100 * ticket.sparsity():.2f}%, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "fixtures")
