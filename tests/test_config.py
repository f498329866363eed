"""Campaign YAML: errors name the file and the YAML path; paths resolve; secrets via env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from blast.cli import app
from blast.config import DEFAULT_PHI_FIELDS, load_campaign
from blast.errors import ConfigError
from tests.test_render import write_campaign

ROOT = Path(__file__).parents[1]


def edit(path: Path, **changes):
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_campaigns_load_with_paths_resolved():
    campaign = load_campaign(ROOT / "campaigns" / "flu-shot.yml")
    assert campaign.template.html == ROOT / "campaigns" / ".." / "templates" / "flu-shot.html.j2"
    assert campaign.contacts.path == ROOT / "campaigns" / ".." / "data/demo/contacts.parquet"
    assert campaign.from_address == "news@riverside.example"
    assert campaign.phi == DEFAULT_PHI_FIELDS
    assert campaign.source == ROOT / "campaigns" / "flu-shot.yml"


def test_relative_paths_resolve_against_the_campaign_file(tmp_path):
    path = write_campaign(tmp_path)
    campaign = load_campaign(path)
    assert campaign.segment == tmp_path / "seg.yml"
    assert campaign.contacts.path == tmp_path / "contacts.csv"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"transport": {"kind": "relay", "host": "h", "port": 70000}}, "transport.port: "),
        ({"tls": "sometimes"}, "tls: must be one of 'none', 'opportunistic'"),
        ({"trackin": {}}, "trackin: unknown field (did you mean 'tracking'?)"),
        (
            {"transport": {"kind": "relay", "host": "h", "password": "hunter2"}},
            "transport.password: not allowed: secrets come from the environment: use password_env",
        ),
        ({"transport": {"kind": "relay", "host": "h", "password_env": "1 bad"}}, "password_env"),
        ({"from": "news@"}, "from: 'news@' is not on a valid domain"),
        ({"from": "Riverside Health"}, "from: 'Riverside Health' is not an address"),
        ({"dlp": [{"name": "ssn", "pattern": "(\\d{3}"}]}, "dlp[0].pattern: invalid regular"),
        ({"headers": {"Subject": "x"}}, "headers: 'Subject' is set by blast"),
        ({"tracking": {"opens": True}}, "tracking: opens and clicks need 'base_url'"),
        ({"template": {}}, "template: give 'html', 'text' or both"),
        ({"schedule": "every monday"}, "schedule: must be a 5-field cron expression"),
    ],
)
def test_errors_name_the_file_and_the_yaml_path(tmp_path, changes, expected):
    path = edit(write_campaign(tmp_path), **changes)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_a_missing_field_and_bad_yaml(tmp_path):
    path = write_campaign(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["postal_address"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"c.yml: postal_address: required"):
        load_campaign(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c.yml: line \d+, column \d+: "):
        load_campaign(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_campaign(tmp_path / "missing.yml")


@pytest.mark.parametrize("kind", ["campaign", "segment"])
def test_schema_command_prints_json_schema(kind):
    result = CliRunner().invoke(app, ["schema", kind])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["type"] == "object"
    if kind == "campaign":
        assert {"from", "subject", "tls", "tracking", "contacts"} <= set(schema["properties"])
        assert "source" not in schema["properties"]
    else:
        assert {"where", "derive", "sensitive", "exclude"} <= set(schema["properties"])


def test_schema_command_refuses_an_unknown_kind():
    result = CliRunner().invoke(app, ["schema", "nope"])
    assert result.exit_code == 2


def test_in_flight_defaults_to_eight_per_connection_and_a_seconds_worth_under_a_rate(tmp_path):
    campaign = write_campaign(tmp_path)
    assert load_campaign(edit(campaign, sending={"concurrency": 30})).sending.window == 240
    rated = edit(campaign, sending={"concurrency": 30, "rate_per_second": 100.5})
    assert load_campaign(rated).sending.window == 101  # a second's worth under a rate limit
    slow = edit(campaign, sending={"concurrency": 30, "rate_per_second": 5})
    assert load_campaign(slow).sending.window == 30  # ... but never under one per connection
    edited = edit(campaign, sending={"concurrency": 30, "in_flight": 45})
    assert load_campaign(edited).sending.window == 45
    with pytest.raises(ConfigError, match=r"sending\.in_flight"):
        load_campaign(edit(campaign, sending={"concurrency": 30, "in_flight": 0}))
