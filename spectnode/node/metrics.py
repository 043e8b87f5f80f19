"""Operations: a Prometheus ``/metrics`` endpoint and a ``/healthz`` check (``metrics:``, off by default).

One HTTP server (standard library, on loopback unless configured otherwise)
serves both:

* ``/metrics``: the Prometheus text format (prometheus-client), with
  ``spectnode_studies{state}`` (studies by state, i.e. by outcome once they
  ended), ``spectnode_stage_seconds{stage}`` (a histogram of each stage's
  work per study, receive included: one C-STORE), ``spectnode_outbox_items{state}``,
  ``spectnode_outbox_oldest_undelivered_age_seconds``,
  ``spectnode_disk_free_bytes`` and ``spectnode_disk_min_free_bytes``,
  ``spectnode_cstore_answers_total{status}`` and
  ``spectnode_refused_associations_total{reason}`` (``calling_ae_title``,
  ``called_ae_title``, ``address``, ``limit``, ``tls``, ``stalled``, ``pdu``,
  ``size``),
  ``spectnode_healthy``, and with the audit trail on
  ``spectnode_audit_messages_total{outcome}`` (``sent``, ``dropped``),
  ``spectnode_audit_messages_pending`` (waiting for the syslog server; once the
  queue is full new messages are dropped) and ``spectnode_audit_server_down``
  (1 while the last send failed). Job-store figures are read when scraped.
* ``/healthz``: ``200 {"status": "ok"}``, or ``503 {"status": "degraded",
  "problems": [...]}`` when the outbox is stuck (its oldest undelivered item
  is older than ``metrics.outbox_stuck_seconds``, or an item is a dead
  letter), the disk is below ``storage.min_free_bytes``, or a stage is
  failing (its last step raised, or it waits for disk space).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spectnode.store import ITEM_STATES, STATES, UNDELIVERED_STATES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from spectnode.audit.syslog import SyslogSender
    from spectnode.node.diskspace import DiskSpace
    from spectnode.peer import Peer
    from spectnode.store import JobStore

__all__ = ["NodeMetrics", "MetricsServer"]

_log = logging.getLogger("spectnode.metrics")

#: Stage latency buckets, in seconds: a C-STORE takes milliseconds, a classification seconds.
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class NodeMetrics:
    """The node's metrics and health, fed by the stages and read from the job store when scraped.

    Args:
        store: The job store.
        disk: The data directory's free space.
        outbox_stuck_seconds: ``metrics.outbox_stuck_seconds``.
        failing_stages: Returns the names of stages whose last step raised.
        clock: Epoch seconds (the job store's clock).
        audit: The audit trail's sender, when the audit trail is on.
    """

    def __init__(self, store: JobStore, disk: DiskSpace, outbox_stuck_seconds: float,
                 failing_stages: Callable[[], list[str]], clock: Callable[[], float],
                 audit: SyslogSender | None = None) -> None:
        self.store = store
        self.audit = audit
        self.disk = disk
        self.outbox_stuck_seconds = outbox_stuck_seconds
        self.failing_stages = failing_stages
        self.clock = clock
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram("spectnode_stage_seconds", "Seconds a stage worked on one unit (a C-STORE, "
                                       "a study)", ["stage"], buckets=_BUCKETS, registry=self.registry)
        self.answers = Counter("spectnode_cstore_answers", "C-STORE requests answered, by status",
                               ["status"], registry=self.registry)
        self.refused = Counter("spectnode_refused_associations", "Connections and associations refused, by reason",
                               ["reason"], registry=self.registry)
        self.registry.register(_StoreCollector(self))

    # ----------------------------------------------------------------- feeding

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One unit of work of ``stage`` took ``seconds``."""
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def answered(self, _peer: Peer, status: int, _outcome: str, _study_uid: str | None, seconds: float) -> None:
        """A C-STORE was answered (the receive stage's ``on_answer``)."""
        self.answers.labels(status=f"0x{status:04X}").inc()
        self.observe_stage("receive", seconds)

    def refused_association(self, _peer: Peer, reason: str) -> None:
        """A connection or association was refused (the receive stage's ``on_refused``)."""
        self.refused.labels(reason=reason).inc()

    # ------------------------------------------------------------------ health

    def oldest_undelivered_age(self) -> float:
        """Seconds since the oldest undelivered outbox item (pending, sending, awaiting commitment) was queued
        (0 if none)."""
        rows = self.store.db.read("SELECT MIN(created_at) AS t FROM outbox_items"
                                  " WHERE state IN ('pending', 'sending', 'awaiting_commitment')")
        oldest = rows[0]["t"] if rows else None
        return max(0.0, self.clock() - float(oldest)) if oldest is not None else 0.0

    def problems(self) -> list[str]:
        """Why the node is degraded; empty when healthy."""
        found = []
        age = self.oldest_undelivered_age()
        if age > self.outbox_stuck_seconds:
            found.append(f"outbox stuck: the oldest undelivered item was queued {age:.0f} s ago "
                         f"(metrics.outbox_stuck_seconds {self.outbox_stuck_seconds:g})")
        dead = self.store.outbox.counts().get("dead", 0)
        if dead:
            found.append(f"outbox: {dead} dead letter(s) (spectnode status lists them)")
        free = self.disk.free_bytes()
        if self.disk.below_floor():
            found.append(f"disk low: {free} bytes free, below storage.min_free_bytes ({self.disk.min_free_bytes})")
        for stage in self.disk.waiting_stages():
            found.append(f"{stage} stage waits for disk space")
        for stage in self.failing_stages():
            found.append(f"{stage} stage failing: its last step raised (see the log)")
        return found


class _StoreCollector(Collector):
    """Figures read from the job store and the disk at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics
        studies = GaugeMetricFamily("spectnode_studies", "Studies by state (by outcome once ended)",
                                    labels=["state"])
        counts = metrics.store.counts_by_state()
        for state in STATES:
            studies.add_metric([state], counts.get(state, 0))
        yield studies
        items = GaugeMetricFamily("spectnode_outbox_items", "Outbox items by state", labels=["state"])
        item_counts = metrics.store.outbox.counts()
        for state in ITEM_STATES:
            items.add_metric([state], item_counts.get(state, 0))
        yield items
        yield GaugeMetricFamily("spectnode_outbox_depth",
                                "Outbox items not yet delivered (pending, sending or awaiting commitment)",
                                value=sum(item_counts.get(s, 0) for s in UNDELIVERED_STATES))
        yield GaugeMetricFamily("spectnode_outbox_oldest_undelivered_age_seconds",
                                "Age of the oldest undelivered outbox item (0 if none)",
                                value=metrics.oldest_undelivered_age())
        free = metrics.disk.free_bytes()
        if free is not None:
            yield GaugeMetricFamily("spectnode_disk_free_bytes", "Free bytes on the data directory's file system",
                                    value=free)
        yield GaugeMetricFamily("spectnode_disk_min_free_bytes", "storage.min_free_bytes",
                                value=metrics.disk.min_free_bytes)
        if metrics.audit is not None:
            sent_and_dropped = CounterMetricFamily("spectnode_audit_messages", "Audit messages sent to the syslog "
                                                   "server, or dropped", labels=["outcome"])
            sent_and_dropped.add_metric(["sent"], metrics.audit.sent)
            sent_and_dropped.add_metric(["dropped"], metrics.audit.dropped)
            yield sent_and_dropped
            yield GaugeMetricFamily("spectnode_audit_messages_pending", "Audit messages waiting for the syslog server",
                                    value=metrics.audit.pending())
            yield GaugeMetricFamily("spectnode_audit_server_down", "1 while the last send to the syslog server "
                                    "failed (the sender waits to try again)", value=1 if metrics.audit.down else 0)
        yield GaugeMetricFamily("spectnode_healthy", "1 when /healthz says ok, 0 when degraded",
                                value=0 if metrics.problems() else 1)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(self.server.metrics.registry))
            elif path == "/healthz":
                problems = self.server.metrics.problems()
                body = {"status": "degraded", "problems": problems} if problems else {"status": "ok"}
                self._answer(503 if problems else 200, "application/json", json.dumps(body).encode("utf-8"))
            else:
                self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")
        except Exception as exc:  # noqa: BLE001 - a broken scrape must not end the server
            _log.exception("metrics request %s failed", path)
            self._answer(500, "text/plain; charset=utf-8", f"{type(exc).__name__}\n".encode())

    def _answer(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        _log.debug("metrics: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: NodeMetrics


class MetricsServer:
    """The ``/metrics`` and ``/healthz`` HTTP server, in a background thread.

    Args:
        metrics: What it serves.
        bind_address: ``metrics.bind_address``.
        port: ``metrics.port`` (0: a free one; see :attr:`port`).
    """

    def __init__(self, metrics: NodeMetrics, bind_address: str, port: int) -> None:
        self._server = _Server((bind_address, port), _Handler)
        self._server.metrics = metrics
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()
        _log.info("metrics on http://%s:%d/metrics, health on /healthz", self._server.server_address[0], self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
