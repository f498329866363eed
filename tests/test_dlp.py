"""DLP: the fast scan decides exactly what ``re.search`` of each rule over each whole part does."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blast.dlp import DLPScanner, prefilter
from blast.errors import BlockedMessage
from blast.render import Renderer
from tests.test_render import renderer

EXAMPLE_RULES = [("ssn", r"\b\d{3}-\d{2}-\d{4}\b"), ("mrn", r"\bMRN[:# ]?\d{6,}\b")]
# Rules that exercise the prefilter's edge cases: a literal after a lookbehind, a case-
# insensitive literal, a group, an anchor, a rule spanning a line break, a top-level
# alternation and a backreference (no prefilter for the last two).
MORE_RULES = [
    ("after-digit", r"(?<=\d)\bMRN\d"),
    ("case", r"(?i)\b\d{2}mrn"),
    ("grouped", r"\b(\d{3})-(?:\d{2})-\d{4}(?!\d)"),
    ("anchored", r"^\d{3}-"),
    ("across-lines", r"MRN\s+\d{6}"),
    ("either", r"\d{9}|MRN#"),
    ("twice", r"\b(\d)\1-\d"),
]
ALL_RULES = EXAMPLE_RULES + MORE_RULES

# Text built from near-misses: digit runs of every length, dashes, "MRN" with and without its
# separators, word characters that break \b, line breaks and spaces.
PIECES = ["1", "12", "123", "1234", "123456", "-", "MRN", "mrn", "MR", ":", "#", " ", "\n", "\r\n",
          "a", "_", "x1", "é", "MRN 1234567", "123-45-6789", "12-34-5678"]  # fmt: skip
TEXT = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


def naive(rules: list[tuple[str, str]], text: str) -> str | None:
    return next((name for name, pattern in rules if re.search(pattern, text)), None)


@settings(max_examples=3000, deadline=None)
@given(text=TEXT)
@example(text="x123-45-6789")
@example(text="MRN:1234567\n")
@example(text="7MRN1")
@example(text="MRN\n123456")
def test_scanner_decides_as_re_search_over_the_whole_text(text):
    scanner = DLPScanner(ALL_RULES)
    assert scanner.first_match(text) == naive(ALL_RULES, text)


def test_the_example_rules_get_a_prefilter_and_the_others_are_still_searched():
    assert prefilter(re.compile(EXAMPLE_RULES[0][1])).search("-12-3456 ")  # type: ignore[union-attr]
    assert prefilter(re.compile(EXAMPLE_RULES[1][1])) is not None
    assert prefilter(re.compile(r"\d{9}|MRN#")) is None
    assert prefilter(re.compile(r"\b(\d)\1-\d")) is None
    assert prefilter(re.compile(r"MRN\d")) is None  # already starts with a literal


# --- through the renderer: static template text joined with per-recipient values ------------

TEMPLATE_HTML = (
    "<html><body><p>Dear {{ first_name }} {{ last_name }}</p>\n"
    "<p>Ref 123-{{ first_name }}</p>\n<p>MRN\n{{ last_name }}-45</p>\n"
    "<p>{{ campaign.postal_address }}</p>\n"
    '<a href="https://example.org/x">x</a><a href="{{ unsubscribe_url }}">U</a></body></html>\n'
)
TEMPLATE_TEXT = (
    "Dear {{ first_name }},\nMRN\n{{ last_name }}\nSee 12{{ first_name }}6789\n"
    "{{ campaign.postal_address }}\nUnsubscribe: {{ unsubscribe_url }}\n"
)
NAME = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


@pytest.fixture(scope="module")
def renderers(tmp_path_factory) -> tuple[Renderer, Renderer]:
    """The same campaign with and without DLP rules (same run and key: the same text)."""
    built = []
    for rules in (ALL_RULES, []):
        tmp_path = tmp_path_factory.mktemp("dlp")
        built.append(
            renderer(
                tmp_path,
                html=TEMPLATE_HTML,
                text=TEMPLATE_TEXT,
                subject="Hello {{ first_name }}",
                to_name="{{ first_name }} {{ last_name }}",
                dlp=[{"name": name, "pattern": pattern} for name, pattern in rules],
            )
        )
    return built[0], built[1]


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=NAME, last=NAME, row=st.integers(1, 10**6))
@example(first="45-6789", last="x", row=1)  # "Ref 123-" + value: a match across the join
@example(first="", last="123456", row=1)  # "MRN" line + value line: across a line break
@example(first="34-5", last="x", row=1)  # "12" + value + "6789" in the text part
def test_renderer_blocks_exactly_when_a_rule_matches_a_whole_part(renderers, first, last, row):
    scanned, plain = renderers
    contact = {"first_name": first, "last_name": last}
    parts = plain.render_parts(row_id=row, recipient="a@example.org", context=contact)
    expected = None
    for part, text in (("subject", parts.subject), ("to_name", parts.to_name),
                       ("text", parts.text), ("html", parts.html)):  # fmt: skip
        name = naive(ALL_RULES, text or "")
        if name is not None:
            expected = f"dlp: {name} in {part}"
            break
    try:
        scanned.render(row_id=row, recipient="a@example.org", context=contact)
        got = None
    except BlockedMessage as exc:
        got = exc.reason if exc.reason.startswith("dlp:") else None
    assert got == expected


def test_a_match_across_a_static_line_and_a_value_line_blocks(renderers):
    # The former line-by-line scan of per-recipient lines missed this: "MRN" is a template
    # line of its own, the number the next line, from the contact.
    scanned, _ = renderers
    contact = {"first_name": "Ann", "last_name": "123456"}
    with pytest.raises(BlockedMessage, match=r"^dlp: across-lines in text$"):
        scanned.render(row_id=1, recipient="a@example.org", context=contact)
