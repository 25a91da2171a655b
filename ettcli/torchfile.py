"""torch files: state dicts read with ``torch.load(weights_only=True)`` only, and written atomically.

The reader under :func:`ettcli.ticket.read_ticket` for ``.pt`` / ``.pth`` state dicts and under
:mod:`ettcli.open_lth` for level folders. torch is imported inside the functions, so importing this module
costs nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ettcli.errors import EttError

if TYPE_CHECKING:
    import numpy as np

_NEEDS = "save a state dict of tensors instead, e.g. torch.save(model.state_dict(), path)"


def load_state_dict(path: Path) -> dict:
    """A state dict from a torch file, unpickling nothing but tensors (``weights_only=True``)."""
    import pickle
    import warnings

    import torch

    try:
        # torch warns about pickle protocols it may not read (and then refuses them): the error below says it all
        with warnings.catch_warnings(), open(path, "rb") as fh:  # a file, so the suffix cannot pick the reader
            warnings.simplefilter("ignore")
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EttError(f"{path}: {_unpickling_problem(str(exc))}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else "the file ends too early"
        raise EttError(f"{path}: not a readable torch file, truncated or damaged ({reason})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dict with values other than tensors"
        raise EttError(f"{path}: holds {what}, not a state dict (a dict of names to tensors); {_NEEDS}")
    return obj


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """:func:`load_state_dict` with every tensor as a numpy array (bfloat16 as float32, which numpy lacks)."""
    return {name: to_numpy(tensor) for name, tensor in load_state_dict(path).items()}


def to_numpy(t) -> np.ndarray:
    """A torch tensor as a contiguous numpy array on the CPU (bfloat16 as float32)."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` atomically, through a Python file so that a full disk is an OSError (an EttError here)."""
    import os

    import torch

    from ettcli.stfile import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:  # torch wraps a failed write of the file in its own error
            if isinstance(exc.__cause__ or exc.__context__, OSError):
                raise (exc.__cause__ or exc.__context__) from None
            raise
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def _unpickling_problem(message: str) -> str:
    """What torch's safe unpickler refused and what to do, in ett's words (never its advice to unpickle anyway)."""
    detail = message.split("WeightsUnpickler error:", 1)[1].strip() if "WeightsUnpickler error:" in message else ""
    if m := re.search(r"Unsupported global: GLOBAL ([\w.]+)", detail):
        return f"it holds a pickled Python object ({m[1]}), and ett reads tensors only: {_NEEDS}"
    if m := re.search(r"Unsupported operand (\d+)", detail):
        return (
            f"it was pickled with a protocol that torch's tensor-only loader cannot read (opcode {m[1]}); "
            "save it again with torch.save's default protocol, e.g. torch.save(model.state_dict(), path)"
        )
    first = detail.splitlines()[0].strip().rstrip(".") if detail else ""
    return f"it holds more than tensors{f' ({first})' if first else ''}, and ett reads tensors only: {_NEEDS}"
