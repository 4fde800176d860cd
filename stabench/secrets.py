"""Secrets that must never be printed or stored: the password of a storage URL (an Optuna RDB such as
`postgresql://user:PASSWORD@host/db`) and API keys.

`redact_url(url)` is the form of a storage URL that may be shown (error messages, logs, study attributes,
records, W&B); `register(url_or_secret)` remembers a secret for this process, and `scrub(text)` replaces every
remembered one in a text. `UserError` scrubs its message, so an error that quotes a library's text (which may
quote the URL whole) prints without the password.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

MASK = "***"
MIN_LENGTH = 3  # shorter secrets are not hunted in free text (a URL's own password is always hidden)
_KNOWN: set[str] = set()  # the secrets this process has seen (passwords, keys); scrubbed from every error
# scheme://user:password@host... (the password runs to the last '@' before the path: a raw '@' may be in it)
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*:)(?P<password>[^/]*)@")


def url_password(url: str) -> str | None:
    """The password in `url` (as written, possibly %-encoded), or None when it has none (or is a path)."""
    if "://" not in url:
        return None
    m = _USERINFO.match(url)
    return m.group("password") if m and m.group("password") else None


def redact_url(url: str | None) -> str | None:
    """`url` with its password replaced by `***` (sqlalchemy's rendering when it parses, a pattern otherwise); a
    path, or a URL without a password, unchanged."""
    if url is None or (password := url_password(url)) is None:
        return url
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an sqlalchemy URL, or sqlalchemy missing: the pattern does it
        shown = None
    if shown is None or password in shown:
        shown = _USERINFO.sub(lambda m: f"{m.group('head')}{MASK}@", url, count=1)
    return shown


def register(secret: str | None) -> str | None:
    """Remember a secret (a URL's password, or a key itself) so that `scrub` hides it; returns it unchanged. A
    URL without a password registers nothing."""
    if not secret:
        return secret
    _KNOWN.update(_forms(secret))
    return secret


def _forms(secret: str) -> set[str]:
    """What to hide for `secret`: a URL's password as written, decoded and %-encoded; any other secret itself.
    Never a string so short that hiding it would blank out ordinary words."""
    if "://" in secret:
        password = url_password(secret)
        forms = {password, unquote(password), quote(unquote(password), safe="")} if password else set()
    else:
        forms = {secret}
    return {f for f in forms if len(f) >= MIN_LENGTH}


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every remembered secret, every password of the URLs in `secrets` and the other `secrets`
    themselves replaced by `***`."""
    hidden = set(_KNOWN).union(*(_forms(s) for s in secrets if s))
    for secret in sorted(hidden, key=len, reverse=True):  # the longest first: a quoted form contains the plain one
        text = text.replace(secret, MASK)
    return text
