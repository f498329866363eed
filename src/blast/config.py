"""Pydantic models for campaign YAML, and ``load_campaign(path)``.

Every field is validated on load; an error names the file and the YAML path
(``campaigns/x.yml: transport.port: ...``). Secrets are never in YAML: only the names of the
environment variables that hold them (``*_env``). Relative paths resolve against the campaign file.
"""

from __future__ import annotations

import difflib
import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from blast.contacts import ContactsSpec
from blast.errors import ConfigError

__all__ = [
    "DEFAULT_PHI_FIELDS",
    "RESERVED_HEADERS",
    "Campaign",
    "DLPRule",
    "Fallback",
    "OnUnknown",
    "Sending",
    "TLSMode",
    "Templates",
    "Tracking",
    "TransportSpec",
    "campaign_schema",
    "load_campaign",
    "parse_address",
    "segment_schema",
]

# Clinical fields whose values must never reach a sensitive campaign's subject line (globs).
DEFAULT_PHI_FIELDS: tuple[str, ...] = (
    "conditions",
    "medications",
    "procedures",
    "diagnoses",
    "lab_*",
    "vaccinations",
)

# Headers blast writes itself; `headers:` in YAML may not set them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "Sender",
        "Return-Path",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Received",
    )
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_MAILBOX = re.compile(r"^\s*(?:([^<>]*?)\s*<([^<>\s]+)>|([^<>\s\"]+))\s*$")
_SECRET_KEYS = {"password", "username", "user", "secret", "token", "api_key", "key"}


