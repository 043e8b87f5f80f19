"""The A-ASSOCIATE-RJ an association request got, whichever pynetdicom handled first.

A peer that closes the connection right after its A-ASSOCIATE-RJ (DCMTK, Orthanc)
may have pynetdicom handle the close first and call the association aborted;
the rejection that came is still the reason. Used by every SCU of the node
(dispatch's C-STORE, backfill's query/retrieve).
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RJ

__all__ = ["RejectionWatch"]


class RejectionWatch:
    """Pass :attr:`handler` with the association request's event handlers, then ask :meth:`rejection`."""

    def __init__(self) -> None:
        self._received: list[A_ASSOCIATE_RJ] = []
        #: The event handler that keeps a received A-ASSOCIATE-RJ PDU.
        self.handler: tuple[Any, Any] = (evt.EVT_PDU_RECV, self._on_pdu)

    def _on_pdu(self, event: Any) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            self._received.append(event.pdu)

    def rejection(self, assoc: Any) -> Any | None:
        """The rejection of ``assoc`` (with ``result``, ``result_str``, ``source_str``, ``reason_str``), or None."""
        if assoc.is_rejected:
            return assoc.acceptor.primitive
        return self._received[0] if self._received else None
