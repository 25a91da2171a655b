"""Reading and writing safetensors files without torch.

A safetensors file is an 8-byte little-endian header length, a JSON header and one raw buffer. ett parses
the header itself (to give precise errors and to know every tensor's byte range), reads tensors as numpy
arrays, and writes files by streaming byte ranges, so that a transform never holds a ticket twice. Only
reading values imports numpy: a header, a byte range and a write need none.
Files written here load with the ``safetensors`` library, and files the library writes load here; the tests
check both directions.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from ettcli.errors import EttError, commit_point

if TYPE_CHECKING:
    import numpy as np

# safetensors dtype codes -> (bytes per entry, numpy dtype, little-endian). BF16 is read as raw uint16 and
# widened on demand.
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "<f8"),
    "F32": (4, "<f4"),
    "F16": (2, "<f2"),
    "BF16": (2, "<u2"),
    "I64": (8, "<i8"),
    "I32": (4, "<i4"),
    "I16": (2, "<i2"),
    "I8": (1, "i1"),
    "U64": (8, "<u8"),
    "U32": (4, "<u4"),
    "U16": (2, "<u2"),
    "U8": (1, "u1"),
    "BOOL": (1, "?"),
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_CHUNK = 8 << 20


@cache
def _codes() -> dict[str, str]:
    """numpy dtype string -> safetensors code (BF16 has no numpy dtype of its own)."""
    import numpy as np

    return {np.dtype(v).str: k for k, (_, v) in DTYPES.items() if k != "BF16"}


def dtype_code(array: np.ndarray) -> str:
    """The safetensors code for a numpy array's dtype."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _codes().get(dt.str)
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
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header; every failure is an EttError naming the file (and the tensor).

    The format's rules, all enforced: unique names; dtype a known code; shape a list of non-negative integers;
    data_offsets two non-negative integers [start, end) whose length is the shape's byte size; and the tensors,
    taken in offset order, tile the data buffer exactly: the first starts at 0, each starts where the previous
    ends, the last ends at the end of the file.
    """
    path = Path(path)
    if not path.exists():
        raise EttError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise EttError(f"{path}: is a folder, expected a .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head[:4] == b"PK\x03\x04":
            raise EttError(f"{path}: is a torch (zip) file, not safetensors; name it .pt or .pth")
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
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_Object)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EttError(f"{path}: not a safetensors file: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise EttError(f"{path}: not a safetensors file: its header is not a JSON object")
    if header.duplicate is not None:
        raise EttError(f"{path}: tensor '{header.duplicate}' is listed twice in the header; the file is damaged")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EttError(f"{path}: __metadata__ must map strings to strings")
    if getattr(metadata, "duplicate", None) is not None:
        raise EttError(f"{path}: __metadata__ lists '{metadata.duplicate}' twice; the file is damaged")
    base = 8 + n
    data_len = size - base
    tensors = {name: _tensor_info(path, name, entry, base) for name, entry in header.items()}
    _check_tiling(path, tensors.values(), base, data_len)
    return Header(path, tensors, dict(metadata))


class _Object(dict):
    """A JSON object that remembers the first key it saw twice (json keeps the last one silently)."""

    def __init__(self, pairs):
        super().__init__()
        self.duplicate = None
        for key, value in pairs:
            if key in self and self.duplicate is None:
                self.duplicate = key
            self[key] = value


def _natural(value) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass, and 2.0 is not an integer here


def _tensor_info(path: Path, name: str, entry, base: int) -> TensorInfo:
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise EttError(f"{where}: header entry lacks dtype, shape or data_offsets; the file is damaged")
    if entry.duplicate is not None:
        raise EttError(f"{where}: header entry lists '{entry.duplicate}' twice; the file is damaged")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise EttError(f"{where} has dtype {code}, which ett does not read")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise EttError(f"{where} has shape {json.dumps(shape)}; a shape is a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(o) for o in offsets):
        raise EttError(f"{where} has data_offsets {json.dumps(offsets)}; expected two non-negative integers")
    s, e = offsets
    want = math.prod(shape) * DTYPES[code][0]
    if e < s or e - s != want:
        raise EttError(f"{where} has byte range [{s}, {e}) but its {code} shape {shape} needs {want} bytes")
    return TensorInfo(name, code, tuple(shape), base + s, base + e)


def _check_tiling(path: Path, infos, base: int, data_len: int) -> None:
    """The tensors, in offset order, must cover the data buffer exactly: no gap, no overlap, nothing after."""
    at, prev = 0, None
    for info in sorted(infos, key=lambda i: (i.start, i.end)):
        s, e = info.start - base, info.end - base
        if s != at:
            if prev is None:
                what = f"leaves a gap of {s} bytes at the start of the data buffer"
            else:
                how = "overlaps" if s < at else f"leaves a gap of {s - at} bytes after"
                what = f"{how} tensor '{prev.name}' (bytes [{prev.start - base}, {at}))"
            raise EttError(
                f"{path}: tensor '{info.name}' at bytes [{s}, {e}) {what}; "
                "the tensors must tile the data buffer in order; the file is damaged"
            )
        at, prev = e, info
    if at != data_len:
        what = f"the last tensor '{prev.name}' ends at byte {at}" if prev is not None else "the header lists no tensors"
        raise EttError(f"{path}: {what} but the data buffer holds {data_len} bytes; the file is truncated or damaged")


def read_bytes(path: Path, info: TensorInfo, fh=None) -> bytes:
    """Read one tensor's raw bytes (little-endian, C order)."""
    if fh is None:
        with open(path, "rb") as f:
            return read_bytes(path, info, f)
    fh.seek(info.start)
    buf = fh.read(info.end - info.start)
    if len(buf) != info.end - info.start:
        raise EttError(f"{path}: truncated while reading '{info.name}'")
    return buf


