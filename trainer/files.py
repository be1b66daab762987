"""Writing a file atomically: to a temporary name beside it, then renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READABLE = 0o644
"""mkstemp creates 0600; run outputs and checkpoints are read by other processes (worker, API)."""


@contextmanager
def replacing(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it, and on success it replaces ``path``.

    A failure (or a crash) leaves ``path`` as it was and removes the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, READABLE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
