"""Logging of the running node, as the configuration's ``logging`` section says.

Two formats:

* ``text``: ``2025-01-01 12:00:00,000 INFO spectnode.receive: study 1.2.3 from CAMERA@10.0.0.5: stored ...``
* ``json``: one object per line with ``time``, ``level``, ``logger``,
  ``message`` and, when the record carries them, ``study_uid`` and
  ``calling_ae`` (stages pass them as ``extra``), for log collectors.

Messages name the study UID and the calling AE title in their text as well,
so the text format needs no extra columns.

Control characters in a message are escaped (``\n`` becomes ``\x0a``) in
both formats: values in messages come from the network (a UID with a newline
in it would otherwise forge a log line). Only a traceback keeps its newlines.

A traceback shows its frames and exception classes, but the exceptions'
messages only with ``logging.patient_data`` (a message may quote a header value
or a path named by a SOP Instance UID; see :mod:`spectnode.errors`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from spectnode.errors import traceback_without_messages

if TYPE_CHECKING:
    from types import TracebackType

    from spectnode.config import LoggingConfig

    _ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

__all__ = ["EscapingFormatter", "JsonLineFormatter", "configure_logging", "escape_control_characters"]

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes a LogRecord carries by itself; anything else came in through ``extra``.
_STANDARD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control_characters(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` (or ``\\uNNNN``), so it stays on one line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


class _TracebackFormatter(logging.Formatter):
    """Tracebacks without the exceptions' messages, unless ``patient_data`` (``logging.patient_data``)."""

    def __init__(self, fmt: str | None = None, *, patient_data: bool = False) -> None:
        super().__init__(fmt)
        self.patient_data = patient_data

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802 - logging.Formatter's name
        if self.patient_data or ei[1] is None:
            return super().formatException(ei)
        return traceback_without_messages(ei[1])

    def format(self, record: logging.LogRecord) -> str:
        # Another handler's formatter may have cached the full traceback in the record.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached


class EscapingFormatter(_TracebackFormatter):
    """The text format, with control characters in the message escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control_characters(record.message)
        return super().formatMessage(record)


class JsonLineFormatter(_TracebackFormatter):
    """One JSON object per record, with ``extra`` fields (``study_uid``, ``calling_ae`` ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape_control_characters(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and value is not None:
                value = value if isinstance(value, (int, float, bool)) else escape_control_characters(str(value))
                entry[key] = value
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
    handler.setFormatter(JsonLineFormatter(patient_data=settings.patient_data) if settings.format == "json"
                         else EscapingFormatter(_TEXT_FORMAT, patient_data=settings.patient_data))
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
