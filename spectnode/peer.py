"""The remote application entity of an association.

Shared by the receive stage (who sent a study), the job store (it keeps the
sender of each study) and the senders (a ``sender`` destination returns
results to it), so it belongs to none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Peer"]


@dataclass(frozen=True)
class Peer:
    """The remote application entity of an association: who sent a study, and
    where results go back to (a ``sender`` destination)."""

    #: Calling AE title of the peer (stripped).
    ae_title: str
    #: IP address the association came from.
    address: str
    #: TCP port of the peer's side of the association (not its listening port).
    port: int
    #: Called AE title the peer asked for (ours).
    called_ae_title: str = ""

    @classmethod
    def from_association(cls, assoc: Any) -> Peer:
        """The remote side of a pynetdicom ``Association`` (in an event handler:
        ``Peer.from_association(event.assoc)``): its requestor in an SCP, its
        acceptor in an association this node requested (a PACS sending objects
        back on a C-GET)."""
        remote, local = (assoc.acceptor, assoc.requestor) if assoc.is_requestor else (assoc.requestor, assoc.acceptor)
        return cls(
            ae_title=str(remote.ae_title).strip(),
            address=str(remote.address),
            port=int(remote.port or 0),
            called_ae_title=str(local.ae_title).strip(),
        )
