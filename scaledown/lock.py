"""One `scaledown run` per output directory: ``<run_dir>/.scaledown.lock`` names the owner.

The lock file holds the owner's pid, host and start time. It is created with its content in one
step (written to a temporary file, then hard-linked to the lock's name, which fails if the lock
exists), so a reader never sees an empty lock. A second run on the same directory is refused with
the owner named; a lock whose process is gone (same host, pid not running) is stale and is taken
over with a warning. A lock from another host cannot be checked and is refused with the command
that removes it.

Taking over is atomic: a taker holds an exclusive `flock` on the stale lock file while it checks the
owner and replaces the file with its own (`os.replace`, so the name never goes missing and no
`os.link` can slip in). A second taker waiting on the same file then finds it replaced, looks again,
and sees a live owner: of two runs that find the same stale lock at the same instant, exactly one runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable, Optional

LOCK_NAME = ".scaledown.lock"


class RunDirLocked(RuntimeError):
    """Another live `scaledown run` owns this output directory."""


class RunLock:
    """``with RunLock(run_dir):`` holds the lock for the block; see the module docstring."""

    def __init__(self, run_dir: str, log: Callable[[str], None] = print):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.log = log
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(5):
            if self._create() or self._take_over_if_stale():
                return
        raise RunDirLocked(f"Could not take the lock {self.path}: other runs keep taking it.")

    def release(self) -> None:
        holder = self._read()
        if holder and holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            os.remove(self.path)

    def _write_own(self) -> str:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.owner, f)
        return tmp

    def _create(self) -> bool:
        tmp = self._write_own()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def _take_over_if_stale(self) -> bool:
        """With an exclusive flock on the existing lock file: refuse a live owner, or replace a stale lock
        with ours. False when the file went away or was replaced meanwhile (the caller looks again)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR)
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one taker at a time; released by os.close (or by dying)
            try:
                if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    return False  # another taker replaced it while we waited
            except FileNotFoundError:
                return False  # released meanwhile
            holder = self._read()
            if holder is None:
                return False
            problem = self._stale_reason(holder)
            if problem is None:
                raise RunDirLocked(
                    f"{os.path.dirname(self.path)} is in use by another scaledown run (pid {holder['pid']} on "
                    f"{holder['host']}, lock file {self.path}). Wait for it to finish, or choose another --name."
                )
            self.log(f"warning: taking over the stale lock {self.path}: {problem}")
            os.replace(self._write_own(), self.path)
            return True
        finally:
            os.close(fd)

    def _read(self) -> Optional[dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale_reason(self, holder: Optional[dict]) -> Optional[str]:
        from distill.trainer.checkpoints import process_alive

        if not isinstance(holder.get("pid"), int) or "host" not in holder:
            return "it does not name an owner"
        if holder["host"] != socket.gethostname():
            raise RunDirLocked(
                f"{os.path.dirname(self.path)} is locked by pid {holder['pid']} on host {holder['host']}, which "
                f"this machine cannot check. If that run is gone, remove {self.path} and rerun."
            )
        if not process_alive(holder["pid"]):
            return f"its owner, pid {holder['pid']} on {holder['host']}, is no longer running"
        return None