def read_array(path: Path, info: TensorInfo, fh=None) -> np.ndarray:
    """Read one tensor as a numpy array (BF16 widened to float32)."""
    import numpy as np

    arr = np.frombuffer(read_bytes(path, info, fh), dtype=DTYPES[info.dtype][1]).reshape(info.shape)
    if info.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


@dataclass(frozen=True)
class Source:
    """A tensor to write: an in-memory array, raw bytes (``raw``: little-endian, C order) or a byte range of
    an existing file."""

    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    path: Path | None = None
    start: int = 0
    end: int = 0
    raw: bytes | memoryview | None = None

    @property
    def nbytes(self) -> int:
        if self.array is not None:
            return self.array.nbytes
        if self.raw is not None:
            return memoryview(self.raw).nbytes
        return self.end - self.start

    @staticmethod
    def of_array(array: np.ndarray) -> Source:
        import numpy as np

        array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        return Source(dtype_code(array), tuple(array.shape), array=array)

    @staticmethod
    def of_file(path: Path, info: TensorInfo) -> Source:
        return Source(info.dtype, info.shape, path=path, start=info.start, end=info.end)


def check_output(path: str | os.PathLike) -> Path:
    """Refuse an output path that an atomic write cannot replace safely; return it as a Path.

    Its folder must exist, and the path itself must be new or a regular file: renaming over a device node,
    a fifo, a socket or a folder would replace that special file with a regular one.
    """
    path = Path(path)
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise EttError(f"{path}: its folder {path.parent} {what}; create it or choose another output path")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise write_error(path, exc) from None
    if not stat.S_ISREG(mode):
        raise EttError(f"{path}: exists and is {_kind(mode)}, not a regular file; choose another output path")
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Refuse, before any work, an output that could not be written: a file as :func:`check_output` does, and
    then whether its folder takes a new file; a ``folder`` (which may not exist yet) by whether its nearest
    existing parent does. Only a probe file is created there, and removed at once; returns ``path``."""
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise EttError(f"{path}: exists and is not a folder; choose another output folder")
        where = path
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise EttError(f"{path}: {where} is not a folder; choose another output folder")
    else:
        where = check_output(path).parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".ett-probe.", suffix=".tmp", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise EttError(
                f"{path}: cannot write: no space left on the device holding {where}; free space there"
            ) from None
        raise EttError(f"{path}: cannot write in {where} ({reason}); choose a folder you can write to") from None
    return path


def _kind(mode: int) -> str:
    for test, word in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return word
    return "a special file"


def write_error(path: Path, exc: OSError) -> EttError:
    """An OSError met while writing ``path``, in ett's words: what failed, where, and what to do."""
    reason = exc.strerror or str(exc)
    folder = path.parent
    name = Path(str(exc.filename)).name if exc.filename is not None else None
    if name is not None and name != path.name and not name.startswith(f".{path.name}."):
        # about another file: e.g. a source that vanished while its tensors were being copied
        return EttError(f"{exc.filename}: {reason} (while writing {path})")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EttError(f"{path}: cannot write: no space left on the device holding {folder}; free space there")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EttError(f"{path}: cannot write in {folder} ({reason}); choose a folder you can write to")
    return EttError(f"{path}: cannot write ({reason})")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else remove it.

    ``path`` is checked first (:func:`check_output`); an OSError while writing (a full disk, a read-only
    folder) becomes an :class:`EttError`, and an interrupt or any other failure removes the temporary file.
    """
    path = Path(path)
    if path in _TEMPORARY:  # the temporary file of an enclosing atomic write: write it in place
        try:
            yield path
        except OSError as exc:
            raise write_error(_TEMPORARY[path], exc) from None
        return
    path = check_output(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    _TEMPORARY[tmp_path] = path
    try:
        # mkstemp makes 0600 files; give the result the mode a plain open() would (or the replaced file's)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)
        yield tmp_path
        commit_point()
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    finally:
        del _TEMPORARY[tmp_path]


_TEMPORARY: dict[Path, Path] = {}  # temporary files of atomic writes in progress -> the paths they become


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
                    if src.array is not None or src.raw is not None:
                        out.write(memoryview(src.array if src.raw is None else src.raw).cast("B"))
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
    """The hex sha256 of a file's bytes."""
    return sha256_files([path])


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """The hex sha256 of the files' bytes, read one after another in the order given."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()