class TLSMode(StrEnum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    FORCED = "forced"
    EXCLUSIVE = "exclusive"


class OnUnknown(StrEnum):
    SKIP = "skip"
    RESEND = "resend"


def parse_address(value: str) -> tuple[str, str]:
    """Split ``"Name <user@example.org>"`` into (display name, address), or raise ValueError.

    The address must be plain ASCII ``local@domain`` on a real-looking domain (a dot, a TLD).
    """
    if "\r" in value or "\n" in value:
        raise ValueError("contains a line break")
    match = _MAILBOX.match(value)
    if not match:
        raise ValueError(f"'{value}' is not an address like 'Name <user@example.org>'")
    raw = (match.group(1) or "").strip()
    address = match.group(2) or match.group(3)
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        name = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    elif any(c in raw for c in '"<>,;:@'):
        raise ValueError(f"'{value}': put a display name with special characters in quotes")
    else:
        name = raw
    if address.count("@") != 1:
        raise ValueError(f"'{value}' is not an address like 'Name <user@example.org>'")
    local, domain = address.rsplit("@", 1)
    if not _LOCAL_PART.match(local) or local.startswith(".") or ".." in local:
        raise ValueError(f"'{address}' has an invalid local part")
    if not _DOMAIN.match(domain):
        raise ValueError(f"'{address}' is not on a valid domain (like example.org)")
    return name, address


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Templates(_Model):
    """The message bodies: a Jinja2 HTML template, a plain-text one, or (best) both."""

    html: Path | None = None
    text: Path | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Templates:
        if self.html is None and self.text is None:
            raise ValueError("give 'html', 'text' or both")
        return self


class TransportSpec(_Model):
    """How messages leave: a relay, direct to MX, or a Maildir outbox."""

    kind: Literal["relay", "mx", "outbox"] = "relay"
    host: str | None = None
    port: int = Field(default=587, ge=1, le=65535)
    ca_file: Path | None = None
    username_env: str | None = None
    password_env: str | None = None
    helo: str | None = None  # EHLO name; default: the machine's FQDN
    path: Path | None = None  # outbox: the Maildir folder
    timeout: float = Field(default=30.0, gt=0)

    @field_validator("username_env", "password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("must be the name of an environment variable (like BLAST_SMTP_USER)")
        return value

    @model_validator(mode="after")
    def _fits_kind(self) -> TransportSpec:
        if self.kind == "relay" and not self.host:
            raise ValueError("a relay transport needs 'host'")
        if self.kind == "outbox" and self.path is None:
            raise ValueError("an outbox transport needs 'path' (a Maildir folder)")
        return self


class Fallback(_Model):
    outbox: Path


class DLPRule(_Model):
    """A regular expression that rendered content must not match (``re`` syntax)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    pattern: Annotated[str, Field(min_length=1)]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class Sending(_Model):
    """How fast and how wide a run sends.

    ``concurrency`` is the number of SMTP connections; ``in_flight`` the number of messages
    claimed and on their way at once (default: 8 per connection, so a pipelining connection
    always has the next message ready to ride with the current one's content). ``in_flight`` is
    also the most rows a killed run can leave ``unknown``.
    """

    concurrency: int = Field(default=50, ge=1, le=2000)
    in_flight: int | None = Field(default=None, ge=1, le=20000)
    rate_per_second: float | None = Field(default=None, gt=0)
    per_domain_connections: int = Field(default=5, ge=1)
    retry_hours: float = Field(default=24, ge=0)
    batch_size: int = Field(default=200, ge=1)

    @property
    def window(self) -> int:
        """Messages in flight at once: ``in_flight``, or 8 per connection, but under a rate
        limit no more than a second's worth (rows waiting on the limiter are claimed, and a
        crash would leave them ``unknown`` without their having been tried) nor fewer than
        one per connection."""
        if self.in_flight is not None:
            return self.in_flight
        window = self.concurrency * 8
        if self.rate_per_second:
            window = min(window, max(self.concurrency, math.ceil(self.rate_per_second)))
        return window


class Tracking(_Model):
    """Open pixel, click redirects and the unsubscribe endpoint, all under ``base_url``.

    Without ``base_url`` there is no tracking and unsubscribe falls back to a mailto link.
    """

    base_url: str | None = None
    opens: bool = False
    clicks: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._~/-]*)?$", value):
            raise ValueError(
                "must be an http(s) URL without query or fragment, like https://t.example.org"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _needs_base(self) -> Tracking:
        if (self.opens or self.clicks) and not self.base_url:
            raise ValueError("opens and clicks need 'base_url'")
        return self


class Campaign(_Model):
    """A campaign file, validated. ``source`` is the file it was loaded from.

    Paths are resolved against the campaign file's folder by ``load_campaign``.
    """

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    contacts: ContactsSpec
    segment: Path
    from_: Annotated[str, Field(alias="from")]
    reply_to: str | None = None
    subject: str
    template: Templates
    postal_address: str
    tls: TLSMode = TLSMode.EXCLUSIVE
    transport: TransportSpec = TransportSpec(kind="mx")
    fallback: Fallback | None = None
    on_unknown: OnUnknown = OnUnknown.SKIP
    dlp: list[DLPRule] = []
    sending: Sending = Sending()
    tracking: Tracking = Tracking()
    schedule: str | None = None
    headers: dict[str, str] = {}
    phi_fields: list[str] | None = None
    # Display name in the To header, a template over contact fields ("{{ first_name }}").
    to_name: str | None = None
    # Where unsubscribe mail goes (List-Unsubscribe mailto); default: reply_to, else from.
    unsubscribe_mailto: str | None = None
    source: SkipJsonSchema[Path | None] = Field(default=None, exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("contacts", mode="before")
    @classmethod
    def _contacts_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("reply_to", "unsubscribe_mailto")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @field_validator("subject", "to_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("must be one line (a header value)")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("must be a 5-field cron expression, like '0 9 * * MON'")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"'{name}' is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"'{name}' is set by blast and cannot be overridden")
            if "\r" in text or "\n" in text:
                raise ValueError(f"'{name}' must be one line")
        return value

    @property
    def from_address(self) -> str:
        """The bare From address (also the envelope sender)."""
        return parse_address(self.from_)[1]

    @property
    def phi(self) -> tuple[str, ...]:
        """PHI field names and globs (``lab_*``): the campaign's list or the default."""
        return tuple(self.phi_fields) if self.phi_fields is not None else DEFAULT_PHI_FIELDS


# --- loading -----------------------------------------------------------------------------------

_HINTS = {
    "password": "secrets come from the environment: use password_env: VARIABLE_NAME",
    "username": "secrets come from the environment: use username_env: VARIABLE_NAME",
}


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names (aliases) allowed at ``loc``, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next(
            (a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items() if n != "source"]
    return []


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        parent = loc[:-1]
        where = _yaml_path(loc)
        if key.lower() in _SECRET_KEYS:
            hint = _HINTS.get(key.lower(), "secrets come from the environment, via *_env names")
            return f"{where}: not allowed: {hint}"
        allowed = _fields_at(Campaign, parent)
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}: unknown field{hint}; allowed: {', '.join(allowed)}"
    message = error["msg"]
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        message = "required"
    if kind == "enum" and "expected" in error.get("ctx", {}):
        message = f"must be one of {error['ctx']['expected']}"
    where = _yaml_path(tuple(p for p in loc if not str(p).startswith("function-")))
    return f"{where}: {message}" if where else message


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file; relative paths resolve against its folder.

    Raises ``ConfigError`` with one line naming the file and the YAML path of the problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of campaign fields at the top level")
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        found = [_describe(error) for error in exc.errors()]
        raise ConfigError(f"{path}: " + f"; {path}: ".join(found)) from None
    base = path.parent
    transport = campaign.transport.model_copy(
        update={
            "ca_file": _resolve(campaign.transport.ca_file, base),
            "path": _resolve(campaign.transport.path, base),
        }
    )
    updates: dict[str, Any] = {
        "contacts": campaign.contacts.model_copy(
            update={"path": _resolve(campaign.contacts.path, base)}
        ),
        "segment": _resolve(campaign.segment, base),
        "template": Templates(
            html=_resolve(campaign.template.html, base),
            text=_resolve(campaign.template.text, base),
        ),
        "transport": transport,
        "fallback": (
            Fallback(outbox=_resolve(campaign.fallback.outbox, base))  # type: ignore[arg-type]
            if campaign.fallback
            else None
        ),
        "source": path,
    }
    return campaign.model_copy(update=updates)


def campaign_schema() -> dict[str, Any]:
    """JSON Schema of a campaign file, for editor completion (``blast schema campaign``)."""
    schema = Campaign.model_json_schema(by_alias=True)
    schema["title"] = "blast campaign"
    props = schema["properties"]
    props["contacts"] = {
        "anyOf": [
            {"type": "string", "description": "a contacts file (CSV, Parquet, NDJSON)"},
            {"$ref": "#/$defs/ContactsSpec"},
        ]
    }
    schema.setdefault("$defs", {})["ContactsSpec"] = ContactsSpec.model_json_schema()
    return schema


def segment_schema() -> dict[str, Any]:
    """JSON Schema of a segment file (``blast schema segment``).

    Segments are parsed into a dataclass rule tree (``blast.segments``), not a pydantic model,
    so the schema is written from its operator and derive tables and stays in step with them.
    """
    from blast.segments.derive import DERIVE_KINDS
    from blast.segments.rules import OPERATORS

    scalar = {"type": ["string", "number", "boolean"]}
    shapes: dict[str, dict[str, Any]] = {
        "scalar": scalar,
        "pair": {"type": "array", "items": scalar, "minItems": 2, "maxItems": 2},
        "list": {"type": "array", "items": scalar},
        "nonempty_list": {"type": "array", "items": scalar, "minItems": 1},
        "true": {"const": True},
        "days": {"type": "integer", "minimum": 0},
        "regex": {"type": "string", "format": "regex"},
    }
    leaves = [
        {
            "type": "object",
            "title": op,
            "properties": {"field": {"type": "string"}, op: shapes[shape]},
            "required": ["field", op],
            "additionalProperties": False,
        }
        for op, shape in OPERATORS.items()
    ]
    rule_ref = {"$ref": "#/$defs/rule"}
    rule = {
        "oneOf": [
            *leaves,
            {
                "type": "object",
                "title": "sql",
                "properties": {"sql": {"type": "string"}},
                "required": ["sql"],
                "additionalProperties": False,
            },
            *(
                {
                    "type": "object",
                    "title": kind,
                    "properties": {kind: {"type": "array", "items": rule_ref}},
                    "required": [kind],
                    "additionalProperties": False,
                }
                for kind in ("all", "any")
            ),
            {
                "type": "object",
                "title": "not",
                "properties": {"not": rule_ref},
                "required": ["not"],
                "additionalProperties": False,
            },
        ]
    }
    derived = {
        "oneOf": [
            {"type": "string", "description": "a Polars SQL expression; may use as_of"},
            *(
                {
                    "type": "object",
                    "properties": {kind: {"type": "string", "description": "a column"}},
                    "required": [kind],
                    "additionalProperties": False,
                }
                for kind in DERIVE_KINDS
                if kind != "sql"
            ),
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "blast segment",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "sensitive": {"type": "boolean", "default": False},
            "derive": {"type": "object", "additionalProperties": derived},
            "where": rule_ref,
            "exclude": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["where"],
        "additionalProperties": False,
        "$defs": {"rule": rule},
    }
