"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2.

An error carries its parts: `key` (what was wrong: a config key such as `optim.lr`, or an input such as
`store`), the `message`, and the `allowed` values. Library code never names a command-line flag; the CLI
shows `key` as the flag that set it (`store` -> `--store`). A message never carries a known secret: the
password of a storage URL (`secrets.register`) is replaced by `***`, whatever library text the message quotes.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable
from pathlib import Path

from .secrets import scrub


class UserError(ValueError):
    """Bad input from the user; says what was wrong, and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None, allowed: str | Iterable | None = None):
        self.key, self.message = key, scrub(message)
        self.allowed = allowed if allowed is None or isinstance(allowed, str) else ", ".join(map(str, allowed))
        super().__init__(self.render())

    def render(self, key_as: str | None = None) -> str:
        """The message, prefixed by the key (or by `key_as`, e.g. the flag that set it)."""
        prefix = key_as or self.key
        text = f"{prefix}: {self.message}" if prefix else self.message
        return f"{text}; allowed: {self.allowed}" if self.allowed else text

    @classmethod
    def caused_by(cls, error: BaseException, what: str, **parts) -> UserError:
        """`what` went wrong because of a caught library `error`: its type and text end the message."""
        return cls(f"{what}: {type(error).__name__}: {error}", **parts)


class ConfigError(UserError):
    """A config file or `--set` override is invalid."""


class DataError(UserError):
    """A dataset cannot be found or read."""


# What the filesystem may refuse a write for: none of it is the trial's fault, and every later write into the
# same store would meet it again, so it stops a sweep rather than failing trial after trial.
FILESYSTEM_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ESTALE: "stale file handle (an NFS store that was remounted, or a folder removed on another machine)",
}
FULL = (errno.ENOSPC, errno.EDQUOT)


class StorageFault(UserError):
    """The filesystem refused to write a file of the store (full, over quota, read-only, permission denied, stale
    NFS handle); `errno` and `path` say which and where. A trial that meets one records it and raises it."""

    def __init__(self, message: str, *, errno_: int, path: Path, **parts):
        self.errno, self.path = errno_, path
        super().__init__(message, **parts)


def filesystem_fault(error: BaseException | None) -> OSError | None:
    """The OSError of a FILESYSTEM_FAULTS kind behind `error` (itself, or its cause or context: torch.save reports a
    full disk as `RuntimeError: ... unexpected pos` with the OSError as its context), if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in FILESYSTEM_FAULTS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def storage_fault(error: BaseException, path: Path, written: int | None = None) -> StorageFault | None:
    """A StorageFault naming `path` for a write that failed with `error`, when a filesystem fault is behind it (else
    None). For a full filesystem it says how much was free and how much of the file had been written."""
    fault = filesystem_fault(error)
    if fault is None:
        return None
    what = FILESYSTEM_FAULTS[fault.errno]
    message = f"{what} writing '{path}'"
    if fault.errno in FULL:
        try:
            free = shutil.disk_usage(existing_dir(path)).free
        except OSError:
            free = None
        wrote = f"; {human_bytes(written)} of it had been written when the write failed" if written else ""
        left = f"{human_bytes(free)} free there" if free is not None else "free space unknown"
        message += f" ({left}{wrote}); free space on that filesystem (or write the store elsewhere) and run again"
    elif fault.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += "; the store must be writable by whoever runs trials into it (docs/security.md)"
    return StorageFault(message, errno_=fault.errno, path=path)


def existing_dir(path: Path) -> Path:
    """The nearest existing folder at or above `path`."""
    return next((p for p in (Path(path), *Path(path).absolute().parents) if p.is_dir()), Path("/"))


def human_bytes(n: int) -> str:
    """`n` bytes in a readable unit (1.5 MiB)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class MissingExtra(UserError):
    """An optional dependency of one path (Ray, PostgreSQL) is not installed; the message names the extra."""


def missing_extra(error: ImportError, extra: str, what: str, key: str | None = None) -> MissingExtra:
    """The error to raise when importing an optional dependency failed with `error`: `what` needs the `extra` of
    pyproject.toml (`[project.optional-dependencies]`), with the failed import's own text after it."""
    return MissingExtra(
        f"{what} needs `pip install -e '.[{extra}]'` (or `pip install 'stabench[{extra}]'`); {error}", key=key
    )
