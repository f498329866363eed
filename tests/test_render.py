"""Rendering: the Renderer contract the sending engine relies on."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from blast.config import load_campaign
from blast.delivery import Message
from blast.errors import BlockedMessage, TemplateError
from blast.render import Renderer
from blast.tokens import TokenKind, verify

ROOT = Path(__file__).parents[1]
KEY = b"k" * 32
CONTACT = {"first_name": "Ana", "last_name": "Lima", "age": 70}


def write_campaign(tmp_path: Path, **overrides: Any) -> Path:
    """A minimal campaign with its templates in tmp_path; overrides replace YAML lines."""
    (tmp_path / "t.html.j2").write_text(
        overrides.pop(
            "html",
            "<html><body><p>Hi {{ first_name }}</p>"
            '<a href="https://example.org/a?x=1&amp;y=2">A</a>'
            "<p>{{ campaign.postal_address }}</p>"
            '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>',
        )
    )
    (tmp_path / "t.txt.j2").write_text(
        overrides.pop(
            "text",
            "Hi {{ first_name }}\n{{ campaign.postal_address }}\n"
            "Unsubscribe: {{ unsubscribe_url }}\n",
        )
    )
    fields: dict[str, Any] = {
        "name": "test",
        "contacts": "contacts.csv",
        "segment": "seg.yml",
        "from": '"Clinic" <news@clinic.example>',
        "subject": "Hello {{ first_name }}",
        "template": {"html": "t.html.j2", "text": "t.txt.j2"},
        "postal_address": "1 Main St, Springfield, MA 01101",
        "tls": "exclusive",
        "transport": {"kind": "relay", "host": "smtp.clinic.example"},
        "tracking": {"base_url": "https://t.clinic.example", "opens": True, "clicks": True},
    }
    fields.update(overrides)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({k: v for k, v in fields.items() if v is not None}))
    return path


def renderer(tmp_path: Path, sensitive: bool = False, **overrides: Any) -> Renderer:
    campaign = load_campaign(write_campaign(tmp_path, **overrides))
    return Renderer.from_campaign(campaign, run_id="run-1", tracking_key=KEY, sensitive=sensitive)


def parse(message: Message):
    return BytesParser(policy=policy.default).parsebytes(message.data)


def test_render_returns_a_message_with_envelope_and_bytes(tmp_path):
    r = renderer(tmp_path)
    message = r.render(row_id=7, recipient="ana@example.org", context=CONTACT)
    assert message.row_id == 7
    assert message.sender == "news@clinic.example"
    assert message.recipient == "ana@example.org"
    parsed = parse(message)
    assert parsed["Subject"] == "Hello Ana"
    assert parsed["Message-ID"] == f"<{message.message_id}>"
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_fields_are_the_contact_fields_the_templates_use(tmp_path):
    r = renderer(tmp_path, subject="{{ last_name }}")
    assert r.fields == {"first_name", "last_name"}


def test_links_are_rewritten_to_signed_click_tokens(tmp_path):
    r = renderer(tmp_path)
    assert r.links == ("https://example.org/a?x=1&y=2",)
    html = parse(r.render(row_id=3, recipient="a@example.org", context=CONTACT)).get_body(("html",))
    body = html.get_content()
    assert "https://example.org/a" not in body
    click = body.split('href="https://t.clinic.example/c/')[1].split('"')[0]
    assert verify(KEY, click).kind is TokenKind.CLICK
    assert verify(KEY, click).row_id == 3 and verify(KEY, click).link == 0
    pixel = body.split("https://t.clinic.example/o/")[1].split(".gif")[0]
    assert verify(KEY, pixel).kind is TokenKind.OPEN
    assert body.index("/o/") < body.index("</body>")


def test_sensitive_segments_get_aggregate_open_and_click_tokens(tmp_path):
    r = renderer(tmp_path, sensitive=True)
    message = r.render(row_id=3, recipient="a@example.org", context=CONTACT)
    assert message.sensitive
    body = parse(message).get_body(("html",)).get_content()
    click = body.split("/c/")[1].split('"')[0]
    pixel = body.split("/o/")[1].split(".gif")[0]
    assert verify(KEY, click).row_id is None
    assert verify(KEY, pixel).row_id is None
    unsubscribe = body.split("/u/")[1].split('"')[0]
    assert verify(KEY, unsubscribe).row_id == 3


def test_without_base_url_unsubscribe_is_a_mailto(tmp_path):
    r = renderer(tmp_path, tracking=None, reply_to="care@clinic.example")
    parsed = parse(r.render(row_id=1, recipient="a@example.org", context=CONTACT))
    assert parsed["List-Unsubscribe"].startswith("<mailto:care@clinic.example?subject=")
    assert parsed["List-Unsubscribe-Post"] is None
    assert "mailto:care@clinic.example" in parsed.get_body(("plain",)).get_content()


def test_a_missing_variable_blocks_with_template_and_line_but_no_values(tmp_path):
    r = renderer(tmp_path, text="Hello\n{{ first_name }} {{ middle_name }}\n")
    with pytest.raises(BlockedMessage) as caught:
        r.render(row_id=1, recipient="a@example.org", context=CONTACT)
    reason = caught.value.reason
    assert "t.txt.j2 line 2" in reason and "'middle_name' is undefined" in reason
    assert "Ana" not in reason


def test_a_failing_expression_does_not_leak_the_value(tmp_path):
    r = renderer(tmp_path, text="{{ first_name | int(strict=1) + 'x' }}{{ first_name.foo() }}\n")
    with pytest.raises(BlockedMessage) as caught:
        r.render(row_id=1, recipient="a@example.org", context=CONTACT)
    assert "Ana" not in caught.value.reason


def test_sandbox_blocks_unsafe_attribute_access(tmp_path):
    r = renderer(tmp_path, text="{{ first_name.__class__.__mro__ }}\n")
    with pytest.raises(BlockedMessage, match="sandbox violation"):
        r.render(row_id=1, recipient="a@example.org", context=CONTACT)


def test_html_is_autoescaped_and_text_is_not(tmp_path):
    r = renderer(tmp_path)
    contact = {**CONTACT, "first_name": "<b>&"}
    parsed = parse(r.render(row_id=1, recipient="a@example.org", context=contact))
    assert "Hi &lt;b&gt;&amp;" in parsed.get_body(("html",)).get_content()
    assert "Hi <b>&" in parsed.get_body(("plain",)).get_content()


def test_a_template_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(TemplateError, match=r"t.txt.j2: line 2: "):
        renderer(tmp_path, text="ok\n{{ first_name \n")


def test_dlp_blocks_with_the_rule_name_only(tmp_path):
    r = renderer(tmp_path, dlp=[{"name": "ssn", "pattern": r"\b\d{3}-\d{2}-\d{4}\b"}])
    contact = {**CONTACT, "first_name": "123-45-6789"}
    with pytest.raises(BlockedMessage) as caught:
        r.render(row_id=1, recipient="a@example.org", context=contact)
    assert caught.value.reason == "dlp: ssn in subject"
    r.render(row_id=1, recipient="a@example.org", context=CONTACT)


def test_dlp_checks_bodies_too(tmp_path):
    r = renderer(
        tmp_path,
        subject="Hello",
        dlp=[{"name": "ssn", "pattern": r"\b\d{3}-\d{2}-\d{4}\b"}],
        html="<html><body>{{ first_name }}{{ unsubscribe_url }}</body></html>",
    )
    contact = {**CONTACT, "first_name": "123-45-6789"}
    with pytest.raises(BlockedMessage, match=r"^dlp: ssn in text$"):
        r.render(row_id=1, recipient="a@example.org", context=contact)


def test_dlp_blocks_a_static_template_line_every_time(tmp_path):
    r = renderer(
        tmp_path,
        text="SSN 123-45-6789\n{{ unsubscribe_url }}\n",
        dlp=[{"name": "ssn", "pattern": r"\d{3}-\d{2}-\d{4}"}],
    )
    with pytest.raises(BlockedMessage, match="dlp: ssn in text"):
        r.render(row_id=1, recipient="a@example.org", context=CONTACT)


def test_examples_render(tmp_path):
    for name in ("flu-shot", "checkup-reminder"):
        campaign = load_campaign(ROOT / "campaigns" / f"{name}.yml")
        r = Renderer.from_campaign(campaign, run_id="r", tracking_key=KEY, sensitive=False)
        contact = {
            "first_name": "Zoë",
            "last_name": "O'Brien",
            "age": 70,
            "last_visit": None,
        }
        message = r.render(row_id=1, recipient="z@example.org", context=contact)
        assert parse(message)["To"].addresses[0].display_name == "Zoë O'Brien"
