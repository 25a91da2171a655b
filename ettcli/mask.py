"""Masks as first-class values: binary, shape-checked against their tensor, with density and sparsity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ettcli.errors import EttError


@dataclass(frozen=True, eq=False)
class Mask:
    """A binary keep-mask (True = kept) for one prunable tensor."""

    array: np.ndarray

    def __post_init__(self) -> None:
        if self.array.dtype != np.bool_:
            raise TypeError("Mask holds a bool array; use Mask.from_values to convert")

    @staticmethod
    def from_values(values: np.ndarray, name: str = "mask", where: str = "ticket") -> Mask:
        """Convert a bool, 0/1 integer or 0.0/1.0 float array; anything else is an EttError."""
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
    def ones_like(shape: tuple[int, ...]) -> Mask:
        return Mask(np.ones(shape, dtype=bool))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def numel(self) -> int:
        return int(self.array.size)

    @property
    def kept(self) -> int:
        return int(np.count_nonzero(self.array))

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
        return Mask(flat.reshape(self.array.shape))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mask) and np.array_equal(self.array, other.array)

    __hash__ = None  # type: ignore[assignment]
