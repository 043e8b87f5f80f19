"""Progress of a batch run: a progress bar on a terminal, JSON lines otherwise, and the summary.

On a terminal, a `rich <https://rich.readthedocs.io>`_ progress bar shows the
studies finished out of those found, the rate (studies per minute), the
elapsed time and the ETA; pauses (time window, PACS backoff) are printed
above it. Anywhere else (a pipe, a log collector, a cron job) every event is
one JSON object per line. The summary at the end counts what was found,
skipped (already done), retrieved, classified, not assessable by reason and
failed by reason.

Nothing here names a patient: events carry study UIDs and reasons only.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Task
    from rich.text import Text

__all__ = ["Progress", "Summary"]


@dataclass
class Summary:
    """What a batch run did."""

    found: int = 0
    #: Already done, by where the current result was found (``job store``, ``PACS``).
    skipped: Counter[str] = field(default_factory=Counter)
    retrieved: int = 0
    classified: int = 0
    not_assessable: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def finished(self) -> int:
        """Studies that have reached their end in this run."""
        return (sum(self.skipped.values()) + self.classified + sum(self.not_assessable.values())
                + sum(self.failed.values()))

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the ``summary`` event)."""
        return {"found": self.found, "skipped": sum(self.skipped.values()), "skipped_by": dict(self.skipped),
                "retrieved": self.retrieved, "classified": self.classified,
                "not_assessable": sum(self.not_assessable.values()), "not_assessable_by_reason":
                dict(self.not_assessable), "failed": sum(self.failed.values()), "failed_by_reason": dict(self.failed)}

    def lines(self) -> list[str]:
        """The summary for a person."""
        def by(counter: Counter[str]) -> str:
            return "".join(f"\n    {n:5d}  {reason}" for reason, n in counter.most_common())

        return [
            f"found:          {self.found}",
            f"skipped:        {sum(self.skipped.values())} (already done){by(self.skipped)}",
            f"retrieved:      {self.retrieved}",
            f"classified:     {self.classified}",
            f"not assessable: {sum(self.not_assessable.values())}{by(self.not_assessable)}",
            f"failed:         {sum(self.failed.values())}{by(self.failed)}",
        ]


class Progress:
    """Reports a run's events; thread-safe.

    Args:
        stream: Where to write (standard output by default).
        terminal: Progress bar (True) or JSON lines (False); None: a bar if
            ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.summary = Summary()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        self._started = time.monotonic()

    # ------------------------------------------------------------ lifecycle

    def start(self, what: str) -> None:
        """Begin the run (``what``: e.g. ``backfill from PACS main``)."""
        self._started = time.monotonic()
        if self.terminal:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                ProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress
            from rich.text import Text

            class RateColumn(ProgressColumn):
                """Studies per minute (rich's own speed column counts per second)."""

                def render(self, task: Task) -> Text:
                    speed = task.finished_speed or task.speed
                    return Text(f"{speed * 60:.1f}/min" if speed else "-/min")

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(what, total=None)
        else:
            self._emit({"event": "start", "what": what})

    def found(self, n: int) -> None:
        """The studies found (the bar's total)."""
        with self._lock:
            self.summary.found = n
            if self._bar is not None:
                self._bar.update(self._task, total=n)
            else:
                self._emit({"event": "found", "studies": n})

    def set_total(self, n: int) -> None:
        """The studies this run will finish (fewer than found with ``--limit``)."""
        with self._lock:
            if self._bar is not None:
                self._bar.update(self._task, total=n)
            else:
                self._emit({"event": "total", "studies": n})

    def finish(self) -> Summary:
        """End the run and print the summary."""
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                print("\n".join(self.summary.lines()), file=self.stream, flush=True)
            else:
                self._emit({"event": "summary", "seconds": round(time.monotonic() - self._started, 1),
                            **self.summary.to_json()})
        return self.summary

    # --------------------------------------------------------------- events

    def _emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), file=self.stream, flush=True)

    def note(self, message: str, **fields: Any) -> None:
        """Something the operator should see (a pause, a retry); ``fields`` go into the JSON event."""
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(message)
            else:
                self._emit({"event": "note", "message": message, **fields})

    def _advance(self, event: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
        else:
            self._emit({**event, "done": self.summary.finished, "of": self.summary.found})

    def skipped(self, study_uid: str, where: str) -> None:
        """A study with a current result already (``where``: ``job store`` or ``PACS``)."""
        with self._lock:
            self.summary.skipped[where] += 1
            self._advance({"event": "study", "study_uid": study_uid, "outcome": "skipped", "reason": where})

    def retrieved(self, study_uid: str, objects: int) -> None:
        """A study's objects are in the job store."""
        with self._lock:
            self.summary.retrieved += 1
            if self._bar is None:
                self._emit({"event": "retrieved", "study_uid": study_uid, "objects": objects})

    def classified(self, study_uid: str, label: str | None) -> None:
        """A study reached its result (and its outputs were delivered)."""
        with self._lock:
            self.summary.classified += 1
            self._advance({"event": "study", "study_uid": study_uid, "outcome": "classified", "label": label})

    def not_assessable(self, study_uid: str, reason: str) -> None:
        """A study ended not assessable."""
        with self._lock:
            self.summary.not_assessable[reason] += 1
            self._advance({"event": "study", "study_uid": study_uid, "outcome": "not_assessable",
                           "reason": reason})

    def failed(self, study_uid: str, reason: str) -> None:
        """A study failed (given up, or in error in the job store)."""
        with self._lock:
            self.summary.failed[reason] += 1
            self._advance({"event": "study", "study_uid": study_uid, "outcome": "failed", "reason": reason})

    def planned(self, study_uid: str, action: str, series: int) -> None:
        """``--dry-run``: what would be done with a study."""
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(f"{study_uid}: {action} ({series} series)")
            else:
                self._emit({"event": "plan", "study_uid": study_uid, "action": action, "series": series})
