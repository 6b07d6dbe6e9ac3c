"""Keep credentials out of httpx's and httpcore's own log lines.

httpx logs `HTTP Request: GET <full URL>` at INFO, and httpcore logs every response's headers
at DEBUG (a `Location` to presigned storage among them): a presigned URL's query string is a
credential. A filter on those loggers rewrites each record before any handler sees it.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["HTTP_LOGGERS", "RedactingFilter", "install_http_log_redaction", "redact_secrets"]

# httpcore logs through one logger per module (httpcore/_sync/*.py); a filter on a parent
# logger does not see its children's records, so each is named.
HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
# a query string, up to where a URL in a log line or a bytes repr ends
_QUERY = re.compile(r"\?[^\s'\"<>\])]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")
_PERSONAL_KEY = re.compile(r"ph[xa]_[A-Za-z0-9_\-]+")
_installed = threading.Lock()


def redact_secrets(text: str) -> str:
    """`text` with query strings, bearer tokens and personal API keys replaced."""
    text = _QUERY.sub("?[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _PERSONAL_KEY.sub("[redacted]", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with `redact_secrets`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep only its template
            message = str(record.msg)
        record.msg = redact_secrets(message)
        record.args = None
        return True


def install_http_log_redaction() -> None:
    """Put one `RedactingFilter` on each of httpx's and httpcore's loggers (idempotent)."""
    with _installed:
        for name in HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                logger.addFilter(RedactingFilter())
