"""One writer per folder: a lock file that a second writer is refused by, and that a killed writer's successor
recognises as stale (its process is gone) and takes over.

The lock is `<folder>/.strata.lock`, created atomically (`O_CREAT | O_EXCL`) and holding the writer's pid, host and
command. A lock from another host cannot be checked from here: it is refused with the way to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

LOCK = ".strata.lock"


class FolderLockedError(FileExistsError):
    """Another live process is writing the folder; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class FolderLock:
    """`with FolderLock(folder, "strata extract"):` -- the folder is this process's until the block ends."""

    def __init__(self, folder: str | Path, command: str) -> None:
        self.path = Path(folder) / LOCK
        self.command = command
        self.took_over: dict | None = None  # the stale lock replaced, if any

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a writer killed at once: nobody can be holding it

    def _stale(self, holder: dict) -> bool:
        if not holder:
            return True
        if holder.get("host") != socket.gethostname():
            return False
        return not _alive(int(holder.get("pid", -1)))

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        for _ in range(3):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                if not self._stale(holder):
                    raise FolderLockedError(
                        f"{self.path.parent} is being written by {holder.get('command', 'another process')} "
                        f"(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}); wait for "
                        f"it to finish, or remove {self.path} if that process is gone"
                    ) from None
                self.took_over = holder
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as lock:
                json.dump(record, lock)
            return
        raise FolderLockedError(f"could not take {self.path}: other processes keep taking it")

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
