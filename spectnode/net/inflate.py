"""Inflating a deflated dataset (Deflated Explicit VR Little Endian) with a size limit.

A deflate stream compresses zeros about 1000:1, so 1 MB on the wire can be
gigabytes inflated (measured against spectnode 0.1.0: 4.4 GB of memory and
28 s for one such object). The limit is checked while inflating, one bounded
chunk at a time, so no more than the limit plus one chunk is ever held.
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["InflatedTooLarge", "inflate_bounded"]

_CHUNK: Final = 1 << 20


class InflatedTooLarge(ValueError):
    """The inflated data would exceed the limit."""


def inflate_bounded(data: bytes, limit: int) -> bytes:
    """Inflate raw deflate ``data`` (no zlib header, as PS3.5 A.5 has it), refusing more than ``limit`` bytes.

    Raises:
        InflatedTooLarge: As soon as the output passes ``limit`` bytes.
        ValueError: If ``data`` is not a valid deflate stream, or is cut short.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        while pending:
            out += inflater.decompress(pending, _CHUNK)
            if len(out) > limit:
                raise InflatedTooLarge(f"the deflated dataset inflates to more than {limit} bytes")
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        # Input all consumed: what is left in the inflater is at most one window (32 KiB).
        out += inflater.flush(_CHUNK)
        if len(out) > limit:
            raise InflatedTooLarge(f"the deflated dataset inflates to more than {limit} bytes")
        if not inflater.eof:  # zlib inflates a cut stream quietly, as far as it goes
            raise ValueError("the deflated dataset cannot be inflated: the deflate stream ends before its "
                             "final block (truncated)")
        if inflater.unused_data.strip(b"\0"):  # a zero byte may pad the stream to even length
            raise ValueError(f"{len(inflater.unused_data)} byte(s) after the end of the deflate stream are not "
                             "part of it")
    except zlib.error as exc:
        raise ValueError(f"the deflated dataset cannot be inflated: {exc}") from None
    return bytes(out)
