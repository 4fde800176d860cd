"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2."""


class UserError(ValueError):
    """Bad input from the user; the message names the file or flag, the key and what is allowed."""


class ConfigError(UserError):
    """A config file or `--set` override is invalid."""


class DataError(UserError):
    """A dataset cannot be found or read."""
