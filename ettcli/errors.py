"""The one error type that every user-facing failure is raised as.

The CLI turns an :class:`EttError` into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class EttError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""
