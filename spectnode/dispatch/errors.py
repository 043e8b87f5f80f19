"""The error every sender raises: :class:`DispatchError`, with the reason and whether trying again can help."""

from __future__ import annotations

__all__ = ["DispatchError"]


class DispatchError(Exception):
    """Delivery to a destination failed.

    Attributes:
        reason: What went wrong, for logs, ``spectnode status`` and the outbox.
        retryable: False when trying again cannot help without someone
            changing something (a result file is missing, the destination needs
            a sender that was not recorded, the peer accepts no presentation
            context for the object's SOP class); the outbox dead-letters such
            items at once, with the reason, instead of retrying them.
        peer_unreachable: True when no DICOM association could be opened at
            all (connection refused, timeout, rejected); other items for the
            same destination would fail the same way right now.
        rejected_for_now: The peer rejected the association as transient
            (A-ASSOCIATE-RJ result 2), e.g. at its limit of associations.
        asked_at: For a rejected association, when it was requested
            (``time.monotonic()``), if the sender knows; the peer decided then,
            and on a loaded machine the answer can be read much later.
    """

    def __init__(self, reason: str, *, retryable: bool = True, peer_unreachable: bool = False,
                 rejected_for_now: bool = False, asked_at: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.peer_unreachable = peer_unreachable
        self.rejected_for_now = rejected_for_now
        self.asked_at = asked_at
