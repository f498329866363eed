"""Tracking tokens: HMAC-SHA256 signed, URL-safe, carrying only (run, recipient row, link index).

A token is ``base64url(payload || mac)`` without padding, where ``mac`` is the first 16 bytes of
HMAC-SHA256(key, payload) and the payload is::

    version (1 byte, 1) | kind (1 byte) | link index (2 bytes) | row id (8 bytes) | run id (UTF-8)

No contact attribute is in it: the row id is the ledger row, the run id names the run. A
*sensitive* segment gets aggregate tokens for opens and clicks: the row is the constant
``AGGREGATE`` so a hit counts for the run and the link, never for a person. Unsubscribe and
view-in-browser tokens always name the row (they have to act for that recipient).

The key comes from ``BLAST_TRACKING_KEY`` (``key_from_env``) or is generated once
(``generate_key``) and kept by the store; this module never stores it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "AGGREGATE",
    "ENV_KEY",
    "Token",
    "TokenError",
    "TokenKind",
    "generate_key",
    "key_from_env",
    "sign",
    "signer",
    "verify",
]

ENV_KEY = "BLAST_TRACKING_KEY"
VERSION = 1
AGGREGATE = (1 << 64) - 1  # the row id of an aggregate-only token (no recipient)
_MAC_BYTES = 16
_HEAD = 12  # version, kind, link (2), row (8)
_MAX_RUN = 200


class TokenKind(IntEnum):
    OPEN = 1
    CLICK = 2
    UNSUBSCRIBE = 3
    VIEW = 4


class TokenError(ValueError):
    """A token is malformed, truncated, forged or tampered with (never says which byte)."""


@dataclass(frozen=True, slots=True)
class Token:
    """What a verified token says. ``row_id`` is None for an aggregate-only token."""

    kind: TokenKind
    run_id: str
    row_id: int | None
    link: int = 0


def generate_key() -> bytes:
    """A fresh 32-byte random key, for the store to keep when BLAST_TRACKING_KEY is unset."""
    return secrets.token_bytes(32)


def key_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The key from ``BLAST_TRACKING_KEY`` (hex, base64url or raw text of >= 16 bytes), or None."""
    value = (environ if environ is not None else os.environ).get(ENV_KEY)
    if not value:
        return None
    for decode in (bytes.fromhex, lambda v: base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))):
        try:
            key = decode(value)
        except (ValueError, binascii.Error):
            continue
        if len(key) >= 16:
            return key
    key = value.encode()
    if len(key) < 16:
        raise ValueError(f"{ENV_KEY} is too short: use at least 16 bytes (32 random bytes, hex)")
    return key


def _head(kind: TokenKind, link: int) -> bytes:
    if not 0 <= link < 1 << 16:
        raise ValueError("link index out of range")
    return bytes((VERSION, kind)) + link.to_bytes(2, "big")


def _run_bytes(run_id: str) -> bytes:
    data = run_id.encode("utf-8")
    if not data or len(data) > _MAX_RUN:
        raise ValueError("run id must be 1 to 200 bytes")
    return data


def sign(key: bytes, kind: TokenKind, run_id: str, row_id: int | None, link: int = 0) -> str:
    """One token. ``row_id=None`` makes an aggregate-only token."""
    return signer(key, kind, run_id, link)(AGGREGATE if row_id is None else row_id)


def signer(key: bytes, kind: TokenKind, run_id: str, link: int = 0) -> Callable[[int], str]:
    """A fast ``row_id -> token`` function for one (key, kind, run, link): the hot path.

    Everything but the row is packed once; a call costs one HMAC and one base64 encoding.
    """
    head = _head(kind, link)
    run = _run_bytes(run_id)
    # HMAC with the key's inner and outer pads hashed once: a token costs two hash copies.
    block = hashlib.sha256(key).digest() if len(key) > 64 else key
    block = block.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    b64 = binascii.b2a_base64
    urlsafe = bytes.maketrans(b"+/", b"-_")

    def make(row_id: int) -> str:
        payload = head + row_id.to_bytes(8, "big") + run
        h = inner.copy()
        h.update(payload)
        o = outer.copy()
        o.update(h.digest())
        raw = b64(payload + o.digest()[:_MAC_BYTES], newline=False)
        return raw.translate(urlsafe).rstrip(b"=").decode()

    return make


def verify(key: bytes, token: str) -> Token:
    """Check a token's signature in constant time and return what it says, or raise TokenError."""
    if not isinstance(token, str) or not 0 < len(token) <= 400:
        raise TokenError("invalid token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error):
        raise TokenError("invalid token") from None
    if len(raw) < _HEAD + 1 + _MAC_BYTES:
        raise TokenError("invalid token")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.digest(key, payload, "sha256")[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        raise TokenError("invalid token")
    # Re-encoding must give the same text: no alternative spellings of one token.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        raise TokenError("invalid token")
    if payload[0] != VERSION or payload[1] not in TokenKind._value2member_map_:
        raise TokenError("invalid token")
    row = int.from_bytes(payload[4:12], "big")
    try:
        run_id = payload[12:].decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("invalid token") from None
    return Token(
        kind=TokenKind(payload[1]),
        run_id=run_id,
        row_id=None if row == AGGREGATE else row,
        link=int.from_bytes(payload[2:4], "big"),
    )
