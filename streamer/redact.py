"""Credential redaction: no secret of a source or broker URL reaches a log line, metric or error.

``redact_url("rtsp://admin:hunter2@cam1/stream")`` → ``"rtsp://***@cam1/stream"``; query
parameters whose name says secret (``token``, ``password``, ``key``, ``sig``, ...) keep their name
and lose their value: ``https://cdn/x.m3u8?token=abc`` → ``https://cdn/x.m3u8?token=***``.
:func:`redact_secrets` also covers a bare ``user:pass@host`` (a mistyped URL without ``://``).
:class:`RedactingFilter` applies :func:`redact_url` to every record of a logging handler, so
FFmpeg errors that echo the URL are covered too.
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@  — userinfo is everything up to the first "@" before the host part.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
# ?token=VALUE / &password=VALUE: parameters whose name marks a secret.
_SECRET_PARAM = re.compile(
    r"(?P<lead>[?&;](?P<name>[A-Za-z0-9_.\-]*(?:token|passw(?:or)?d|pwd|pass|secret|key|sig|signature|auth|"
    r"credential)[A-Za-z0-9_.\-]*)=)(?P<value>[^&#\s'\"]+)", re.IGNORECASE)
# user:pass@ without a scheme in front (``mqtt//u:p@h``, ``u:p@h/s``).
_BARE_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?:[^\s/@:'\"]+):(?:[^\s/@'\"]+)@")
REDACTED = "***"
SECRET_KEYS = frozenset({"password", "passwd", "token", "secret", "api_key", "key"})
"""Config keys whose values are secrets whatever they hold: never echoed in an error."""


def redact_url(text: str) -> str:
    """``text`` with the user info of every ``scheme://user:pass@host`` URL replaced by ``***``
    and the values of secret-named query parameters (``?token=...``) replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('lead')}{REDACTED}", text)


def redact_secrets(text: str) -> str:
    """:func:`redact_url`, plus ``user:pass@`` not preceded by a scheme: for echoing user input
    (config values, command-line specs) that may be a malformed URL."""
    return _BARE_USERINFO.sub(f"{REDACTED}@", redact_url(text))


def is_secret_key(key: str) -> bool:
    """Whether a config key holds a secret (``password``, ``token``, ``*_password``, ...)."""
    key = key.lower()
    return key in SECRET_KEYS or key.endswith(("_password", "_token", "_secret"))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL credentials in the formatted message of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if redact_url(str(exc)) != str(exc):
                # The traceback would print the URL: keep the type, drop the text.
                record.exc_text = f"{type(exc).__name__}: {redact_url(str(exc))}"
                record.exc_info = None
        return True
