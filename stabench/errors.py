"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2.

An error carries its parts: `key` (what was wrong: a config key such as `optim.lr`, or an input such as
`store`), the `message`, and the `allowed` values. Library code never names a command-line flag; the CLI
shows `key` as the flag that set it (`store` -> `--store`).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user; says what was wrong, and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None, allowed: str | Iterable | None = None):
        self.key, self.message = key, message
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
