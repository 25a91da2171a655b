"""Locks: a file that says which process on which host runs a job (a study job, a training run), so a job
never runs twice at once.

The lock is created atomically (written to a private file, then hard-linked to the lock's name, which fails
if the name exists; this works on NFS too) and holds the owner's host, pid, process start time and a random
token. A lock is *stale* when its owner is gone:

* on this host: the pid no longer exists, or it now belongs to another process (its start time differs);
* on another host (a cluster node sharing the folder): the owner refreshes the lock's modification time every
  ``stale_after / 10`` seconds, so a lock untouched for ``stale_after`` seconds is stale.

A stale lock is broken under a second, short-lived lock (``NAME.break``), so two processes that both find it
stale cannot both take it over.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

STALE_AFTER = 600.0  # seconds without a heartbeat after which another host's lock is stale
BREAK_STALE = 60.0  # a breaker older than this was left by a process that died while breaking


def _proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobLock:
    """The lock file of one job. ``acquire()`` returns whether this process now holds it."""

    def __init__(self, path: str | os.PathLike, stale_after: float = STALE_AFTER):
        self.path = Path(path)
        self.stale_after = stale_after
        self.token = secrets.token_hex(8)
        self.held = False
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    # --- reading ------------------------------------------------------------------------------------------
    def owner(self) -> dict | None:
        """The lock's content, or None where there is no lock (an unreadable one reads as ``{}``)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def is_stale(self, info: dict | None = None) -> bool:
        info = self.owner() if info is None else info
        if info is None:
            return False
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if not info or info.get("host") != socket.gethostname():
            return age > self.stale_after
        pid = int(info.get("pid", -1))
        if pid <= 0 or not _alive(pid):
            return True
        started = info.get("proc_start")
        return bool(started) and _proc_start(pid) not in (None, started)

    def busy(self) -> bool:
        """Whether a live owner holds the lock."""
        info = self.owner()
        return info is not None and not self.is_stale(info)

    # --- taking and giving back ---------------------------------------------------------------------------------
    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return True
            info = self.owner()
            if info is None:
                continue  # released meanwhile: try again
            if not self.is_stale(info) or not self._break(info):
                return False
        return False

    def _create(self) -> bool:
        mine = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()),
            "token": self.token,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = self.path.with_name(f".{self.path.name}.{self.token}")
        tmp.write_text(json.dumps(mine))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _break(self, stale: dict) -> bool:
        """Remove a stale lock whose content is still ``stale``, holding the breaker; True if removed."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > BREAK_STALE:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            if self.owner() != stale:
                return False  # someone else broke it and took the lock meanwhile
            self.path.unlink(missing_ok=True)
            return True
        finally:
            breaker.unlink(missing_ok=True)

    def release(self) -> None:
        self.stop_heartbeat()
        if self.held and (self.owner() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    # --- heartbeat ------------------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        """Touch the lock every ``stale_after / 10`` seconds while held (other hosts judge it by that)."""
        every = max(self.stale_after / 10, 0.05)

        def beat():
            while not self._stop.wait(every):
                if (self.owner() or {}).get("token") != self.token:
                    return
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        self._stop.clear()
        self._beat = threading.Thread(target=beat, name="ett-lock-heartbeat", daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2)
            self._beat = None

    def __enter__(self):
        if not self.acquire():
            raise RuntimeError(f"{self.path} is held by another process")
        self.start_heartbeat()
        return self

    def __exit__(self, *exc):
        self.release()
