"""TLS policy: what each mode demands of a hop, the ``SSLContext`` it dials with, and the check
run again on the negotiated session.

Pure functions and constants only; no sockets. The relay transport applies them (DESIGN, "TLS
modes"). Baseline for every session: TLS 1.2 or newer, forward-secret AEAD ciphers on TLS 1.2
(ECDHE with AES-GCM or ChaCha20-Poly1305; every TLS 1.3 suite already is), key bits >= 128, SNI
the host dialled, the certificate verified against that name unless the mode accepts an
untrusted one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from blast.config import TLSMode
from blast.delivery import Status, TLSEvidence, Trust

__all__ = [
    "MIN_KEY_BITS",
    "RULES",
    "TLS12_CIPHERS",
    "ModeRules",
    "client_context",
    "evidence",
    "negotiated_problem",
    "trust_word",
]

MIN_KEY_BITS = 128
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_ACCEPTED_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})
_AEAD_MARKERS = ("GCM", "CHACHA20")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeRules:
    """What a TLS mode demands of the relay hop (one row of DESIGN's table)."""

    try_tls: bool  # issue STARTTLS when offered
    accept_untrusted: bool  # a certificate that fails verification is still used (untrusted)
    plaintext_fallback: bool  # when TLS cannot be had, send in plaintext anyway
    ask_requiretls: bool  # add REQUIRETLS to MAIL FROM when advertised (RFC 8689)
    no_tls_status: Status  # the outcome when TLS cannot be had and plaintext is not allowed


RULES: dict[TLSMode, ModeRules] = {
    TLSMode.NONE: ModeRules(
        try_tls=False,
        accept_untrusted=False,
        plaintext_fallback=True,
        ask_requiretls=False,
        no_tls_status=Status.SENT,
    ),
    TLSMode.OPPORTUNISTIC: ModeRules(
        try_tls=True,
        accept_untrusted=True,  # verified first; on failure a second, unverified connection
        plaintext_fallback=True,
        ask_requiretls=False,
        no_tls_status=Status.SENT,
    ),
    TLSMode.FORCED: ModeRules(
        try_tls=True,
        accept_untrusted=False,
        plaintext_fallback=False,
        ask_requiretls=True,
        no_tls_status=Status.DEFERRED,
    ),
    TLSMode.EXCLUSIVE: ModeRules(
        try_tls=True,
        accept_untrusted=False,
        plaintext_fallback=False,
        ask_requiretls=True,
        no_tls_status=Status.DROPPED_NO_TLS,
    ),
}


def client_context(*, verify: bool = True, ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A client ``SSLContext`` meeting the baseline.

    With ``verify`` the chain must lead to ``ca_file`` (only that file: a private relay CA) or,
    without one, to the system's trust store, and the certificate must name the host dialled.
    Without ``verify`` any certificate is accepted (opportunistic's second try, trust recorded as
    ``untrusted``). Build one per transport, not per connection: loading a trust store is slow.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.3 suites are all forward-secret AEAD already
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if verify:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def negotiated_problem(version: str | None, cipher: tuple[str, str, int] | None) -> str | None:
    """What is wrong with a negotiated session, or None when it meets the baseline.

    ``version`` is ``SSLObject.version()`` ("TLSv1.3"), ``cipher`` is ``SSLObject.cipher()``
    (name, protocol, secret bits). Run after every handshake: the context should already have
    refused anything weaker, and this proves it held.
    """
    if version not in _ACCEPTED_VERSIONS:
        return f"negotiated {version or 'no TLS version'}; TLS 1.2 or newer is required"
    if cipher is None:
        return "no cipher negotiated"
    name, _, bits = cipher
    if (bits or 0) < MIN_KEY_BITS:
        return f"cipher {name} has {bits} key bits; at least {MIN_KEY_BITS} are required"
    if version == "TLSv1.2" and not (
        name.startswith("ECDHE-") and any(marker in name for marker in _AEAD_MARKERS)
    ):
        return f"cipher {name} is not a forward-secret AEAD cipher"
    return None


def trust_word(*, encrypted: bool, verified: bool, certificate_checked: bool = True) -> Trust:
    """The trust word recorded with a session (none / anonymous / untrusted / verified)."""
    if not encrypted:
        return Trust.NONE
    if verified:
        return Trust.VERIFIED
    return Trust.UNTRUSTED if certificate_checked else Trust.ANONYMOUS


def evidence(
    host: str,
    ip: str | None,
    version: str | None = None,
    cipher: tuple[str, str, int] | None = None,
    trust: Trust = Trust.NONE,
) -> TLSEvidence:
    """The ``TLSEvidence`` for one session from what the socket reports."""
    return TLSEvidence(
        host=host,
        ip=ip,
        version=version,
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        trust=trust,
    )
