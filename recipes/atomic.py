"""Files written whole or not at all: every file strata writes goes to a temporary name beside its place and is
renamed over it when complete, so a crash, a kill or a full disk leaves the previous file (or none), never half a
file. The rename is atomic because both names are in one folder; a plain `open` keeps the usual permissions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: str | Path) -> Path:
    """The temporary name of `path` while it is written (hidden, this process's own)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(p) as partial:` write `partial` (a file or a folder); on success it replaces `p`, on an
    error it is removed and `p` is left as it was. The parent folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """`path.write_text(text)` (UTF-8), atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`path.write_bytes(data)`, atomically."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)
    return Path(path)
