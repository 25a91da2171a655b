"""Tickets: rewind-point weights, masks and metadata, read from any supported layout, written atomically.

Supported inputs (DESIGN.md section 3):

* ett tickets and plain state-dict safetensors (``X`` and optional ``X_mask``);
* ``torch.nn.utils.prune`` state dicts (``X_orig`` + ``X_mask``), in safetensors or ``.pt``;
* ``.pt`` / ``.pth`` state dicts, loaded with ``torch.load(weights_only=True)`` only;
* open_lth / ElasticLTH level folders (``mask.pth`` + ``model_ep{E}_it{I}.pth``);
* wrapper prefixes that every name shares (``model.``, DDP's ``module.``, torch.compile's ``_orig_mod.``,
  nested) are removed: a ticket holds the family's plain names.

Reading safetensors never imports torch: tensors stay in the file (as byte ranges) until someone asks
for their values, and masks are read eagerly because they are small and must be validated.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ettcli import __version__
from ettcli.arch import ArchSpec, infer_arch, strip_wrappers
from ettcli.errors import EttError, warn
from ettcli.mask import Mask
from ettcli.sparsity import SparsityReport
from ettcli.steps import Step
from ettcli.stfile import Source, read_array, read_header, sha256_file, write_file

FORMAT_VERSION = "1"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_CKPT = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")


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
        where = str(self.path) if self.path else "ticket"
        checked = {
            k: v if isinstance(v, Mask) else Mask.from_values(np.asarray(v), k + "_mask", where)
            for k, v in masks.items()
        }
        _check_masks(self.arch, self.tensors, checked, where)
        return Ticket(dict(self.tensors), checked, dict(self.metadata), self.spec, self.path)

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
                yield name + "_mask", Source.of_array(self.masks[name].array)

    def save(self, path: str | Path, **metadata: str) -> Path:
        """Write an ett ticket atomically (temporary file beside ``path``, then rename)."""
        meta = dict(self.metadata)
        meta.update({k.replace("__", "."): str(v) for k, v in metadata.items()})
        meta.update({"ett.format": FORMAT_VERSION, "ett.arch": self.arch.name, "ett.version": __version__})
        write_file(path, self.entries(), meta)
        return Path(path)


def _info(name: str, src: Source):
    from ettcli.stfile import TensorInfo

    return TensorInfo(name, src.dtype, src.shape, src.start, src.end)


# --- reading ---------------------------------------------------------------------------------------------
def read_ticket(path: str | Path) -> Ticket:
    """Read any supported ticket layout (see the module docstring) and validate it against its architecture."""
    path = Path(path)
    if not path.exists():
        raise EttError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return _read_open_lth(path)
    if path.suffix.lower() in TORCH_SUFFIXES or _is_zip(path):
        raw = _torch_load(path)
        return _assemble({k: _to_numpy(v) for k, v in raw.items()}, {}, str(path), path)
    header = read_header(path)
    raw = {name: Source.of_file(path, info) for name, info in header.tensors.items()}
    return _assemble(raw, header.metadata, str(path), path)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _assemble(raw: Mapping, metadata: dict[str, str], where: str, path: Path | None) -> Ticket:
    """Normalise names (prefixes, prune's X_orig/X_mask), split masks from tensors, validate."""
    tensors: dict[str, Source] = {}
    mask_values: dict[str, object] = {}
    plain = strip_wrappers(raw, where)
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
        src = value if isinstance(value, Source) else Source.of_array(np.asarray(value))
        bucket[target] = src
    masks: dict[str, Mask] = {}
    handle = open(path, "rb") if path is not None and path.is_file() and not _is_zip(path) else None  # noqa: SIM115
    try:
        for name, src in mask_values.items():
            if name not in tensors:
                raise EttError(f"{where}: mask '{name}_mask' has no tensor '{name}'; add the tensor or drop the mask")
            values = src.array if src.array is not None else read_array(path, _info(name + "_mask", src), handle)
            masks[name] = Mask.from_values(values, name + "_mask", where)
    finally:
        if handle:
            handle.close()
    return _finish(tensors, masks, metadata, where, path)


def _finish(tensors, masks, metadata, where, path) -> Ticket:
    spec = infer_arch({k: v.shape for k, v in tensors.items()}, where)
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


# --- torch-based readers (torch imported only here) -----------------------------------------------------
def _torch_load(path: Path) -> dict:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EttError(f"{path}: cannot read as a torch state dict with weights_only=True ({first})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EttError(f"{path}: expected a state dict (a dict of names to tensors)")
    return obj


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def _read_open_lth(folder: Path) -> Ticket:
    """An open_lth / ElasticLTH level folder: mask.pth plus model_ep{E}_it{I}.pth checkpoints."""
    if not (folder / "mask.pth").exists() and (folder / "main" / "mask.pth").exists():
        folder = folder / "main"
    mask_file = folder / "mask.pth"
    ckpts = sorted(((int(m[1]), int(m[2])), p) for p in folder.iterdir() if (m := _CKPT.match(p.name)))
    if not mask_file.exists() or not ckpts:
        raise EttError(f"{folder}: not an open_lth level folder: expected mask.pth and model_ep{{E}}_it{{I}}.pth files")
    after_zero = [c for c in ckpts if c[0] != (0, 0)]
    (ep, it), model_file = (after_zero or ckpts)[0]
    state = {k: _to_numpy(v) for k, v in _torch_load(model_file).items()}
    raw_masks = _unwrapped({k: _to_numpy(v) for k, v in _torch_load(mask_file).items()}, str(mask_file))
    stripped = _unwrapped(state, str(model_file))
    for name, m in raw_masks.items():
        if name not in stripped:
            raise EttError(f"{mask_file}: mask for '{name}' has no tensor in {model_file.name}")
        stripped[name + "_mask"] = m
    meta = {
        "ett.rewind_step": str(Step(ep, it)),
        "ett.source": str(folder),
        "ett.source_sha256": sha256_file(model_file),
    }
    return _assemble(stripped, meta, str(folder), None)


def _unwrapped(values: dict, where: str) -> dict:
    plain = strip_wrappers(values, where)
    return {plain[k]: v for k, v in values.items()}


def write_open_lth(ticket: Ticket, folder: str | Path, step: str = "0ep0it") -> Path:
    """Export an open_lth level folder: mask.pth (int 0/1 over every prunable tensor) and the weights."""
    import torch

    from ettcli.steps import parse_step

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = parse_step(step)
    ep, it = st.ep, st.it
    state = {n: torch.from_numpy(np.array(a)) for n, a in ticket.arrays()}
    masks = {n: torch.from_numpy(ticket.mask(n).array.astype(np.int32)) for n in ticket.prunable()}
    from ettcli.stfile import atomic_path

    with atomic_path(folder / "mask.pth") as tmp:
        torch.save(masks, tmp)
    with atomic_path(folder / f"model_ep{ep}_it{it}.pth") as tmp:
        torch.save(state, tmp)
    return folder
