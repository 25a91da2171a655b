"""Run folders: the one owner of every file a training run (an IMP level, a study job) leaves on disk.

A run is named by its *identity*, a JSON-ready dict of everything that makes its result what it is (the
input's content, the recipe, the seed, the precision, ...), and nothing that does not (where the data or
the folder lives, worker counts). The folder's ``config.json`` records that identity, so a folder is

* **fresh**: nothing of a run in it yet;
* **resumable**: the same identity and a checkpoint, but no final files;
* **finished**: the same identity and the final files;
* or it holds a **different run**, which is refused with the settings that differ, unless that run failed
  before its first checkpoint (the folder holds only its config): then the new run takes the folder over.

Files, all written atomically: ``config.json`` (identity and settings), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (the loop state), ``summary.json`` and ``final.safetensors`` (the trained
ticket), and ``rewind.safetensors`` where a run keeps its state at a rewind step.

Pure Python; torch is imported only to read and write checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ettcli.errors import EttError
from ettcli.stfile import atomic_path

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
FINAL = "final.safetensors"
REWIND = "rewind.safetensors"
LOCK = "lock"  # held by the process training the run (RunFolder.held)
_RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, FINAL, REWIND)


def identity_hash(identity: dict, length: int = 8) -> str:
    """A short stable hash of an identity dict (key order does not matter)."""
    raw = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:length]


def default_runs_root() -> Path:
    """``$ETT_RUNS`` if set, else ``runs`` in the working folder."""
    return Path(os.environ.get("ETT_RUNS") or "runs")


def stem_of(path: str | os.PathLike) -> str:
    """A readable folder-name stem for an input path.

    A file gives its name without suffixes (``r56.safetensors`` -> ``r56``); an open_lth level folder gives
    its last two parts (``level_3/main`` -> ``level_3-main``), so two levels never share a stem.
    """
    p = Path(path)
    if p.is_dir():
        parts = [x for x in p.resolve().parts[-2:] if x not in ("/", "")]
        stem = "-".join(parts)
    else:
        stem = p.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "ticket"


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"recipe": {"lr": 0.1}}`` -> ``{"recipe.lr": 0.1}``, so a difference names the setting itself."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class RunFolder:
    """One run's folder and the identity that the folder must hold."""

    path: Path
    identity: dict

    @staticmethod
    def reading(path: str | os.PathLike) -> RunFolder:
        """The run folder at ``path``, for reading its files (:meth:`summary`, :meth:`config`, :meth:`metrics`)
        whatever run it holds; its identity is not checked, so it is not for training."""
        return RunFolder(Path(path), {})

    @staticmethod
    def default(stem: str, identity: dict, root: Path | None = None) -> RunFolder:
        """``<root>/<stem>-<hash of the identity>`` (root: :func:`default_runs_root`)."""
        root = default_runs_root() if root is None else Path(root)
        return RunFolder(root / f"{stem}-{identity_hash(identity)}", identity)

    def file(self, name: str) -> Path:
        return self.path / name

    # --- state ------------------------------------------------------------------------------------------
    def state(self) -> str:
        """``"fresh"``, ``"resume"`` or ``"finished"``; a folder holding a different run is an EttError."""
        if self.path.exists() and not self.path.is_dir():
            raise EttError(f"{self.path} is a file; name a folder for the run")
        cfg = self.file(CONFIG)
        if not cfg.is_file():
            if self.path.is_dir() and any((self.path / n).exists() for n in _RUN_FILES):
                raise EttError(f"{self.path} holds run files but no {CONFIG}; choose another folder or remove it")
            return "fresh"
        try:
            have = json.loads(cfg.read_text()).get("identity", {})
        except (json.JSONDecodeError, AttributeError, OSError):
            raise EttError(f"{cfg}: not a valid run config; remove the folder or choose another") from None
        have, want = _flat(have), _flat(json.loads(json.dumps(self.identity)))  # as JSON reads it back
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff and not self.holds_work():
            return "fresh"  # a run that failed before its first checkpoint: nothing to keep, a corrected run takes over
        if diff:
            show = ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff[:3])
            raise EttError(
                f"{self.path} holds a run with different settings ({show}); choose another folder or remove that one"
            )
        if self.file(SUMMARY).is_file() and self.file(FINAL).is_file():
            return "finished"
        if self.file(CHECKPOINT).is_file():
            return "resume"
        return "fresh"

    def holds_work(self) -> bool:
        """Whether the folder holds anything of a run besides its config and lock: a checkpoint, metrics, final
        files, or, for a folder of runs (IMP's), any of those in a subfolder; or a live process's lock. A folder that
        holds none (its run failed before its first checkpoint) may be taken over by a run with other settings."""
        from ettcli.locks import JobLock

        if not self.path.is_dir():
            return False
        for p in self.path.rglob("*"):
            if p.name == LOCK and not p.is_dir():
                # a live process training a run inside; the folder's own lock is for held() to judge
                if p.parent != self.path and JobLock(p).busy():
                    return True
                continue
            if p.is_dir() or p.name == CONFIG or (p.name.startswith(".") and p.name.endswith(".tmp")):
                continue
            return True
        return False

    @contextlib.contextmanager
    def held(self):
        """Hold the folder for this process while it trains: another live process holding it is an EttError.

        The lock (:class:`~ettcli.locks.JobLock`, file ``lock``) names its owner's host and pid; the lock of a
        process that is gone is taken over.
        """
        from ettcli.locks import JobLock

        lock = JobLock(self.file(LOCK))
        try:
            took = lock.acquire()
        except OSError as exc:
            raise EttError(f"cannot create the run folder {self.path}: {exc.strerror}; choose another") from None
        if not took:
            who = lock.owner() or {}
            raise EttError(
                f"{self.path}: another process is training this run ({who.get('host', '?')} pid {who.get('pid', '?')}, "
                f"since {who.get('since', '?')}); wait for it to finish, or train into another folder"
            )
        lock.start_heartbeat()
        try:
            yield
        finally:
            lock.release()

    def begin(self, fresh: bool, settings: dict | None = None) -> None:
        """Create the folder and write the config; a fresh start first removes any earlier run's files."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EttError(f"cannot create the run folder {self.path}: {exc.strerror}; choose another") from None
        if fresh:
            for name in _RUN_FILES:
                self.file(name).unlink(missing_ok=True)
        self.write_json(CONFIG, {"identity": self.identity, "settings": settings or {}})

    # --- files ------------------------------------------------------------------------------------------
    def write_json(self, name: str, obj) -> None:
        with atomic_path(self.file(name)) as tmp:
            tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")

    def read_json(self, name: str):
        return json.loads(self.file(name).read_text())

    def append_metrics(self, row: dict) -> None:
        with open(self.file(METRICS), "a") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Make ``metrics.jsonl`` hold exactly ``rows`` (after a resume it may hold a later epoch's line)."""
        with atomic_path(self.file(METRICS)) as tmp:
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))

    def metrics(self) -> list[dict]:
        path = self.file(METRICS)
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

    def save_checkpoint(self, state: dict) -> None:
        from ettcli.torchfile import save_torch

        save_torch({"identity": self.identity, **state}, self.file(CHECKPOINT))

    def load_checkpoint(self, device=None) -> dict:
        """The checkpoint, every tensor on the CPU whatever ``device`` the run trains on: the RNG state must
        stay a CPU ByteTensor, and the model and optimizer copy their tensors to their own device on load."""
        import torch

        path = self.file(CHECKPOINT)
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged checkpoint: torch raises many types
            raise EttError(f"{path}: cannot read the checkpoint ({type(exc).__name__}); remove it to restart") from None
        if json.loads(json.dumps(ck.get("identity"))) != json.loads(json.dumps(self.identity)):
            raise EttError(f"{path} belongs to another run; remove it to train this run from its start")
        return ck

    def summary(self) -> dict:
        return self.read_json(SUMMARY)

    def config(self) -> dict:
        """What ``config.json`` records: ``{"identity": ..., "settings": ...}``."""
        return self.read_json(CONFIG)
