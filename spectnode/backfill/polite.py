"""Politeness towards a PACS: a time window, a rate limit and a shared backoff.

A backfill may ask a production PACS for thousands of studies. These three
keep it from being a burden (``pacs[]`` keys of the configuration):

* :class:`TimeWindow` (``window: "19:00-07:00"``): retrieves start only inside
  the window; outside it the caller sleeps until it opens again;
* :class:`RateLimiter` (``studies_per_minute``): retrieve starts are spaced
  evenly, at most that many a minute;
* :class:`Backoff` (``retry_base_seconds`` .. ``retry_max_seconds``): shared by
  every worker of a run, so a PACS that refuses, fails or does not answer
  gets *no* request from anyone until the pause is over, and the pause doubles
  with each further failure; one success ends it.

Everything takes a clock and a sleep function, so tests run on a fake clock.
Only the standard library is used (the configuration imports this module to
check ``window``).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["Backoff", "RateLimiter", "TimeWindow", "parse_window"]

_WINDOW: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


def parse_window(text: str) -> tuple[dt.time, dt.time]:
    """``"HH:MM-HH:MM"`` as (start, end) local times; the end may be earlier (over midnight).

    Raises:
        ValueError: If ``text`` is not two times of day, or both are equal
            (a window of no time, or of all of it: leave ``window`` null instead).
    """
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM (e.g. 19:00-07:00)")
    h1, m1, h2, m2 = (int(v) for v in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r}: hours are 0-23 and minutes 0-59")
    start, end = dt.time(h1, m1), dt.time(h2, m2)
    if start == end:
        raise ValueError(f"{text!r} starts and ends at the same time; leave window null to run at any time")
    return start, end


@dataclass(frozen=True)
class TimeWindow:
    """A daily window of local time in which work may start.

    Args:
        start, end: The window's bounds; ``end < start`` spans midnight.
    """

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str | None) -> TimeWindow | None:
        """The window of a ``window`` key (None for null)."""
        return None if text is None else cls(*parse_window(text))

    def contains(self, moment: dt.datetime) -> bool:
        """Whether ``moment`` (local time) is inside the window (start included, end excluded)."""
        now = moment.time()
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def seconds_until_open(self, moment: dt.datetime) -> float:
        """0 inside the window, else the seconds until it next opens."""
        if self.contains(moment):
            return 0.0
        opening = moment.replace(hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0)
        if opening <= moment:
            opening += dt.timedelta(days=1)
        return (opening - moment).total_seconds()

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class RateLimiter:
    """At most ``per_minute`` starts a minute, spaced evenly (thread-safe).

    Args:
        per_minute: Starts per minute (> 0).
        clock, sleep: Monotonic seconds and a sleep (tests pass fake ones).
    """

    def __init__(self, per_minute: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be greater than 0")
        self.interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None

    def acquire(self) -> float:
        """Wait for the next free slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = now if self._next is None else max(now, self._next)
            self._next = start + self.interval
        waited = start - now
        if waited > 0:
            self._sleep(waited)
        return waited


class Backoff:
    """One pause for every worker of a run, doubling with each failure (thread-safe).

    Args:
        base_s: The first pause.
        max_s: The longest pause.
        clock, sleep: Monotonic seconds and a sleep (tests pass fake ones).
    """

    def __init__(self, base_s: float, max_s: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._failures = 0
        self._until = 0.0

    @property
    def failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def failure(self) -> float:
        """Record a failure; returns the pause now in force (from now)."""
        with self._lock:
            self._failures += 1
            pause = min(self.max_s, self.base_s * 2 ** (self._failures - 1))
            self._until = max(self._until, self._clock() + pause)
            return pause

    def success(self) -> None:
        """The PACS answered: no more pause."""
        with self._lock:
            self._failures = 0
            self._until = 0.0

    def wait(self, stopping: threading.Event | None = None) -> float:
        """Sleep while a pause is in force; returns the seconds slept."""
        slept = 0.0
        while True:
            with self._lock:
                left = self._until - self._clock()
            if left <= 0 or (stopping is not None and stopping.is_set()):
                return slept
            step = min(left, 1.0)
            self._sleep(step)
            slept += step
