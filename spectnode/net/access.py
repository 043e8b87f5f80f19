"""Who may open a connection to the node, and how many at a time.

Both checks run when a TCP connection is accepted, in the server's accept
loop, before any byte of it is read: a peer that is not allowed, or one that
already holds its share of connections, costs the node one ``accept`` and one
``close``, never a thread or a read. That is what keeps one misbehaving or
hostile host (a port scanner, a stuck sender, a flood of half-open
connections) from taking every association slot from the cameras.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable

__all__ = ["AddressAllowList", "ConnectionLimiter", "ThrottledLog", "parse_network"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Matches any address in an allow-list.
ANY_ADDRESS: Final = "*"


def parse_network(entry: str) -> IPNetwork:
    """An allow-list entry (``10.1.2.3``, ``10.1.0.0/16``, ``fd00::/8``) as a network.

    Host bits set in a CIDR entry (``10.1.2.3/16``) are an error: the entry
    would not mean what it says.

    Raises:
        ValueError: If ``entry`` is not an IP address or a CIDR network.
    """
    return ipaddress.ip_network(entry.strip(), strict=True)


class AddressAllowList:
    """IP addresses and CIDR networks allowed to connect; ``"*"`` allows any.

    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.5``, what a dual-stack socket
    reports) are matched as the IPv4 address they carry.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        entries = [e.strip() for e in entries]
        self.allows_any = ANY_ADDRESS in entries
        self.networks: tuple[IPNetwork, ...] = tuple(parse_network(e) for e in entries if e != ANY_ADDRESS)

    def allows(self, address: str) -> bool:
        """Whether a peer at ``address`` may connect (False for an unparseable address)."""
        if self.allows_any:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def __str__(self) -> str:
        return ANY_ADDRESS if self.allows_any else ", ".join(str(n) for n in self.networks)


class ConnectionLimiter:
    """Counts open connections, in total and per peer address, against limits.

    :meth:`acquire` is called for each accepted connection and :meth:`release`
    when its association has ended, whatever the way it ended.
    """

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self._lock = threading.Lock()
        self._by_peer: dict[str, int] = {}
        self._total = 0

    def acquire(self, address: str) -> str | None:
        """Take a slot for a connection from ``address``; return why not, or None if taken."""
        with self._lock:
            if self._total >= self.max_total:
                return f"the node already holds its maximum of {self.max_total} connections"
            held = self._by_peer.get(address, 0)
            if held >= self.max_per_peer:
                return f"{address} already holds its maximum of {self.max_per_peer} connections"
            self._by_peer[address] = held + 1
            self._total += 1
            return None

    def release(self, address: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            held = self._by_peer.get(address, 0)
            if held <= 1:
                self._by_peer.pop(address, None)
            else:
                self._by_peer[address] = held - 1
            self._total = max(0, self._total - 1)

    @property
    def total(self) -> int:
        """Connections open now."""
        with self._lock:
            return self._total


class ThrottledLog:
    """Logs a repeated refusal once per key and interval, with the count since.

    A flood of refused connections must not become a flood of log lines (it
    would fill the disk the spool lives on).
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log ``message % args`` for ``key`` now, unless it was logged less than the interval ago."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-float("inf"), 0))
            if now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # many distinct peers: forget the old keys
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self._interval}
        if suppressed:
            message += f" ({suppressed} more like it in the last {self._interval:g} s not logged)"
        self._logger.warning(message, *args)
