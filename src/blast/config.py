"""Pydantic models for campaign YAML, and ``load_campaign(path)``.

Every field is validated on load; an error names the file and the YAML path
(``campaigns/x.yml: transport.port: ...``). Secrets are never in YAML: only the names of the
environment variables that hold them (``*_env``). Relative paths resolve against the campaign file.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from blast.contacts import ContactsSpec

__all__ = [
    "Campaign",
    "DLPRule",
    "OnUnknown",
    "Sending",
    "TLSMode",
    "Templates",
    "Tracking",
    "TransportSpec",
]


class TLSMode(StrEnum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    FORCED = "forced"
    EXCLUSIVE = "exclusive"


class OnUnknown(StrEnum):
    SKIP = "skip"
    RESEND = "resend"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Templates(_Model):
    html: Path | None = None
    text: Path | None = None


class TransportSpec(_Model):
    kind: Literal["relay", "mx", "outbox"] = "relay"
    host: str | None = None
    port: int = Field(default=587, ge=1, le=65535)
    ca_file: Path | None = None
    username_env: str | None = None
    password_env: str | None = None
    helo: str | None = None  # EHLO name; default: the machine's FQDN
    path: Path | None = None  # outbox: the Maildir folder
    timeout: float = Field(default=30.0, gt=0)


class Fallback(_Model):
    outbox: Path


class DLPRule(_Model):
    name: str
    pattern: str


class Sending(_Model):
    concurrency: int = Field(default=50, ge=1, le=2000)
    rate_per_second: float | None = Field(default=None, gt=0)
    per_domain_connections: int = Field(default=5, ge=1)
    retry_hours: float = Field(default=24, ge=0)
    batch_size: int = Field(default=200, ge=1)


class Tracking(_Model):
    base_url: str | None = None
    opens: bool = False
    clicks: bool = False


class Campaign(_Model):
    """A campaign file, validated. ``source`` is the file it was loaded from."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    contacts: ContactsSpec
    segment: Path
    from_: Annotated[str, Field(alias="from")]
    reply_to: str | None = None
    subject: str
    template: Templates
    postal_address: str
    tls: TLSMode = TLSMode.EXCLUSIVE
    transport: TransportSpec = TransportSpec()
    fallback: Fallback | None = None
    on_unknown: OnUnknown = OnUnknown.SKIP
    dlp: list[DLPRule] = []
    sending: Sending = Sending()
    tracking: Tracking = Tracking()
    schedule: str | None = None
    headers: dict[str, str] = {}
    phi_fields: list[str] | None = None
    source: Path | None = Field(default=None, exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
