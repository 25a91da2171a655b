"""Tickets: rewind-point weights, masks and metadata, read from any supported layout, written atomically.

Supported inputs (docs/ticket-format.md):

* ett tickets and plain state-dict safetensors (``X`` and optional ``X_mask``);
* ``torch.nn.utils.prune`` state dicts (``X_orig`` + ``X_mask``), in safetensors or ``.pt``;
* ``.pt`` / ``.pth`` state dicts, loaded with ``torch.load(weights_only=True)`` only;
* open_lth / ElasticLTH level folders (``mask.pth`` + ``model_ep{E}_it{I}.pth``, see :mod:`ettcli.open_lth`);
* wrapper prefixes that every name shares (``model.``, DDP's ``module.``, torch.compile's ``_orig_mod.``,
  nested) are removed: a ticket holds the family's plain names.

Files are recognised by their content, whatever their suffix. Written: ett tickets (``.safetensors``) and
torch state dicts (``.pt`` / ``.pth``), see :meth:`Ticket.save`; level folders, see :mod:`ettcli.open_lth`.

Reading safetensors never imports torch: tensors stay in the file (as byte ranges) until someone asks for
their values, and masks are read eagerly, because they are small and must be validated, as bytes (numpy is
loaded only for masks of 32 MiB or more, where its checks repay its import; see :mod:`ettcli.mask`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ettcli import __version__
from ettcli.arch import ArchSpec, infer_arch, strip_wrappers, with_heads
from ettcli.errors import EttError, warn
from ettcli.mask import NUMPY_BYTES, Mask
from ettcli.open_lth import read_level
from ettcli.sparsity import SparsityReport
from ettcli.stfile import Source, check_output, read_array, read_bytes, read_header, write_file
from ettcli.torchfile import load_arrays, save_torch

if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = "1"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclass
class Ticket:
    """A ticket: every state_dict tensor (as a lazy :class:`Source`), masks by tensor name, and metadata."""

    tensors: dict[str, Source]
    masks: dict[str, Mask]
    metadata: dict[str, str] = field(default_factory=dict)
    spec: ArchSpec | None = None
    path: Path | None = None

    # --- construction ------------------------------------------------------------------------------------
    @staticmethod
    def from_arrays(
        arrays: Mapping[str, np.ndarray],
        masks: Mapping[str, np.ndarray | Mask] | None = None,
        metadata: Mapping[str, str] | None = None,
        where: str = "ticket",
    ) -> Ticket:
        """Build and validate a ticket from in-memory arrays (masks as bool/0-1 arrays or Mask values)."""
        import numpy as np

        tensors = {k: Source.of_array(np.asarray(v)) for k, v in arrays.items()}
        mk = {
            k: v if isinstance(v, Mask) else Mask.from_values(np.asarray(v), k + "_mask", where)
            for k, v in (masks or {}).items()
        }
        return _finish(tensors, mk, dict(metadata or {}), where, None)

    # --- access ------------------------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        """The values of one tensor as a numpy array (read from disk if needed)."""
        src = self.tensors[name]
        if src.array is not None:
            return src.array
        return read_array(src.path, _info(name, src))

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        handles: dict[Path, object] = {}
        try:
            for name, src in self.tensors.items():
                if src.array is not None:
                    yield name, src.array
                    continue
                fh = handles.get(src.path) or handles.setdefault(src.path, open(src.path, "rb"))  # noqa: SIM115
                yield name, read_array(src.path, _info(name, src), fh)
        finally:
            for fh in handles.values():
                fh.close()

    def mask(self, name: str) -> Mask:
        """The mask of a tensor (all ones where the tensor has none)."""
        return self.masks.get(name) or Mask.ones_like(self.tensors[name].shape)

    def fingerprint(self) -> str:
        """sha256 of the ticket's content: every tensor's and mask's name, dtype, shape and values.

        Independent of the file layout it was read from (a safetensors file, a ``.pt``, an open_lth folder
        with its mask file), so it identifies what a training run starts from; a stated head count
        (:meth:`with_heads`) counts too, since the network built differs.
        """
        import hashlib

        import numpy as np

        h = hashlib.sha256(b"ett-ticket-v1\n")
        for name, arr in sorted(self.arrays(), key=lambda kv: kv[0]):
            arr = np.ascontiguousarray(arr)
            h.update(f"{name}\t{arr.dtype.str}\t{arr.shape}\n".encode())
            h.update(arr.tobytes())
        for name in sorted(self.masks):
            h.update(f"{name}_mask\n".encode())
            h.update(np.packbits(self.masks[name].array).tobytes())
        if self.spec is not None and self.spec.heads:
            h.update(f"heads\t{self.spec.heads}\n".encode())
        return h.hexdigest()

    @property
    def arch(self) -> ArchSpec:
        assert self.spec is not None
        return self.spec

    def prunable(self) -> list[str]:
        return [n for n, t in self.arch.tensors.items() if t.prunable]

    def with_masks(self, masks: Mapping[str, np.ndarray | Mask]) -> Ticket:
        """A new ticket with the same tensors and metadata under ``masks`` (a tensor left out is dense).

        Masks may be :class:`Mask` values or bool / 0-1 arrays; each must name a prunable tensor and have
        its shape, else :class:`EttError`.
        """
        import numpy as np

        where = str(self.path) if self.path else "ticket"
        checked = {
            k: v if isinstance(v, Mask) else Mask.from_values(np.asarray(v), k + "_mask", where)
            for k, v in masks.items()
        }
        _check_masks(self.arch, self.tensors, checked, where)
        return Ticket(dict(self.tensors), checked, dict(self.metadata), self.spec, self.path)

    def with_heads(self, heads: int) -> Ticket:
        """The same ticket stating its attention head count (``ett.heads``), for a ViT whose weights do not
        hold it: every network ett builds of it (to train, score, run LMC) then has that many heads."""
        where = str(self.path) if self.path else "ticket"
        spec = with_heads(self.arch, heads, where)
        return Ticket(dict(self.tensors), dict(self.masks), {**self.metadata, "ett.heads": str(heads)}, spec, self.path)

    def sparsity_report(self) -> SparsityReport:
        """Kept and total prunable weights per tensor, per stage and globally."""
        return SparsityReport.of(self.arch, {n: m.kept for n, m in self.masks.items()})

    def counts(self, names: list[str] | None = None) -> tuple[int, int]:
        """(total, kept) over the given prunable tensors (all prunable tensors by default)."""
        report = self.sparsity_report()
        c = report.count if names is None else report.of_names(names)
        return c.total, c.kept

    def sparsity(self, names: list[str] | None = None) -> float:
        """Fraction of prunable weights whose mask is 0 (0.0 for a dense ticket)."""
        report = self.sparsity_report()
        return (report.count if names is None else report.of_names(names)).sparsity

    def stage_sparsity(self) -> list[float]:
        """Sparsity of the prunable tensors of each stage's units (stem and head excluded)."""
        return list(self.sparsity_report().stages)

    # --- writing -----------------------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[str, Source]]:
        """Tensors in module order, each followed by its mask."""
        for name in self.arch.tensors:
            yield name, self.tensors[name]
            if name in self.masks:
                mask = self.masks[name]
                yield name + "_mask", Source("BOOL", mask.shape, raw=mask.buffer())

    def save(self, path: str | Path, *, fmt: str | None = None, **metadata: str) -> Path:
        """Write the ticket atomically (temporary file beside ``path``, then rename), in the format its suffix names.

        ``.safetensors``: an ett ticket (tensors, bool ``X_mask`` masks and metadata). ``.pt`` / ``.pth``: a torch
        state dict of the same tensors and masks, loadable with ``torch.load(weights_only=True)``; it has no room
        for metadata, so the rewind step and provenance are not kept. Any other suffix is refused (``fmt``,
        "safetensors" or "torch", overrides the suffix, e.g. for a temporary file).
        """
        path = Path(path)
        fmt = fmt or output_format(path)
        if fmt == "torch":
            return save_torch(self.state_dict(), path)
        meta = dict(self.metadata)
        meta.update({k.replace("__", "."): str(v) for k, v in metadata.items()})
        meta.update({"ett.format": FORMAT_VERSION, "ett.arch": self.arch.name, "ett.version": __version__})
        meta.update(self.arch.fam.ticket_metadata(self.arch))
        write_file(path, self.entries(), meta)
        return path

    def state_dict(self) -> dict:
        """The tensors and bool masks (``X``, ``X_mask``) as a dict of torch tensors, in module order (imports torch)."""
        import numpy as np
        import torch

        out = {}
        for name, array in self.arrays():
            out[name] = torch.from_numpy(np.array(array))  # a copy: file-backed arrays are read-only
            if name in self.masks:
                out[name + "_mask"] = torch.from_numpy(self.masks[name].array.copy())
        return out

    def masked_state_dict(self) -> dict:
        """The network's ``state_dict()`` as torch tensors with every pruned weight set to 0 (imports torch).

        Loads with ``model.load_state_dict(ticket.masked_state_dict(), strict=True)`` into a model of the
        ticket's architecture (:func:`ettcli.load_model` builds one). Pruned weights come back to life as
        soon as an optimizer touches them: to train, re-apply the masks after every step
        (:class:`ettcli.models.Masker`).
        """
        import numpy as np
        import torch

        out = {}
        for name, array in self.arrays():
            values = np.array(array)  # a copy: file-backed arrays are read-only
            if name in self.masks:
                values[~self.masks[name].array] = 0
            out[name] = torch.from_numpy(values)
        return out

    def zero_counts(self) -> dict[str, int]:
        """How many entries of each tensor are exactly zero (masked or not)."""
        import numpy as np

        return {name: int(array.size - np.count_nonzero(array)) for name, array in self.arrays()}

    def masks_from_zeros(self) -> Ticket:
        """The same ticket with every exact zero of a prunable tensor masked out (kept masks stay in force).

        For checkpoints pruned by zeroing weights, e.g. ``torch.nn.utils.prune`` followed by ``prune.remove``,
        which keeps no mask. A prunable tensor without zeros keeps its mask, or stays dense.
        """
        import numpy as np

        masks = dict(self.masks)
        for name in self.prunable():
            nonzero = self.array(name) != 0
            if nonzero.all():
                continue
            masks[name] = Mask(np.require(nonzero & self.mask(name).array, requirements="C"))
        return Ticket(dict(self.tensors), masks, dict(self.metadata), self.spec, self.path)


