"""MIME bytes: round trip through Python's email parser, line rules, header injection."""

from __future__ import annotations

import binascii
import re
from email import policy
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from blast import mime
from blast.errors import BlockedMessage
from blast.render import Renderer
from tests.test_render import KEY, renderer

HEADER_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=120,
)
BODY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
TRICKY = st.sampled_from(
    [
        "",
        " ",
        "=",
        ".",
        "=?utf-8?q?x?=",
        "Zoë",
        "محمد",
        "שָׁלוֹם",
        "👩‍⚕️🩺",
        "x" * 1200,
        "Ünïcödé " * 40,
        '"quoted" \\ back',
        "a,b;c:<d>@e",
        "trailing ",
        "tab\there",
    ]
)
NAME = st.one_of(TRICKY, HEADER_TEXT)
# ASCII notes, bare CR and NUL included, so the 7bit path and its refusals are both drawn.
ASCII_TEXT = st.text(alphabet=st.characters(max_codepoint=127), max_size=400)
LINES = st.lists(
    st.sampled_from(
        [".", "=", "..", "=3D", " ", "From x", "x" * 300, "x" * 700, "x" * 993, "x" * 994, "é" * 90]
    )
).map("\n".join)
NOTE = st.one_of(TRICKY, BODY_TEXT, ASCII_TEXT, LINES)

HTML = (
    "<html><body><p>Dear {{ first_name }} {{ last_name }}</p>\n<pre>{{ note }}</pre>\n"
    '<a href="https://example.org/x">x</a>\n{{ campaign.postal_address }}\n'
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
)
TEXT = (
    "Dear {{ first_name }} {{ last_name }}\n{{ note }}\n{{ campaign.postal_address }}\n"
    "{{ unsubscribe_url }}\n"
)


@pytest.fixture(scope="module")
def round_trip_renderer(tmp_path_factory) -> Renderer:
    return renderer(
        tmp_path_factory.mktemp("rt"),
        html=HTML,
        text=TEXT,
        subject="Hello {{ first_name }}",
        to_name="{{ first_name }} {{ last_name }}",
        headers={"X-Note": "{{ last_name }}", "X-Static": "static value"},
    )


def check_lines(data: bytes) -> None:
    assert data.endswith(b"\r\n")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    for line in data.split(b"\r\n"):
        assert len(line) <= 998


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def fits_7bit(body: str, boundary: str) -> bool:
    """The rule, spelled out: ASCII, no NUL, CR only in CRLF, lines <= 998, no boundary."""
    lines = body.replace("\r\n", "\n").split("\n")
    return (
        all(ord(c) < 128 for c in body)
        and "\0" not in body
        and not any("\r" in line for line in lines)
        and all(len(line.encode()) <= 998 for line in lines)
        and boundary not in body
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=NAME, last=NAME, note=NOTE)
@example(first="=?utf-8?b?SGk=?=", last=" x  y ", note=".\n=\n.")
@example(first="", last="", note="")  # 7bit
@example(first="Ana", last="Lima", note=".\nFrom x\r\n..\n" + "x" * 700)  # 7bit
@example(first="Ana", last="Lima", note="x" * 993)  # 7bit: the HTML line is 998 octets
@example(first="Ana", last="Lima", note="x" * 994)  # quoted-printable: the HTML line is 999
@example(first="Ana", last="Lima", note="x" * 2000)  # quoted-printable: a 2000-char word
@example(first="Zoë", last="Lima", note="")  # quoted-printable: non-ASCII
@example(first="Ana", last="Lima", note="a\rb")  # quoted-printable: a lone CR
@example(first="Ana", last="Lima", note="a\0b")  # quoted-printable: a NUL
def test_round_trip(round_trip_renderer, first, last, note):
    r = round_trip_renderer
    contact = {"first_name": first, "last_name": last, "note": note}
    message = r.render(row_id=11, recipient="pat@example.org", context=contact)
    check_lines(message.data)
    parts = r.render_parts(row_id=11, recipient="pat@example.org", context=contact)
    parsed = BytesParser(policy=policy.default).parsebytes(message.data)
    assert not parsed.defects
    assert parsed["Subject"] == f"Hello {first}"
    assert parsed["X-Note"] == last
    assert parsed["X-Static"] == "static value"
    (to,) = parsed["To"].addresses
    assert to.addr_spec == "pat@example.org"
    assert to.display_name == mime.display_name(f"{first} {last}")
    assert parsed["From"].addresses[0].display_name == "Clinic"
    assert parsed["Message-ID"] == f"<{message.message_id}>"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    for part, body in ((text, parts.text), (html, parts.html)):
        seven = fits_7bit(body, parsed.get_boundary())
        event("7bit" if seven else "quoted-printable")
        assert part["Content-Transfer-Encoding"] == ("7bit" if seven else "quoted-printable")
        assert normalise(part.get_content()) == normalise(body)
    assert f"Dear {first} {last}" in normalise(text.get_content())


