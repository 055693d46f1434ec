"""Why a TLS handshake failed, as one of a few fixed labels (service port and Raft port alike).

The label is safe as a metrics label (``raftsso_tls_handshake_failures_total{reason}``) and
as the key of a rate-limited refusal log; :func:`describe` gives the words an operator
reads in that log line. Both listeners (:mod:`raftsso.server` and
:mod:`raftsso.raft.peer_links`) classify through here, so one failure has one name.
"""

from __future__ import annotations

import ssl

LABELS: dict[str, str] = {
    "timeout": "handshake timeout",
    "no_client_certificate": "no client certificate",
    "bad_certificate": "certificate not accepted",
    "protocol": "not TLS, or a TLS version or cipher this port does not speak",
    "closed": "closed during the handshake",
    "tls_error": "TLS error",
    "other": "other error",
}
"""Every label :func:`handshake_failure_reason` returns, with its description."""


def handshake_failure_reason(exc: BaseException) -> str:
    """The label (a key of :data:`LABELS`) for the exception a failed handshake raised."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    # asyncio aborts a handshake that outlives ssl_handshake_timeout with this error.
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc).lower():
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "NO_CERTIFICATE" in text:
            return "no_client_certificate"
        if "CERTIFICATE" in text or "UNKNOWN_CA" in text or "BAD_SIGNATURE" in text:
            return "bad_certificate"
        if ("WRONG_VERSION" in text or "UNSUPPORTED_PROTOCOL" in text or "HTTP" in text
                or "PROTOCOL" in text or "NO_SHARED_CIPHER" in text):
            return "protocol"
        if "EOF" in text:
            return "closed"
        return "tls_error"
    # EOFError covers asyncio.IncompleteReadError.
    if isinstance(exc, ConnectionError | EOFError):
        return "closed"
    return "other"


def describe(label: str) -> str:
    """The words for ``label`` in a log line."""
    return LABELS.get(label, label)
