"""JSON logs: one event per line on stderr, the same fields from every service.

    {"timestamp": "2026-11-26T10:41:03.512+00:00", "level": "INFO", "service": "watcher",
     "logger": "dropbatch.watcher", "message": "admitted", "tenant": "acme", "batch_id": "batch_…"}

Fields passed with ``extra=`` (tenant, batch_id, job, …) become top-level keys.
Callers never pass secrets in ``extra``; nothing here could tell one from a name.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

# Libraries that narrate every request at INFO; their warnings still come through.
_CHATTY = ("botocore", "boto3", "aiobotocore", "aiohttp", "urllib3", "s3transfer", "filelock")
_HANDLER_NAME = "dropbatch.json"


class _Formatter(JsonFormatter):
    def process_log_record(self, log_record: dict) -> dict:
        # Timestamp first, so a tail of the log reads in time order at a glance.
        return {"timestamp": log_record.pop("timestamp", None), **log_record}


def json_formatter(service: str) -> logging.Formatter:
    return _Formatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"service": service},
        # `timestamp=True` is ISO-8601 in UTC, from the record's own creation time.
        timestamp=True,
        json_ensure_ascii=False,
    )


def configure_logging(service: str, level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record of this process, as JSON, to ``stream`` (stderr by default).

    Safe to call again (a command that re-configures for its own service name):
    the previous handler is replaced, not doubled.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter(service))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Only our own earlier handler goes; others (a test runner's capture) stay.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
