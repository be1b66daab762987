"""Writing files and publishing directories atomically and durably: the one place for it.

A reader (another process, a crash-restarted one) sees a file or a directory either
whole or not at all: everything is written under a temporary name beside its target
and renamed into place. Checkpoints, run outputs, manifests, uploads and index
versions all go through here.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READABLE = 0o644
"""mkstemp creates 0600; checkpoints, run outputs and uploads are read by other processes (worker, API)."""

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@contextmanager
def replacing(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it, and on success it replaces ``path``.

    A failure (or a crash) leaves ``path`` as it was and removes the temporary file.
    With ``fsync`` the file's bytes are on disk before the rename makes them visible.
    """
    with _writing(path, fsync=fsync, replace=True) as tmp:
        yield tmp


@contextmanager
def creating(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Like :func:`replacing`, but only if ``path`` does not exist yet: FileExistsError otherwise
    (raised at the end, after the write, and the temporary file is removed). For keys that are
    written once (core/artifacts/store.py)."""
    with _writing(path, fsync=fsync, replace=False) as tmp:
        yield tmp


@contextmanager
def _writing(path: Path, *, fsync: bool, replace: bool) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.chmod(tmp, READABLE)
        if replace:
            os.replace(tmp, path)
        else:
            rename_no_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, *, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks so a GB-sized index never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _renameat2() -> object | None:
    """libc's renameat2 on Linux (glibc >= 2.28), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def rename_no_replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists, whatever it is.

    Plain ``os.rename`` silently replaces an *empty* directory, so on Linux this uses
    ``renameat2(RENAME_NOREPLACE)``, which checks and renames in one step. Elsewhere
    (or on filesystems without the flag) it checks first: a concurrent writer of the
    same name could slip into that gap, which is why index versions are unique.
    """
    func = _renameat2()
    if func is not None:
        rc = func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "target already exists", str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "target already exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "target already exists", str(dst)) from exc
        raise
