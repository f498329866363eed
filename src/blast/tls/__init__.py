"""TLS policy for every SMTP hop: per-mode rules, client contexts, post-handshake checks."""

from __future__ import annotations

from blast.tls.policy import (
    MIN_KEY_BITS,
    RULES,
    TLS12_CIPHERS,
    ModeRules,
    client_context,
    evidence,
    negotiated_problem,
    trust_word,
)

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