CONTACT = {"first_name": "Ana", "last_name": "Lima", "note": ""}


def test_a_body_holding_the_boundary_is_sent_quoted_printable(round_trip_renderer):
    r = round_trip_renderer
    probe = r.render(row_id=1, recipient="pat@example.org", context=CONTACT)
    boundary = BytesParser(policy=policy.default).parsebytes(probe.data).get_boundary()
    note = f"before\n--{boundary}\nContent-Type: text/plain\n\nafter\n--{boundary}--"
    contact = {**CONTACT, "note": note}
    parsed = BytesParser(policy=policy.default).parsebytes(
        r.render(row_id=1, recipient="pat@example.org", context=contact).data
    )
    assert not parsed.defects
    assert [p["Content-Transfer-Encoding"] for p in parsed.iter_parts()] == ["quoted-printable"] * 2
    assert note in normalise(parsed.get_body(("plain",)).get_content())


def test_an_ascii_message_goes_out_7bit_with_dots_and_from_lines_as_they_are(tmp_path):
    r = renderer(tmp_path, text=".\nFrom {{ first_name }}\n{{ unsubscribe_url }}\n")
    data = r.render(row_id=1, recipient="a@example.org", context={"first_name": "Ana"}).data
    check_lines(data)
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\n.\r\nFrom Ana\r\n" in data
    assert b"quoted-printable" not in data


def test_same_run_and_recipient_give_the_same_message_id(tmp_path):
    a = renderer(tmp_path)
    b = Renderer.from_campaign(a.campaign, run_id="run-1", tracking_key=KEY, sensitive=False)
    m1 = a.render(row_id=1, recipient="x@example.org", context={"first_name": "A"})
    m2 = b.render(row_id=9, recipient="x@example.org", context={"first_name": "B"})
    m3 = a.render(row_id=1, recipient="y@example.org", context={"first_name": "A"})
    assert m1.message_id == m2.message_id != m3.message_id
    assert mime.message_id("r", "x@example.org", "d.org") != mime.message_id(
        "s", "x@example.org", "d.org"
    )
    assert re.fullmatch(r"[0-9a-f]{32}@clinic\.example", m1.message_id)


def test_headers_blast_writes(tmp_path):
    r = renderer(tmp_path, reply_to="Care Team <care@clinic.example>")
    parsed = BytesParser(policy=policy.default).parsebytes(
        r.render(row_id=1, recipient="x@example.org", context={"first_name": "A"}).data
    )
    for name in ("Date", "From", "To", "Subject", "Message-ID", "Reply-To", "MIME-Version"):
        assert parsed[name], name
    unsubscribe = parsed["List-Unsubscribe"]
    assert re.fullmatch(r"<https://t\.clinic\.example/u/[\w-]+>, <mailto:[^>]+>", unsubscribe)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


# --- header injection: a CR or LF from contact data never reaches a header ----------------

INJECTIONS = ["x\r\nBcc: victim@example.org", "x\nBcc: v@example.org", "x\rX: y", "\n"]


@pytest.fixture(scope="module")
def header_renderer(tmp_path_factory) -> Renderer:
    return renderer(
        tmp_path_factory.mktemp("inj"),
        subject="Hi {{ first_name }}",
        to_name="{{ last_name }}",
        headers={"X-Ref": "ref-{{ ref }}"},
    )


CLEAN = {"first_name": "Ana", "last_name": "Lima", "ref": "7"}


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize(
    ("field", "header"), [("first_name", "Subject"), ("last_name", "To"), ("ref", "X-Ref")]
)
def test_cr_or_lf_in_a_header_field_blocks_the_message(header_renderer, field, header, value):
    with pytest.raises(BlockedMessage) as caught:
        header_renderer.render(row_id=1, recipient="a@example.org", context={**CLEAN, field: value})
    assert caught.value.reason == f"CR or LF in the {header} header"
    assert "victim" not in caught.value.reason


