"""Logging of the running node, as the configuration's ``logging`` section says.

Two formats:

* ``text``: ``2025-01-01 12:00:00,000 INFO spectnode.receive: study 1.2.3 from CAMERA@10.0.0.5: stored ...``
* ``json``: one object per line with ``time``, ``level``, ``logger``,
  ``message`` and, when the record carries them, ``study_uid`` and
  ``calling_ae`` (stages pass them as ``extra``), for log collectors.

Messages name the study UID and the calling AE title in their text as well,
so the text format needs no extra columns.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Final

from spectnode.config import LoggingConfig

__all__ = ["JsonLineFormatter", "configure_logging"]

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes a LogRecord carries by itself; anything else came in through ``extra``.
_STANDARD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, with ``extra`` fields (``study_uid``, ``calling_ae`` ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and value is not None:
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: LoggingConfig) -> logging.Handler:
    """Send the ``spectnode`` loggers' records to stderr or the configured file.

    pynetdicom's own loggers are kept at WARNING (at DEBUG they print every
    PDU). Calling this again replaces the handler installed before.

    Returns:
        The installed handler.
    """
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if settings.format == "json" else logging.Formatter(_TEXT_FORMAT))
    for name, level in (("spectnode", settings.level), ("pynetdicom", logging.WARNING)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_spectnode_node_handler", False)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    handler._spectnode_node_handler = True  # type: ignore[attr-defined]
    return handler