SAVE_FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}


def output_format(path: str | Path) -> str:
    """The format an output path's suffix names ("safetensors" or "torch"), once the path passes
    :func:`~ettcli.stfile.check_output`; any other suffix is an EttError."""
    path = check_output(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        what = f"suffix '{path.suffix}'" if path.suffix else "no suffix"
        raise EttError(f"{path}: {what}; name the output .safetensors (an ett ticket) or .pt/.pth (a torch state dict)")
    return fmt


def _info(name: str, src: Source):
    from ettcli.stfile import TensorInfo

    return TensorInfo(name, src.dtype, src.shape, src.start, src.end)


# --- reading ---------------------------------------------------------------------------------------------
def as_ticket(value, what: str = "ticket") -> Ticket:
    """``value`` if it is a :class:`Ticket`, else the ticket the path names (any layout :func:`read_ticket` reads);
    ``what`` names the argument in the error for anything else."""
    if isinstance(value, Ticket):
        return value
    if isinstance(value, (str, os.PathLike)):
        return read_ticket(Path(value).expanduser())
    raise EttError(f"{what}: expected a Ticket or a path, got {type(value).__name__}")


def read_ticket(path: str | Path, rewind_step: str | None = None, masks: str | Path | None = None) -> Ticket:
    """Read any supported ticket layout (see the module docstring) and validate it against its architecture.

    Files are recognised by their content (a torch zip or pickle, or safetensors), whatever their suffix.
    ``rewind_step`` picks the model file of an open_lth level folder (see :func:`ettcli.open_lth.read_level`). ``masks``
    names a masks-only file beside the weights (see :func:`read_masks_file`).

    The readers below this dispatcher (:mod:`ettcli.stfile`, :mod:`ettcli.torchfile`, :mod:`ettcli.open_lth`)
    give names, values and metadata; the ticket is assembled and validated here.
    """
    ticket = _read_ticket(Path(path), rewind_step)
    if masks is not None:
        ticket = ticket.with_masks(read_masks_file(masks, ticket))
    return ticket


def read_masks_file(path: str | Path, ticket: Ticket) -> dict[str, Mask]:
    """The masks of a masks-only file for ``ticket``'s tensors: a torch file (read with ``weights_only=True``)
    or a safetensors file of 0/1 or bool tensors named ``X_mask`` (as BERT-Tickets' ``mask.pt``) or ``X``.

    Names may carry a wrapper prefix that the weights did not (or the other way round). A ticket that
    already has masks is refused: one ticket, one set of masks.
    """
    import numpy as np

    path = Path(path)
    where = f"--masks {path}"
    if ticket.masks:
        raise EttError(f"{where}: the ticket already has masks ({len(ticket.masks)} tensors); give masks once")
    if not path.is_file():
        raise EttError(f"{where}: no such file; check the path")
    if _sniff(path) == "safetensors":
        header = read_header(path)
        raw = {n: read_array(path, info) for n, info in header.tensors.items()}
    else:
        raw = load_arrays(path)
    plain = strip_wrappers(raw, where)
    known = set(ticket.tensors)
    out: dict[str, Mask] = {}
    for key, values in raw.items():
        name = next(
            (n for n in (key, plain[key], key[: -len("_mask")], plain[key][: -len("_mask")]) if n in known),
            None,
        )
        if name is None:
            base = plain[key][: -len("_mask")] if plain[key].endswith("_mask") else plain[key]
            near = [n for n in known if n.endswith("." + base) or base.endswith("." + n)]
            name = near[0] if len(near) == 1 else None
        if name is None:
            raise EttError(f"{where}: mask '{key}' names no tensor of the ticket ({ticket.arch.name}); check the file")
        if name in out:
            raise EttError(f"{where}: two masks for '{name}'; keep one")
        out[name] = Mask.from_values(np.asarray(values), key, where)
    return out


def _read_ticket(path: Path, rewind_step: str | None) -> Ticket:
    if not path.exists():
        raise EttError(f"{path}: no such file or folder; check the path")
    from ettcli.hf import is_hf_folder

    if is_hf_folder(path):
        if rewind_step is not None:
            raise EttError(
                f"{path}: a rewind step picks a model file of an open_lth level folder; this is a model folder"
            )
        return read_hf_ticket(path)
    if path.is_dir():
        folder, state, meta = read_level(path, rewind_step)
        return _assemble(state, meta, str(folder), None)
    if rewind_step is not None:
        raise EttError(f"{path}: a rewind step picks a model file of an open_lth level folder; this is one file")
    kind = _sniff(path)
    if kind in ("zip", "pickle") or (not kind and path.suffix.lower() in TORCH_SUFFIXES):
        return _assemble(load_arrays(path), {}, str(path), path)
    header = read_header(path)
    raw = {name: Source.of_file(path, info) for name, info in header.tensors.items()}
    return _assemble(raw, header.metadata, str(path), path)


def read_hf_ticket(folder: Path) -> Ticket:
    """A Hugging Face model folder (config.json + safetensors weights) as a dense ticket; its config is kept
    as ``ett.hf_config`` metadata (see :mod:`ettcli.hf`)."""
    import json

    from ettcli.hf import read_config, read_tensors

    config = read_config(folder)
    meta = {"ett.hf_config": json.dumps(config, separators=(",", ":"), sort_keys=True)}
    # save_pretrained writes the model's own names: a tied LLaMA's are all under 'model.', and stay there
    return _assemble(read_tensors(folder), meta, str(folder), folder, unwrap=False)


def _sniff(path: Path) -> str:
    """ "zip" (torch's format), "safetensors", "pickle" (torch's legacy format) or "" (none of them)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle's PROTO opcode
        return "pickle"
    return ""


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _assemble(raw: Mapping, metadata: dict[str, str], where: str, path: Path | None, unwrap: bool = True) -> Ticket:
    """Normalise names (prefixes unless ``unwrap`` is false, prune's X_orig/X_mask), split masks from tensors,
    validate."""
    tensors: dict[str, Source] = {}
    mask_values: dict[str, object] = {}
    plain = strip_wrappers(raw, where) if unwrap else {k: k for k in raw}
    for key, value in raw.items():
        name = plain[key]
        if name.endswith("_mask"):
            target, bucket = name[: -len("_mask")], mask_values
        elif name.endswith("_orig"):
            target, bucket = name[: -len("_orig")], tensors
        else:
            target, bucket = name, tensors
        if target in bucket:
            raise EttError(f"{where}: two entries map to '{target}' after removing wrapper prefixes; keep one")
        bucket[target] = value if isinstance(value, Source) else Source.of_array(value)
    masks: dict[str, Mask] = {}
    # masks are checked as bytes, or with numpy where it is loaded or large masks repay its import (ettcli.mask)
    with_numpy = "numpy" in sys.modules or sum(src.nbytes for src in mask_values.values()) >= NUMPY_BYTES
    handle = open(path, "rb") if path is not None and path.is_file() and not _is_zip(path) else None  # noqa: SIM115
    try:
        for name, src in mask_values.items():
            if name not in tensors:
                raise EttError(f"{where}: mask '{name}_mask' has no tensor '{name}'; add the tensor or drop the mask")
            if src.array is not None:
                masks[name] = Mask.from_values(src.array, name + "_mask", where)
            elif src.dtype == "BOOL":  # an ett ticket's: checked as bytes, or with numpy where it is loaded
                raw = read_bytes(src.path, _info(name + "_mask", src), handle)
                masks[name] = Mask.from_bytes(raw, src.shape, name + "_mask", where, with_numpy)
            else:
                values = read_array(src.path, _info(name + "_mask", src), handle)
                masks[name] = Mask.from_values(values, name + "_mask", where)
    finally:
        if handle:
            handle.close()
    return _finish(tensors, masks, metadata, where, path)


def _finish(tensors, masks, metadata, where, path) -> Ticket:
    spec = infer_arch({k: v.shape for k, v in tensors.items()}, where, units=metadata.get("ett.units"))
    spec = with_heads(spec, metadata.get("ett.heads"), where)
    _check_masks(spec, tensors, masks, where)
    integer = [n for n, t in spec.tensors.items() if t.prunable and tensors[n].dtype not in FLOAT_DTYPES]
    if integer:
        warn(
            f"{where}: {len(integer)} conv/linear weight tensor{'s hold' if len(integer) > 1 else ' holds'} integers "
            f"(e.g. '{integer[0]}' is {tensors[integer[0]].dtype}); weights are expected as floats: save the float "
            "state_dict, not a quantised or integer copy"
        )
    stated = metadata.get("ett.arch")
    if stated and stated != spec.name:
        raise EttError(
            f"{where}: metadata says ett.arch={stated} but its tensors are those of {spec.name}; "
            "fix or remove the metadata entry"
        )
    return Ticket(tensors, masks, dict(metadata), spec, path)


def _check_masks(spec: ArchSpec, tensors: Mapping[str, Source], masks: Mapping[str, Mask], where: str) -> None:
    """Every mask names a prunable tensor of ``spec`` and has its shape."""
    for name, mask in masks.items():
        if name not in tensors:
            raise EttError(f"{where}: mask '{name}_mask' has no tensor '{name}'; add the tensor or drop the mask")
        if not spec.tensors[name].prunable:
            raise EttError(f"{where}: mask '{name}_mask' is on a tensor that is never pruned (biases and BatchNorm)")
        mask.check_shape(tensors[name].shape, name, where)
