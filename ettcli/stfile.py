"""Reading and writing safetensors files without torch.

A safetensors file is an 8-byte little-endian header length, a JSON header and one raw buffer. ett parses
the header itself (to give precise errors and to know every tensor's byte range), reads tensors as numpy
arrays, and writes files by streaming byte ranges, so that a transform never holds a ticket twice.
Files written here load with the ``safetensors`` library, and files the library writes load here; the tests
check both directions.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ettcli.errors import EttError

# safetensors dtype codes -> numpy dtypes (little-endian). BF16 is read as raw uint16 and widened on demand.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {np.dtype(v).str: k for k, v in DTYPES.items() if k not in ("BF16",)}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_CHUNK = 8 << 20


def dtype_code(array: np.ndarray) -> str:
    """The safetensors code for a numpy array's dtype."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _CODES.get(np.dtype(dt).str)
    if code is None:
        raise EttError(f"cannot store numpy dtype {array.dtype} in a safetensors file")
    return code


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file (absolute byte offsets)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header; every failure is an EttError naming the file."""
    path = Path(path)
    if not path.exists():
        raise EttError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise EttError(f"{path}: is a folder, expected a .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise EttError(f"{path}: not a safetensors file: {size} bytes, too short for the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise EttError(
                f"{path}: not a safetensors file (or truncated): header length field says {n} bytes "
                f"but the file has {size}"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EttError(f"{path}: not a safetensors file: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise EttError(f"{path}: not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EttError(f"{path}: __metadata__ must map strings to strings")
    base = 8 + n
    data_len = size - base
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            code, shape, (s, e) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise EttError(f"{path}: header entry for '{name}' lacks dtype, shape or data_offsets") from None
        if code not in DTYPES:
            raise EttError(f"{path}: tensor '{name}' has dtype {code}, which ett does not read")
        want = int(np.prod(shape, dtype=np.int64)) * DTYPES[code].itemsize
        if not (0 <= s <= e <= data_len) or e - s != want:
            raise EttError(
                f"{path}: tensor '{name}' has byte range [{s}, {e}) but needs {want} bytes inside a "
                f"{data_len}-byte buffer; the file is truncated or damaged"
            )
        tensors[name] = TensorInfo(name, code, shape, base + s, base + e)
    return Header(path, tensors, dict(metadata))


def read_array(path: Path, info: TensorInfo, fh=None) -> np.ndarray:
    """Read one tensor as a numpy array (BF16 widened to float32)."""
    if fh is None:
        with open(path, "rb") as f:
            return read_array(path, info, f)
    fh.seek(info.start)
    buf = fh.read(info.end - info.start)
    if len(buf) != info.end - info.start:
        raise EttError(f"{path}: truncated while reading '{info.name}'")
    arr = np.frombuffer(buf, dtype=DTYPES[info.dtype]).reshape(info.shape)
    if info.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


@dataclass(frozen=True)
class Source:
    """A tensor to write: either an in-memory array or a byte range of an existing file."""

    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    path: Path | None = None
    start: int = 0
    end: int = 0

    @property
    def nbytes(self) -> int:
        if self.array is not None:
            return self.array.nbytes
        return self.end - self.start

    @staticmethod
    def of_array(array: np.ndarray) -> Source:
        array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        return Source(dtype_code(array), tuple(array.shape), array=array)

    @staticmethod
    def of_file(path: Path, info: TensorInfo) -> Source:
        return Source(info.dtype, info.shape, path=path, start=info.start, end=info.end)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else remove it."""
    path = Path(path)
    if not path.parent.exists():
        raise EttError(f"{path}: its folder {path.parent} does not exist; create it or choose another -o")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; give the result the mode a plain open() would (or the replaced file's)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_file(path: str | os.PathLike, entries: Iterable[tuple[str, Source]], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, streaming file-backed sources in chunks."""
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for name, src in entries:
        header[name] = {
            "dtype": src.dtype,
            "shape": list(src.shape),
            "data_offsets": [offset, offset + src.nbytes],
        }
        offset += src.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    handles: dict[Path, object] = {}
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as out:
                out.write(struct.pack("<Q", len(raw)))
                out.write(raw)
                for _, src in entries:
                    if src.array is not None:
                        out.write(memoryview(src.array).cast("B"))
                        continue
                    fh = handles.get(src.path)
                    if fh is None:
                        fh = handles[src.path] = open(src.path, "rb")  # noqa: SIM115
                    fh.seek(src.start)
                    left = src.end - src.start
                    while left:
                        buf = fh.read(min(left, _CHUNK))
                        if not buf:
                            raise EttError(f"{src.path}: truncated while copying a tensor")
                        out.write(buf)
                        left -= len(buf)
                out.flush()
                os.fsync(out.fileno())
        finally:
            for fh in handles.values():
                fh.close()


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