@pytest.mark.parametrize("value", INJECTIONS)
def test_cr_or_lf_in_the_recipient_address_blocks_the_message(header_renderer, value):
    with pytest.raises(BlockedMessage, match="CR or LF in the To header"):
        header_renderer.render(row_id=1, recipient=f"a@example.org{value}", context=CLEAN)


@pytest.mark.parametrize(
    "recipient", ["no-at-sign", "a b@example.org", "<a@example.org>", "ü@example.org"]
)
def test_an_invalid_recipient_address_blocks_the_message(header_renderer, recipient):
    with pytest.raises(BlockedMessage, match="invalid recipient address"):
        header_renderer.render(row_id=1, recipient=recipient, context=CLEAN)


def test_cr_and_lf_in_body_fields_are_fine(tmp_path):
    r = renderer(tmp_path, text="{{ note }}\n{{ unsubscribe_url }}\n")
    contact = {"first_name": "A", "note": "a\r\nb\rc"}
    data = r.render(row_id=1, recipient="a@example.org", context=contact).data
    check_lines(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("from", "News <news@clinic.example>\r\nBcc: x@y.org"), ("reply_to", "a@b.org\nBcc: x@y.org")],
)
def test_static_headers_with_line_breaks_are_refused_when_loading(tmp_path, field, value):
    from blast.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        renderer(tmp_path, **{field: value})


def test_unstructured_folds_long_ascii_and_encodes_the_rest():
    folded = mime.unstructured("Subject", "word " * 60 + "end")
    assert all(len(line) <= 78 for line in folded.split(b"\r\n"))
    assert mime.unstructured("Subject", "Zoë") == b"Subject: =?utf-8?b?Wm/Dqw==?=\r\n"
    with pytest.raises(BlockedMessage):
        mime.unstructured("Subject", "a\nb")


def test_quoted_printable_handles_dots_equals_and_long_lines():
    body = mime.qp_encode(".\n=x\n" + "é" * 300 + "\ntrailing \n")
    check_lines(body + b"\r\n")
    assert body.startswith(b"=2E\r\n=3Dx\r\n")
    assert b"trailing=20" in body


# Pieces that hit each quoted-printable rule: "=", a lone ".", spaces and tabs before a line
# break, non-ASCII, control characters, and runs that cross the 76-column soft-break point
# with an "=XX" escape straddling it.
QP_PIECES = ["a", " ", "\t", ".", "=", "é", "😀", "\x00", "\x7f", "-", "\n", "\r", "\r\n",
             "x" * 40, "=" * 30, "y" * 73, "z" * 75]  # fmt: skip
QP_TEXT = st.lists(st.sampled_from(QP_PIECES), max_size=30).map("".join)


@settings(max_examples=2000, deadline=None)
@given(text=QP_TEXT, data=st.data())
@example(text="y" * 73 + "=a" + "\n" + "z" * 75 + "=", data=None)
def test_quoted_printable_is_b2a_qp_line_by_line(text, data):
    """The cached, batched encoder writes the bytes of binascii.b2a_qp applied to each line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    seed = data.draw(st.sets(st.sampled_from(lines))) if data is not None else set(lines[:1])
    expected = b"\r\n".join(
        binascii.b2a_qp(line.encode("utf-8")).replace(b"\n", b"\r\n") for line in lines
    )
    assert mime.QPEncoder(seed).encode(text) == expected


SEVEN_BIT_PIECES = ["a", ".", "From ", "=", "\t", "\n", "\r", "\r\n", "\x00", "é", "x" * 250,
                    "x" * 499, "x" * 500, "x" * 998]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(text=st.lists(st.sampled_from(SEVEN_BIT_PIECES), max_size=12).map("".join))
@example(text="x" * 998)
@example(text="x" * 999)
@example(text="\n" + "x" * 998 + "\n" + "x" * 998)
@example(text="x" * 499 + "\n" + "x" * 999)
def test_seven_bit_is_the_rule_and_keeps_the_text(text):
    """7bit exactly when the rule allows; then the bytes are the text with CRLF line endings."""
    data = mime.seven_bit(text, "=_b")
    if not fits_7bit(text, "=_b"):
        assert data is None
        return
    assert data == normalise(text).replace("\n", "\r\n").encode("ascii")
    encoder = mime.BodyEncoder(boundary="=_b")
    assert encoder.encode(text) == (mime.SEVEN_BIT, data)
    assert encoder.encode(text + "=_b") == (
        mime.QUOTED_PRINTABLE,
        mime.qp_encode(text + "=_b"),
    )
