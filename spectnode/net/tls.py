"""DICOM TLS (PS3.15 Annex B, the "BCP 195" secure transport profiles) contexts.

The server context presents the node's certificate and, with mutual
authentication, demands a client certificate signed by one of the configured
CAs. The client context (for ``dicom`` destinations) verifies the peer's
certificate against the configured CAs, or the system's when none are given,
and presents the node's certificate when one is configured (Orthanc's DICOM
TLS, for one, requires a client certificate by default).

Both refuse anything older than TLS 1.2, which PS3.15 B.9 (BCP 195) requires.
Host names are not checked against the peer's certificate: DICOM peers are
configured by address, and their certificates often name a host name only
(PS3.15 leaves peer identity to the certificate's trust chain).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["client_context", "server_context"]


def server_context(certificate: Path, private_key: Path, ca_certificates: Path | None,
                   require_client_certificate: bool) -> ssl.SSLContext:
    """The TLS context of the storage SCP.

    Raises:
        OSError, ssl.SSLError: If a file cannot be read or does not hold what it should.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(private_key))
    if ca_certificates is not None:
        context.load_verify_locations(cafile=str(ca_certificates))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else (
        ssl.CERT_OPTIONAL if ca_certificates is not None else ssl.CERT_NONE)
    return context


def client_context(ca_certificates: Path | None, certificate: Path | None = None,
                   private_key: Path | None = None) -> ssl.SSLContext:
    """The TLS context of a C-STORE SCU towards a destination.

    Raises:
        OSError, ssl.SSLError: If a file cannot be read or does not hold what it should.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_certificates is not None:
        context.load_verify_locations(cafile=str(ca_certificates))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None and private_key is not None:
        context.load_cert_chain(str(certificate), str(private_key))
    return context
