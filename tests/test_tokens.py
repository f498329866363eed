"""Tracking tokens: signed, URL-safe, carrying only (run, row, link)."""

from __future__ import annotations

import base64
import re
from email import policy
from email.parser import BytesParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blast.tokens import TokenError, TokenKind, generate_key, key_from_env, sign, verify

KEY = b"0123456789abcdef0123456789abcdef"


def test_a_token_round_trips_and_is_url_safe():
    token = sign(KEY, TokenKind.CLICK, "flu-2026-run-1", 12345, link=3)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    found = verify(KEY, token)
    assert (found.kind, found.run_id, found.row_id, found.link) == (
        TokenKind.CLICK,
        "flu-2026-run-1",
        12345,
        3,
    )


def test_aggregate_tokens_name_no_recipient():
    token = sign(KEY, TokenKind.OPEN, "run", None)
    assert verify(KEY, token).row_id is None


def test_a_token_from_another_key_is_refused():
    token = sign(generate_key(), TokenKind.UNSUBSCRIBE, "run", 1)
    with pytest.raises(TokenError):
        verify(KEY, token)


def test_forged_token_without_a_valid_mac_is_refused():
    payload = bytes((1, TokenKind.CLICK, 0, 0)) + (7).to_bytes(8, "big") + b"run"
    forged = base64.urlsafe_b64encode(payload + b"\0" * 16).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        verify(KEY, forged)


@pytest.mark.parametrize("cut", [1, 2, 5, 16, 30])
def test_truncated_tokens_are_refused(cut):
    token = sign(KEY, TokenKind.CLICK, "run", 1, link=2)
    with pytest.raises(TokenError):
        verify(KEY, token[:-cut])


@given(position=st.integers(min_value=0), replacement=st.sampled_from("AbZ09-_"))
def test_every_single_character_change_is_refused(position, replacement):
    token = sign(KEY, TokenKind.CLICK, "run-7", 99, link=1)
    position %= len(token)
    if token[position] == replacement:
        return
    tampered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(TokenError):
        verify(KEY, tampered)


def test_tampering_with_the_row_or_link_is_refused():
    raw = bytearray(base64.urlsafe_b64decode(sign(KEY, TokenKind.CLICK, "run", 5, link=1) + "=="))
    for index in (3, 11):  # link index, last byte of the row id
        changed = bytearray(raw)
        changed[index] ^= 1
        token = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        with pytest.raises(TokenError):
            verify(KEY, token)


@pytest.mark.parametrize("junk", ["", "!!!", "a" * 401, "AAAA", "é"])
def test_junk_is_refused(junk):
    with pytest.raises(TokenError):
        verify(KEY, junk)


def test_a_rendered_token_holds_no_contact_attribute(tmp_path):
    from tests.test_render import KEY as RENDER_KEY
    from tests.test_render import renderer

    r = renderer(tmp_path)
    contact = {"first_name": "Marguerite", "last_name": "Zyxwvut"}
    data = r.render(row_id=4, recipient="m.z@example.org", context=contact).data
    body = BytesParser(policy=policy.default).parsebytes(data).get_body(("html",)).get_content()
    tokens = re.findall(r"/[cuo]/([A-Za-z0-9_-]+)", body)
    assert len(tokens) == 3  # click, unsubscribe, open
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for value in ("Marguerite", "Zyxwvut", "m.z@example.org", "example.org"):
            assert value.encode() not in raw and value not in token
        found = verify(RENDER_KEY, token)
        assert found.run_id == "run-1" and found.row_id == 4


def test_key_from_env():
    assert key_from_env({}) is None
    assert key_from_env({"BLAST_TRACKING_KEY": "ab" * 32}) == bytes.fromhex("ab" * 32)
    with pytest.raises(ValueError):
        key_from_env({"BLAST_TRACKING_KEY": "short"})
    assert len(generate_key()) == 32
