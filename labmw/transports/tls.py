"""TLS contexts for MLLP links, from the stdlib ``ssl`` module (TLS 1.2 or newer, certificates verified)."""

from __future__ import annotations

import ssl

from labmw.config import TlsSettings
from labmw.errors import ConfigError


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """Verify the server against ``ca_file`` (or the system CAs); present a client certificate if set."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(tls.cert_file or tls.ca_file, "tls", f"cannot load certificates: {exc}") from None
    return context


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """Serve ``cert_file``/``key_file``; with ``ca_file``, require and verify a client certificate."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert_file, tls.key_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.ca_file else ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(tls.cert_file, "tls", f"cannot load certificates: {exc}") from None
    return context
