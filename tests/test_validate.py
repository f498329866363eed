"""``blast validate``: a precise line for each missing compliance element; examples pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from blast.cli import app
from blast.compliance import check_campaign, check_samples, validate_campaign
from blast.config import load_campaign
from tests.test_render import write_campaign

ROOT = Path(__file__).parents[1]
GOOD_HTML = (
    "<html><body><p>Hi {{ first_name }}</p><p>{{ campaign.postal_address }}</p>"
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
)
GOOD_TEXT = "Hi {{ first_name }}\n{{ campaign.postal_address }}\n{{ unsubscribe_url }}\n"


def errors(tmp_path, sensitive=False, **overrides):
    campaign = load_campaign(write_campaign(tmp_path, **overrides))
    findings, _ = check_campaign(campaign, sensitive=sensitive)
    return [str(f) for f in findings if f.error]


def test_a_compliant_campaign_has_no_findings(tmp_path):
    assert errors(tmp_path, html=GOOD_HTML, text=GOOD_TEXT) == []
    assert errors(tmp_path, sensitive=True, html=GOOD_HTML, text=GOOD_TEXT) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"html": GOOD_HTML.replace("{{ unsubscribe_url }}", "#"), "text": GOOD_TEXT},
            "c.yml: template.html: {html}: no unsubscribe link ({{{{ unsubscribe_url }}}})",
        ),
        (
            {"html": GOOD_HTML, "text": "{{ campaign.postal_address }}\n"},
            "c.yml: template.text: {text}: no unsubscribe link",
        ),
        (
            {"html": GOOD_HTML.replace("{{ campaign.postal_address }}", ""), "text": GOOD_TEXT},
            "c.yml: template.html: {html}: does not show the postal address",
        ),
        (
            {"html": GOOD_HTML, "text": "{{ unsubscribe_url }}\n"},
            "c.yml: template.text: {text}: does not show the postal address",
        ),
        (
            {"html": GOOD_HTML, "text": GOOD_TEXT, "subject": "  "},
            "c.yml: subject: empty",
        ),
        (
            {"html": GOOD_HTML, "text": GOOD_TEXT, "postal_address": ""},
            "c.yml: postal_address: empty",
        ),
        (
            {"html": GOOD_HTML, "text": GOOD_TEXT, "tracking": None},
            "c.yml: tracking.base_url: not set",
        ),
        (
            {"html": GOOD_HTML, "text": GOOD_TEXT + "SSN 123-45-6789\n"},
            "c.yml: template.text: {text}: template text matches DLP rule 'ssn'",
        ),
    ],
)
def test_each_missing_element_gives_a_precise_line(tmp_path, overrides, expected):
    overrides.setdefault("dlp", [{"name": "ssn", "pattern": r"\d{3}-\d{2}-\d{4}"}])
    found = errors(tmp_path, **overrides)
    expected = expected.format(html=tmp_path / "t.html.j2", text=tmp_path / "t.txt.j2")
    assert any(line.startswith(f"{tmp_path}/{expected}") for line in found), found


def test_the_postal_address_may_be_template_text(tmp_path):
    html = GOOD_HTML.replace("{{ campaign.postal_address }}", "1 Main St,\nSpringfield, MA 01101")
    assert errors(tmp_path, html=html, text=GOOD_TEXT) == []


@pytest.mark.parametrize("tls", ["none", "opportunistic"])
def test_a_sensitive_segment_needs_forced_or_exclusive_tls(tmp_path, tls):
    found = errors(tmp_path, sensitive=True, html=GOOD_HTML, text=GOOD_TEXT, tls=tls)
    assert found == [
        f"{tmp_path}/c.yml: tls: '{tls}' is not allowed for a sensitive segment: "
        "use forced or exclusive"
    ]
    assert errors(tmp_path, sensitive=False, html=GOOD_HTML, text=GOOD_TEXT, tls=tls) == []


@pytest.mark.parametrize(
    ("subject", "field"),
    [
        ("Your {{ conditions | join(', ') }} care", "conditions"),
        ("{% if 'x' in medications %}Refill{% endif %}", "medications"),
        ("About {{ lab_ldl_high }}", "lab_ldl_high"),
        ("{{ first_name }}, {{ vaccinations[0] }}", "vaccinations"),
    ],
)
def test_a_sensitive_subject_may_not_use_a_phi_field(tmp_path, subject, field):
    found = errors(tmp_path, sensitive=True, html=GOOD_HTML, text=GOOD_TEXT, subject=subject)
    assert found == [
        f"{tmp_path}/c.yml: subject: uses PHI field '{field}' in a sensitive campaign "
        "(header values are visible in inbox lists and notifications)"
    ]
    assert errors(tmp_path, html=GOOD_HTML, text=GOOD_TEXT, subject=subject) == []


def test_phi_fields_are_configurable_and_derived_fields_inherit(tmp_path):
    kw = {"html": GOOD_HTML, "text": GOOD_TEXT, "subject": "{{ risk }} {{ zip }}"}
    campaign = load_campaign(write_campaign(tmp_path, **kw))
    findings, _ = check_campaign(campaign, sensitive=True, derived={"risk": ["a1c", "conditions"]})
    assert [f.message.split(" in ")[0] for f in findings] == ["uses PHI field 'risk'"]
    campaign = load_campaign(write_campaign(tmp_path, phi_fields=["zip"], **kw))
    findings, _ = check_campaign(campaign, sensitive=True)
    assert [f.message.split(" in ")[0] for f in findings] == ["uses PHI field 'zip'"]


def test_bad_from_and_bad_dlp_regex_fail_validate_with_the_yaml_path(tmp_path):
    path = write_campaign(tmp_path, html=GOOD_HTML, text=GOOD_TEXT, **{"from": "news@clinic"})
    assert [str(f) for f in validate_campaign(path)] == [
        f"{path}: from: 'news@clinic' is not on a valid domain (like example.org)"
    ]
    path = write_campaign(tmp_path, dlp=[{"name": "x", "pattern": "[a-"}])
    (line,) = [str(f) for f in validate_campaign(path)]
    assert line.startswith(f"{path}: dlp[0].pattern: invalid regular expression")


def test_samples_that_hide_the_unsubscribe_link_are_reported(tmp_path):
    html = GOOD_HTML.replace(
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        '{% if age < 65 %}<a href="{{ unsubscribe_url }}">Unsubscribe</a>{% endif %}',
    )
    campaign = load_campaign(write_campaign(tmp_path, html=html, text=GOOD_TEXT))
    findings, renderer = check_campaign(campaign, sensitive=False)
    assert not [f for f in findings if f.error]
    samples = [(1, "a@example.org", {"first_name": "A", "age": 40})]
    samples += [(2, "b@example.org", {"first_name": "B", "age": 70}), (3, "c@x.org", {"age": 1})]
    lines = [str(f) for f in check_samples(campaign, renderer, samples)]
    assert lines == [
        f"{tmp_path}/c.yml: sample contact 2: the html part has no unsubscribe link",
        f"{tmp_path}/c.yml: sample contact 3: blocked: render error: "
        "subject line 1: 'first_name' is undefined",
    ]


def test_cli_validate_passes_the_examples_and_fails_with_a_line(tmp_path):
    from blast.generate import generate_contacts

    contacts = generate_contacts(300, tmp_path / "contacts.parquet")
    for name in ("flu-shot", "checkup-reminder"):
        source = ROOT / "campaigns" / f"{name}.yml"
        data = yaml.safe_load(source.read_text())
        data["contacts"] = str(contacts)
        data["segment"] = str((source.parent / data["segment"]).resolve())
        data["template"] = {
            k: str((source.parent / v).resolve()) for k, v in data["template"].items()
        }
        data.pop("fallback", None)
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(data))
        result = CliRunner().invoke(app, ["validate", str(path), "--as-of", "2026-12-01"])
        assert result.exit_code == 0, result.output
        data["tls"] = "opportunistic"
        path.write_text(yaml.safe_dump(data))
        result = CliRunner().invoke(app, ["validate", str(path), "--samples", "3"])
        if name == "flu-shot":  # the seniors segment is sensitive
            assert result.exit_code == 1
            assert f"{path}: tls: 'opportunistic' is not allowed" in result.output
