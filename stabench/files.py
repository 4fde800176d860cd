"""Files written atomically: a reader sees the old file or the whole new one, even if the writer is killed.

Every layer writes through these (records, checkpoints, score caches, leaderboards, the validation table).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import storage_fault


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(file)` to a temp file in the same directory, fsync, rename over `path`, fsync
    the directory: readers see the old file or the whole new one, even if this process is killed. The file gets
    the mode of any new file (0666 less the umask: 0644 under umask 022, 0664 under 002), not mkstemp's 0600.
    A write the filesystem refuses (full, read-only, permission, stale NFS handle) raises a `StorageFault` naming
    `path`, with nothing left behind and the previous file intact."""
    path, tmp, written = Path(path), None, None
    umask = current_umask()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            written = os.path.getsize(tmp)
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and (fault := storage_fault(e, path, written)) is not None:
            raise fault from e
        raise


def current_umask() -> int:
    """The process's umask, read without changing it: Linux shows it in /proc/self/status (since 4.7). Elsewhere
    it is set and restored at once (os has no getter), under a lock so no other thread of ours creates a file with
    the temporary value meanwhile."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the strictest value, should a file of another library's thread be made meanwhile
        os.umask(umask)
    return umask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` atomically (see `atomic_write`)."""
    import torch  # here, not at import: the package face and the CLI load no torch

    atomic_write(path, lambda f: torch.save(obj, f))


def read_untrusted(path: Path, limit: int) -> bytes:
    """A file read back from a shared store, without trusting it: a FIFO or device planted there to block its
    reader is refused without waiting, and so is a file of more than `limit` bytes. Raises OSError or ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def read_untrusted_json(path: Path, limit: int) -> Any:
    """`read_untrusted`, parsed as JSON; nesting too deep for the parser is a ValueError like any malformed JSON."""
    data = read_untrusted(path, limit)
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def create_exclusive(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists (O_EXCL: atomic on a local disk, NFSv3+ and Lustre, so of two
    processes creating it at once exactly one gets True). The text is on disk before this returns; a failed write
    (disk full) removes the file instead of leaving it empty."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # less the umask, as every store file
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True
