"""The error type that every user-facing failure is raised as, the warning type for suspicious input, and
how signals become interrupts.

The CLI turns an :class:`EttError` into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class EttError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""


class EttWarning(UserWarning):
    """Input that is accepted but probably not what was meant; the CLI prints it as one ``ett: warning:`` line."""


def warn(message: str) -> None:
    """Warn about accepted-but-suspicious input (a library caller sees a Python warning of :class:`EttWarning`)."""
    import warnings

    warnings.warn(message, EttWarning, stacklevel=2)


# --- interrupts ----------------------------------------------------------------------------------------------
# The CLI installs on_signal for SIGINT, SIGTERM and SIGHUP, so each arrives as an exception (Terminated is a
# KeyboardInterrupt) and every cleanup runs: atomic writes remove their temporary files on the way out. Once a
# command's final output is committed (renamed into place inside final_output()), the command has succeeded:
# a signal that arrives from then on is held and reported as late, so the exit status matches what is on disk.


class Terminated(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM or SIGHUP) raised as an interrupt; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal_name(self.signum)


class Interrupted(Exception):
    """Training stopped (a signal or a stop request) after writing a checkpoint at ``step`` in ``folder``; a rerun
    resumes there. The CLI turns it into one line and exit status 128 + the signal (SIGINT for a stop request)."""

    def __init__(self, step: str, folder, signum: int | None):
        super().__init__(step)
        self.step, self.folder, self.signum = step, folder, signum


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Commit:
    def __init__(self) -> None:
        self.armed = False  # inside final_output(): the next atomic commit completes the command
        self.committed = False  # it did: signals are held from here on
        self.held: list[int] = []


_COMMIT = _Commit()


def on_signal(signum, frame) -> None:
    """Signal handler: raise :class:`Terminated`, or hold the signal once the final output is committed."""
    if _COMMIT.committed:
        _COMMIT.held.append(signum)
        return
    raise Terminated(signum)


def commit_point() -> None:
    """Called by an atomic write just before it renames its file into place (the output is complete)."""
    if _COMMIT.armed:
        _COMMIT.committed = True


@contextmanager
def final_output() -> Iterator[None]:
    """Mark the atomic write(s) in this block as the command's result; see the comment above."""
    _COMMIT.armed = True
    try:
        yield
    finally:
        if not _COMMIT.committed:
            _COMMIT.armed = False


def take_held_signal() -> int | None:
    """The first signal held after the final output was committed, if any; resets for the next command."""
    global _COMMIT
    held = _COMMIT.held[0] if _COMMIT.held else None
    _COMMIT = _Commit()
    return held
