"""Training steps written as ``160ep``, ``1000it`` or ``2ep218it`` (open_lth's notation)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ettcli.errors import EttError

_STEP = re.compile(r"^(?:(?P<ep>\d+)ep)?(?:(?P<it>\d+)it)?$")


@dataclass(frozen=True)
class Step:
    """A point in training: ``ep`` whole epochs plus ``it`` iterations."""

    ep: int = 0
    it: int = 0

    def iterations(self, per_epoch: int) -> int:
        """The step as a count of iterations, given the iterations in one epoch."""
        return self.ep * per_epoch + self.it

    def __str__(self) -> str:
        if self.ep and self.it:
            return f"{self.ep}ep{self.it}it"
        return f"{self.ep}ep" if self.ep else f"{self.it}it"


def parse_step(text: str | int) -> Step:
    """Parse ``160ep``, ``1000it``, ``2ep218it`` (a bare integer means iterations)."""
    s = str(text).strip().lower()
    if s.isdigit():
        return Step(0, int(s))
    m = _STEP.match(s)
    if not s or not m or (m["ep"] is None and m["it"] is None):
        raise EttError(f"step '{text}': expected a step such as 160ep, 1000it or 2ep218it")
    return Step(int(m["ep"] or 0), int(m["it"] or 0))


def format_step(iterations: int, per_epoch: int) -> str:
    """Write an iteration count as ``{E}ep{I}it`` in the shortest form."""
    return str(Step(iterations // per_epoch, iterations % per_epoch))
