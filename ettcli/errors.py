"""The error type that every user-facing failure is raised as, and the warning type for suspicious input.

The CLI turns an :class:`EttError` into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class EttError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""


class EttWarning(UserWarning):
    """Input that is accepted but probably not what was meant; the CLI prints it as one ``ett: warning:`` line."""


def warn(message: str) -> None:
    """Warn about accepted-but-suspicious input (a library caller sees a Python warning of :class:`EttWarning`)."""
    import warnings

    warnings.warn(message, EttWarning, stacklevel=2)
