"""Mask-making primitives shared by fixtures and pruning methods (numpy only)."""

from __future__ import annotations

import numpy as np

from ettcli.errors import EttError
from ettcli.mask import Mask


def global_topk_masks(scores: dict[str, np.ndarray], keep: int) -> dict[str, Mask]:
    """Keep exactly ``keep`` entries with the largest scores over all tensors.

    Ties are broken deterministically: by tensor order as given, then by flat index (earlier wins).
    """
    total = sum(s.size for s in scores.values())
    if not 0 <= keep <= total:
        raise EttError(f"cannot keep {keep} of {total} weights")
    flat = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores.values()])
    # stable sort of -score: equal scores keep their original (tensor, index) order
    order = np.argsort(-flat, kind="stable")
    keep_flat = np.zeros(total, dtype=bool)
    keep_flat[order[:keep]] = True
    out, pos = {}, 0
    for name, s in scores.items():
        out[name] = Mask(keep_flat[pos : pos + s.size].reshape(s.shape))
        pos += s.size
    return out


def magnitude_masks(ticket, sparsity: float, base: dict[str, Mask] | None = None) -> dict[str, Mask]:
    """One-shot global magnitude pruning of a ticket's prunable tensors to ``sparsity`` (fraction pruned).

    With ``base`` masks, already-pruned weights stay pruned (score -inf), as in IMP.
    """
    if not 0.0 <= sparsity < 1.0:
        raise EttError(f"sparsity {sparsity} must be in [0, 1)")
    scores = {}
    for name in ticket.prunable():
        s = np.abs(ticket.array(name).astype(np.float64))
        if base and name in base:
            s = np.where(base[name].array, s, -np.inf)
        scores[name] = s
    total = sum(s.size for s in scores.values())
    keep = total - int(round(sparsity * total))
    return global_topk_masks(scores, keep)
