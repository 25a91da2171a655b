"""Masks as first-class values: binary, shape-checked against their tensor, with density and sparsity.

A mask read from a safetensors file stays the file's bytes (one 0/1 byte per entry, C order) until someone
asks for its numpy :attr:`Mask.array`: counting, comparing and writing it need no numpy, so the transforms,
which only copy masks under new names, never import it. Byte-wise checks cost about 1.3 ms per MB where
numpy's take 0.1, so where numpy is loaded already (or the masks are large enough to repay its import of
about 50 ms, :data:`NUMPY_BYTES`) the masks are checked with numpy instead.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from ettcli.errors import EttError

if TYPE_CHECKING:
    import numpy as np

NUMPY_BYTES = 32 << 20  # mask bytes whose byte-wise checks cost about what importing numpy costs


class Mask:
    """A binary keep-mask (True = kept) for one prunable tensor; immutable."""

    __slots__ = ("_array", "_kept", "_raw", "_shape")

    def __init__(self, array: np.ndarray):
        if array.dtype != bool:
            raise TypeError("Mask holds a bool array; use Mask.from_values to convert")
        self._array = array
        self._raw: bytes | None = None
        self._shape = tuple(array.shape)
        self._kept: int | None = None

    @staticmethod
    def from_values(values: np.ndarray, name: str = "mask", where: str = "ticket") -> Mask:
        """Convert a bool, 0/1 integer or 0.0/1.0 float array; anything else is an EttError."""
        import numpy as np

        values = np.asarray(values)
        if values.dtype == np.bool_:
            raw = values.view(np.uint8) if values.flags.c_contiguous else values.astype(np.uint8)
            if raw.size and raw.max() > 1:
                raise EttError(f"{where}: mask '{name}' holds byte values other than 0 and 1")
            return Mask(np.require(values, requirements="C"))
        bad = (values != 0) & (values != 1)
        if bad.any():
            example = values[bad].flat[0].item()  # a plain Python number, printed as 0.5 (not np.float32(0.5))
            raise EttError(
                f"{where}: mask '{name}' is not binary: found value {example} "
                f"({int(bad.sum())} entries not 0 or 1); masks keep (1) or prune (0) each weight"
            )
        return Mask(np.require(values != 0, requirements="C"))

    @staticmethod
    def from_bytes(
        raw: bytes, shape: tuple[int, ...], name: str = "mask", where: str = "ticket", with_numpy: bool | None = None
    ) -> Mask:
        """A mask from a bool tensor's raw bytes (one byte per entry, C order); a byte other than 0 or 1 is an
        EttError, as in :meth:`from_values`. Kept as bytes, or checked and held as a numpy array if
        ``with_numpy`` (by default: if numpy is loaded, see the module's text); the two are equal values."""
        if len(raw) != math.prod(shape):
            raise EttError(f"{where}: mask '{name}' has {len(raw)} bytes for its shape {list(shape)}")
        if with_numpy is None:
            with_numpy = "numpy" in sys.modules
        if with_numpy:
            import numpy as np

            return Mask.from_values(np.frombuffer(raw, dtype=np.bool_).reshape(shape), name, where)
        if raw.translate(None, b"\x00\x01"):
            raise EttError(f"{where}: mask '{name}' holds byte values other than 0 and 1")
        mask = Mask.__new__(Mask)
        mask._array, mask._raw, mask._shape, mask._kept = None, bytes(raw), tuple(shape), None
        return mask

    @staticmethod
    def ones_like(shape: tuple[int, ...]) -> Mask:
        import numpy as np

        return Mask(np.ones(shape, dtype=bool))

    @property
    def array(self) -> np.ndarray:
        """The mask as a bool numpy array (read-only where it was read from a file)."""
        if self._array is None:
            import numpy as np

            self._array = np.frombuffer(self._raw, dtype=np.bool_).reshape(self._shape)
        return self._array

    def buffer(self) -> bytes | memoryview:
        """The mask's bytes (one 0/1 byte per entry, C order), without a copy where possible."""
        if self._raw is not None:
            return self._raw
        import numpy as np

        return memoryview(np.ascontiguousarray(self._array)).cast("B")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def numel(self) -> int:
        return math.prod(self._shape)

    @property
    def kept(self) -> int:
        if self._raw is None:  # an array its owner may still change: counted each time
            import numpy as np

            return int(np.count_nonzero(self._array))
        if self._kept is None:  # bytes never change: counted once
            self._kept = len(self._raw) - self._raw.count(0)
        return self._kept

    @property
    def density(self) -> float:
        return self.kept / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of entries pruned (mask 0)."""
        return 1.0 - self.density

    def check_shape(self, shape: tuple[int, ...], name: str, where: str) -> None:
        if self.shape != tuple(shape):
            raise EttError(f"{where}: mask '{name}_mask' has shape {list(self.shape)} but '{name}' has {list(shape)}")

    def shuffled(self, rng: np.random.Generator) -> Mask:
        """The same number of kept entries at random positions within the tensor."""
        flat = self.array.reshape(-1).copy()
        rng.shuffle(flat)
        return Mask(flat.reshape(self._shape))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or self._shape != other._shape:
            return False
        if self._raw is not None and other._raw is not None:
            return self._raw == other._raw
        import numpy as np

        return bool(np.array_equal(self.array, other.array))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Mask(shape={list(self._shape)}, kept={self.kept:,} of {self.numel:,})"

    def __reduce__(self):
        return (Mask, (self.array,)) if self._raw is None else (Mask.from_bytes, (self._raw, self._shape))
