"""Credential redaction: no ``user:pass@`` of a source or broker URL reaches a log line or metric.

``redact_url("rtsp://admin:hunter2@cam1/stream")`` → ``"rtsp://***@cam1/stream"``.
:class:`RedactingFilter` applies the same rewrite to every record of a logging handler, so
FFmpeg errors that echo the URL are covered too.
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@  — userinfo is everything up to the first "@" before the host part.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
REDACTED = "***"


def redact_url(text: str) -> str:
    """``text`` with the user info of every ``scheme://user:pass@host`` URL replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


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
