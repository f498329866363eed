"""TLS policy: per-mode rules, client contexts, and the post-handshake check (pure)."""

from __future__ import annotations

import ssl

import pytest

from blast.config import TLSMode
from blast.delivery import Status, Trust
from blast.tls import RULES, client_context, evidence, negotiated_problem, trust_word
from tests.smtpserver import TRUSTED_CA


@pytest.mark.parametrize(
    ("version", "cipher"),
    [
        ("TLSv1.3", ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)),
        ("TLSv1.3", ("TLS_CHACHA20_POLY1305_SHA256", "TLSv1.3", 256)),
        ("TLSv1.2", ("ECDHE-RSA-AES256-GCM-SHA384", "TLSv1.2", 256)),
        ("TLSv1.2", ("ECDHE-ECDSA-CHACHA20-POLY1305", "TLSv1.2", 256)),
    ],
)
def test_a_session_meeting_the_baseline_passes(version, cipher):
    assert negotiated_problem(version, cipher) is None


@pytest.mark.parametrize(
    ("version", "cipher", "complaint"),
    [
        ("TLSv1", ("ECDHE-RSA-AES128-SHA", "TLSv1", 128), "TLS 1.2 or newer"),
        ("TLSv1.1", ("ECDHE-RSA-AES256-SHA", "TLSv1.1", 256), "TLS 1.2 or newer"),
        (None, None, "TLS 1.2 or newer"),
        ("TLSv1.2", None, "no cipher"),
        # Faked weak results: what a context must never let through, caught anyway.
        ("TLSv1.2", ("ECDHE-RSA-AES128-GCM-SHA256", "TLSv1.2", 56), "56 key bits"),
        ("TLSv1.3", ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 64), "64 key bits"),
        ("TLSv1.2", ("AES128-GCM-SHA256", "TLSv1.2", 128), "not a forward-secret AEAD"),
        ("TLSv1.2", ("ECDHE-RSA-AES128-SHA256", "TLSv1.2", 128), "not a forward-secret AEAD"),
        ("TLSv1.2", ("DHE-RSA-AES128-SHA", "TLSv1.2", 128), "not a forward-secret AEAD"),
    ],
)
def test_a_weak_negotiated_session_is_refused(version, cipher, complaint):
    problem = negotiated_problem(version, cipher)
    assert problem is not None and complaint in problem


def test_client_context_meets_the_baseline():
    context = client_context(verify=True)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    for cipher in context.get_ciphers():
        name, protocol = cipher["name"], cipher["protocol"]
        if protocol == "TLSv1.3":
            continue
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
    assert context.options & ssl.OP_NO_COMPRESSION


def test_client_context_with_a_private_ca_trusts_only_that_ca(tmp_path):
    ca_file = tmp_path / "ca.pem"
    TRUSTED_CA.cert_pem.write_to_path(str(ca_file))
    context = client_context(verify=True, ca_file=ca_file)
    assert context.cert_store_stats()["x509_ca"] == 1


def test_unverified_context_still_meets_the_version_baseline():
    context = client_context(verify=False)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_mode_rules_follow_the_design_table():
    assert not RULES[TLSMode.NONE].try_tls
    assert RULES[TLSMode.OPPORTUNISTIC].plaintext_fallback
    assert RULES[TLSMode.OPPORTUNISTIC].accept_untrusted
    for mode in (TLSMode.FORCED, TLSMode.EXCLUSIVE):
        rules = RULES[mode]
        assert rules.try_tls and not rules.plaintext_fallback and not rules.accept_untrusted
        assert rules.ask_requiretls
    assert RULES[TLSMode.FORCED].no_tls_status is Status.DEFERRED
    assert RULES[TLSMode.EXCLUSIVE].no_tls_status is Status.DROPPED_NO_TLS


def test_trust_words():
    assert trust_word(encrypted=False, verified=False) is Trust.NONE
    assert trust_word(encrypted=True, verified=True) is Trust.VERIFIED
    assert trust_word(encrypted=True, verified=False) is Trust.UNTRUSTED
    assert trust_word(encrypted=True, verified=False, certificate_checked=False) is Trust.ANONYMOUS


def test_evidence_records_cipher_and_bits():
    ev = evidence("relay.test", "192.0.2.1", "TLSv1.3", ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256))
    assert (ev.host, ev.ip, ev.version, ev.cipher, ev.bits) == (
        "relay.test",
        "192.0.2.1",
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        256,
    )
    assert evidence("relay.test", None).trust is Trust.NONE
