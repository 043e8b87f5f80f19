"""How an exception may be shown in a reason, the job store or a log line: without its message.

An exception's message may quote what it failed on: a header value, or a path
of the spool or of the results, whose files are named by their SOP Instance
UID. Where patient data must not go (reasons, ``spectnode status``, logs
without ``logging.patient_data``), an exception is named by its class, with an
OSError's errno name or an SQLite error's code name, which are fixed texts;
its traceback keeps its frames (code) and drops the messages.
"""

from __future__ import annotations

import errno
import traceback
from typing import Final

__all__ = ["WITHHELD_MESSAGE", "exception_name", "traceback_without_messages"]

#: What a traceback shows instead of an exception's message.
WITHHELD_MESSAGE: Final = "(message withheld: it may quote patient data; logging.patient_data shows it)"


def exception_name(exc: BaseException) -> str:
    """``"FileNotFoundError [ENOENT]"``, ``"OperationalError [SQLITE_IOERR]"``, ``"ValueError"``."""
    code: str | None = None
    if isinstance(exc, OSError) and exc.errno is not None:
        code = errno.errorcode.get(exc.errno)
    else:
        code = getattr(exc, "sqlite_errorname", None)
    return f"{type(exc).__name__} [{code}]" if code else type(exc).__name__


def _class_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the exceptions it was raised from or while handling, as
    :func:`traceback.format_exception` writes them, but each ending in its class only (and the
    errno or SQLite code name), never its message."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ if current.__cause__ is not None else (
            None if current.__suppress_context__ else current.__context__)
    parts = []
    for item in reversed(chain):
        code = exception_name(item)[len(type(item).__name__):]
        parts.append("Traceback (most recent call last):\n" + "".join(traceback.format_tb(item.__traceback__))
                     + f"{_class_name(item)}{code} {WITHHELD_MESSAGE}")
    return "\n\nThe above exception led to the following exception:\n\n".join(parts)
