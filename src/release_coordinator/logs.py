"""How ``release-coordinator`` logs: :func:`configure_logging` (text or one JSON object per
line, ``serve --log-format``) and :class:`JsonFormatter`. Needs no extra (the CLI sets logging
up before it knows whether the server's modules are installed)."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["LOG_FORMAT", "JsonFormatter", "configure_logging"]


#: The access record's fields a JSON line carries (the raw path is left out: the route says it).
_ACCESS_FIELDS = ("request_id", "method", "route", "status", "duration_ms", "client")


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object on one line: ``time`` (UTC, ISO 8601 with milliseconds),
    ``level``, ``logger``, ``message``, ``exception`` when there is one; an access line
    (:class:`AccessLog`'s) also has ``request_id``, ``method``, ``route``, ``status``,
    ``duration_ms`` and ``client``, and its message is ``METHOD ROUTE STATUS``."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        route = getattr(record, "route", None)
        if isinstance(route, str):
            for field in _ACCESS_FIELDS:
                entry[field] = getattr(record, field, None)
            if isinstance(entry["duration_ms"], float):
                entry["duration_ms"] = round(entry["duration_ms"], 3)
            shown = "-" if entry["status"] is None else entry["status"]
            entry["message"] = f"{entry['method']} {route} {shown}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


#: The text format of ``serve``'s log lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int, log_format: str = "text") -> None:
    """The root logger as ``release-coordinator serve`` sets it: ``level``, to standard error,
    as text (:data:`LOG_FORMAT`) or one JSON object per line (:class:`JsonFormatter`)."""
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=LOG_FORMAT)
