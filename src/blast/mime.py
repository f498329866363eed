"""MIME built as bytes, directly: pure helpers, no ``email.message`` on the hot path.

Everything here returns bytes with CRLF line endings and no line over 998 octets:

- ``unstructured(name, value)``: a header line; raw when the value is plain printable ASCII,
  RFC 2047 encoded words (UTF-8, base64) otherwise, folded to stay short.
- ``mailbox(name, address)``: ``"Display Name" <user@example.org>`` (encoded words if needed).
- ``BodyEncoder``: a body part's ``Content-Transfer-Encoding`` header and bytes: 7bit when
  ``seven_bit`` allows (ASCII, no NUL, no lone CR, lines <= 998 octets, no multipart boundary),
  quoted-printable otherwise. 7bit costs a few C passes; dot-stuffing is the transport's job.
- ``QPEncoder``: quoted-printable bodies (``binascii.b2a_qp``, C) with a per-line cache seeded
  from a template's static lines: quoted-printable is line-local, so a line that is the same in
  every message is encoded once per run.
- ``message_id(run_id, recipient, domain)``: deterministic per (run, recipient).
- ``http_date()``: the Date header value, cached per second.

A header value with CR or LF never reaches the output: ``check_header`` raises
``BlockedMessage`` naming the header (never the value).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterable
from email.utils import formatdate

from blast.errors import BlockedMessage

__all__ = [
    "CRLF",
    "QUOTED_PRINTABLE",
    "SEVEN_BIT",
    "BodyEncoder",
    "QPEncoder",
    "check_header",
    "display_name",
    "encoded_words",
    "http_date",
    "mailbox",
    "message_id",
    "qp_encode",
    "seven_bit",
    "unstructured",
]

CRLF = b"\r\n"
SEVEN_BIT = b"Content-Transfer-Encoding: 7bit\r\n\r\n"
QUOTED_PRINTABLE = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
_MAX_LINE = 998  # octets, CRLF excluded (RFC 5322 2.1.1)
# Any run of 999 bytes without a newline holds a whole 500-byte block aligned on a multiple of
# 500, so a newline in every aligned block proves every line short.
_LINE_BLOCK = 500
_WORD_BYTES = 45  # 45 bytes -> 60 base64 chars -> a 72-char encoded word (RFC 2047: <= 75)
_FOLD_AT = 78
_NAME_ASCII = 200
_PLAIN = re.compile(r"^[\x21-\x7e]+(?: [\x21-\x7e]+)*$")  # printable ASCII, single spaces
_ATEXT_PHRASE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$"
)
_QUOTABLE = re.compile(r"^[\x20-\x7e]*$")
_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
)


def check_header(name: str, value: str) -> None:
    """Raise ``BlockedMessage`` if ``value`` could break out of its header (CR or LF)."""
    if "\r" in value or "\n" in value:
        raise BlockedMessage(f"CR or LF in the {name} header")


def encoded_words(text: str) -> list[bytes]:
    """RFC 2047 ``=?utf-8?b?...?=`` words, each whole UTF-8 characters and <= 75 octets."""
    data = text.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never split a character
            end -= 1
        words.append(b"=?utf-8?b?" + base64.b64encode(data[start:end]) + b"?=")
        start = end
    return words


def _fold_words(prefix: bytes, words: Iterable[bytes], sep: bytes = b" ") -> bytes:
    """Join words after ``prefix`` with ``sep``, folding (CRLF + space) before 78 octets."""
    out = bytearray(prefix)
    line = len(prefix)
    first = True
    for word in words:
        if not first and line + len(sep) + len(word) > _FOLD_AT:
            out += b"\r\n " + word
            line = 1 + len(word)
        else:
            if not first:
                out += sep
                line += len(sep)
            out += word
            line += len(word)
        first = False
    return bytes(out)


def unstructured(name: str, value: str) -> bytes:
    """``Name: value`` + CRLF, raw if plain printable ASCII, else RFC 2047 encoded words.

    Raises ``BlockedMessage`` for CR or LF in ``value``. The email parser with
    ``policy.default`` reads back exactly ``value``.
    """
    check_header(name, value)
    prefix = name.encode("ascii") + b": "
    if _PLAIN.match(value) and "=?" not in value:
        if len(prefix) + len(value) <= _FOLD_AT:
            return prefix + value.encode("ascii") + CRLF
        words = value.encode("ascii").split(b" ")
        if max(map(len, words)) < 900:
            return _fold_words(prefix, words) + CRLF
    if not value:
        return prefix + CRLF
    return _fold_words(prefix, encoded_words(value)) + CRLF


def display_name(name: str) -> str:
    """The display name as sent: whitespace runs collapsed, ends trimmed, and shortened to what
    one header line carries cleanly: 200 characters of printable ASCII, else what fits one
    RFC 2047 encoded word (45 UTF-8 bytes). Several adjacent encoded words would be read back
    differently by different mail readers (RFC 2047 drops the space between them, Python's
    parser keeps it), so a display name is never split across encoded words.
    """
    name = " ".join(name.split())
    if _QUOTABLE.match(name) and "=?" not in name:
        return name[:_NAME_ASCII].rstrip()
    data = name.encode("utf-8")
    if len(data) <= _WORD_BYTES:
        return name
    end = _WORD_BYTES
    while (data[end] & 0xC0) == 0x80:  # never cut a character
        end -= 1
    return data[:end].decode("utf-8").rstrip()


def mailbox(name: str, address: str) -> bytes:
    """``"Name" <address>`` as header bytes (no header name, no CRLF); bare address if no name.

    ``name`` is normalised by ``display_name``; it is quoted when printable ASCII, otherwise
    one encoded word. Callers check CR/LF and the address first.
    """
    name = display_name(name)
    if not name:
        return address.encode("ascii")
    addr = b" <" + address.encode("ascii") + b">"
    if _ATEXT_PHRASE.match(name) and "=?" not in name:
        return name.encode("ascii") + addr
    if _QUOTABLE.match(name) and "=?" not in name:
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return b'"' + quoted.encode("ascii") + b'"' + addr
    return encoded_words(name)[0] + addr


def valid_address(address: str) -> bool:
    """A plain ASCII ``local@domain`` address we can put in To and RCPT TO."""
    return bool(_ADDRESS.match(address)) and ".." not in address


def message_id(run_id: str, recipient: str, domain: str) -> str:
    """A Message-ID (no angle brackets) that is the same for the same (run, recipient)."""
    digest = hashlib.sha256(f"{run_id}\x00{recipient}".encode()).hexdigest()[:32]
    return f"{digest}@{domain}"


_date_cache: tuple[int, bytes] = (0, b"")


def http_date(now: float | None = None) -> bytes:
    """The RFC 5322 Date value for now (cached per second: the hot path calls it per message)."""
    global _date_cache
    second = int(time.time() if now is None else now)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, localtime=False, usegmt=True).encode("ascii"))
    return _date_cache[1]


def seven_bit(text: str, boundary: str = "") -> bytes | None:
    """The body as 7bit bytes with CRLF line endings, or None when 7bit cannot carry it: text
    that is not ASCII, holds a NUL or a CR that is not part of CRLF, has a line over 998 octets,
    or contains ``boundary`` (the multipart boundary, which quoted-printable never produces).

    Lines starting with "." or "From " are left alone: dot-stuffing is the SMTP transport's job.
    """
    if not text.isascii() or "\0" in text or (boundary and boundary in text):
        return None
    data = text.encode("ascii")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:
            return None
    if len(data) > _MAX_LINE and not _short_lines(data):
        return None
    return data.replace(b"\n", CRLF)


def _short_lines(data: bytes) -> bool:
    """No newline-separated line of ``data`` is over 998 bytes: one ``find`` per 500 bytes, and
    a split only when a block has no newline (a line of 500 bytes or more)."""
    find = data.find
    for start in range(0, len(data) - _LINE_BLOCK + 1, _LINE_BLOCK):
        if find(b"\n", start, start + _LINE_BLOCK) < 0:
            return max(map(len, data.split(b"\n"))) <= _MAX_LINE
    return True


class BodyEncoder:
    """One body part per message as (``Content-Transfer-Encoding`` header and blank line, body):
    7bit when ``seven_bit`` allows, else quoted-printable with the per-run line cache
    (``QPEncoder(seed)``). ``boundary`` is the multipart boundary the part sits between, if any.
    """

    __slots__ = ("_boundary", "_qp")

    def __init__(self, seed: Iterable[str] = (), *, boundary: str = "") -> None:
        self._qp = QPEncoder(seed)
        self._boundary = boundary

    def encode(self, text: str) -> tuple[bytes, bytes]:
        """The part's transfer-encoding header (``SEVEN_BIT`` or ``QUOTED_PRINTABLE``, each
        ending in the blank line) and its body bytes."""
        data = seven_bit(text, self._boundary)
        if data is not None:
            return SEVEN_BIT, data
        return QUOTED_PRINTABLE, self._qp.encode(text)


class QPEncoder:
    """Quoted-printable body encoding with a per-run line cache.

    ``seed`` lines (a template's static lines) are encoded once; other lines on each call. The
    cache is never written at run time, so it holds template text only, never contact data.
    """

    __slots__ = ("_cache",)

    def __init__(self, seed: Iterable[str] = ()) -> None:
        self._cache: dict[str, bytes] = {"": b""}
        for line in seed:
            if "\r" not in line and "\n" not in line:
                self._cache[line] = _qp_block(line)

    def encode(self, text: str) -> bytes:
        """The body as quoted-printable UTF-8 with CRLF line endings (lone CR/LF normalised):
        the same bytes as ``binascii.b2a_qp`` line by line, with the cached lines looked up."""
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        encoded = list(map(self._cache.get, lines))
        missing = [i for i, data in enumerate(encoded) if data is None]
        if not missing:
            return CRLF.join(encoded)  # type: ignore[arg-type]
        for i, data in zip(missing, _qp_lines([lines[i] for i in missing]), strict=True):
            encoded[i] = data
        body = CRLF.join(encoded)  # type: ignore[arg-type]
        return body.replace(b"\0", b"=\r\n") if b"\0" in body else body


def qp_encode(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line endings, no cache."""
    return QPEncoder().encode(text)


def _qp_lines(lines: list[str]) -> list[bytes]:
    """Each line quoted-printable encoded as ``b2a_qp`` would, with NUL for each soft line break
    (quoted-printable output never holds a NUL, so the caller swaps in ``=\r\n`` once).

    ``b2a_qp`` costs ~80 instructions a byte; for the usual per-recipient line (printable ASCII:
    names, tracking URLs) the same bytes come from ``bytes.replace`` and slicing in a few.
    """
    joined = "\n".join(lines)
    if joined.isascii():
        data = joined.encode("ascii")
        if (
            not data.translate(None, _QP_LITERAL)  # only printable ASCII and line breaks
            and b" \n" not in data
            and not data.endswith(b" ")  # b2a_qp escapes a space that ends a line
            and b"\n.\n" not in b"\n" + data + b"\n"  # and a line that is a lone "."
        ):
            escaped = data.replace(b"=", b"=3D").split(b"\n") if b"=" in data else data.split(b"\n")
            for i, line in enumerate(escaped):
                if len(line) > 75:
                    escaped[i] = _soft_wrap(line)
            return escaped
    # Other text: one b2a_qp call for all lines. Hard breaks come out as "\n", soft breaks as
    # "=\n" (a lone "=" is always escaped). b2a_qp treats whitespace before a line break
    # unlike whitespace that ends its input: then one call per line, for the same bytes.
    if " \n" in joined or "\t\n" in joined:
        return [_qp_block(line).replace(b"=\r\n", b"\0") for line in lines]
    return binascii.b2a_qp(joined.encode("utf-8")).replace(b"=\n", b"\0").split(b"\n")


# The bytes b2a_qp copies as they are (bar the cases _qp_lines checks apart), and "=".
_QP_LITERAL = bytes(range(0x20, 0x7F)) + b"\n"
_EQUALS = ord("=")


def _soft_wrap(line: bytes) -> bytes:
    """An escaped line cut as b2a_qp cuts it: pieces of at most 75 bytes ended by a soft break
    ("=", here NUL), never inside an "=XX" escape; the last piece may be 76 if it ends in a plain
    character."""
    pieces = []
    start = 0
    end = len(line)
    while end - start > 76 or (end - start == 76 and line[-3] == _EQUALS):
        cut = start + 75
        if line[cut - 1] == _EQUALS:
            cut -= 1
        elif line[cut - 2] == _EQUALS:
            cut -= 2
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return b"\0".join(pieces)


def _qp_block(text: str) -> bytes:
    # b2a_qp keeps the input's line ending ("\n") for hard breaks and soft breaks ("=\n").
    encoded = binascii.b2a_qp(text.encode("utf-8"))
    return encoded.replace(b"\n", b"\r\n") if b"\n" in encoded else encoded
