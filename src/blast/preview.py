"""``blast preview``: one contact's message, rendered exactly as a run would render it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path

import polars as pl

from blast.config import load_campaign
from blast.delivery import Message
from blast.errors import BlockedMessage, ComplianceError, ConfigError
from blast.render import Renderer
from blast.tokens import generate_key, key_from_env

__all__ = ["Preview", "preview", "show_message"]


@dataclass(frozen=True, slots=True)
class Preview:
    message: Message
    shown: str  # headers and both parts, decoded
    html: str | None
    notes: list[str] = field(default_factory=list)


def show_message(data: bytes) -> tuple[str, str | None]:
    """Headers (decoded) and the decoded parts of a message, and its HTML part."""
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    lines = [f"{name}: {value}" for name, value in parsed.items()]
    html = None
    for part in parsed.walk():
        if part.is_multipart():
            continue
        content = part.get_content().replace("\r\n", "\n")
        lines += ["", f"----- {part.get_content_type()} -----", content.rstrip("\n")]
        if part.get_content_type() == "text/html":
            html = content
    return "\n".join(lines) + "\n", html


def preview(path: str | Path, contact_id: str, *, as_of: dt.date | None = None) -> Preview:
    """Render ``contact_id``'s message for the campaign at ``path``.

    Raises ``ConfigError`` for a bad campaign or an unknown contact, ``ComplianceError`` when the
    message would be blocked (the reason names the rule or template line, not the content).
    """
    from blast.contacts import load_contacts
    from blast.segments import load_segment, prepare

    campaign = load_campaign(path)
    segment = load_segment(campaign.segment)
    key = key_from_env()
    notes = [] if key else ["tracking links signed with a throwaway key (BLAST_TRACKING_KEY unset)"]
    renderer = Renderer.from_campaign(
        campaign, run_id="preview", tracking_key=key or generate_key(), sensitive=segment.sensitive
    )
    contacts = load_contacts(campaign.contacts)
    prepared = prepare(segment, contacts.frame, as_of=as_of, id_column=contacts.id_column)
    id_column, email_column = contacts.id_column, contacts.email_column
    columns = prepared.frame.collect_schema().names()
    missing = sorted(renderer.fields - set(columns))
    if missing:
        raise ConfigError(f"{path}: templates use unknown fields: {', '.join(missing)}")
    keep = list(dict.fromkeys([id_column, email_column, *renderer.fields]))
    match = pl.col(id_column).cast(pl.String) == contact_id
    with contacts.reading():
        found = (
            prepared.frame.filter(match)
            .select(*keep, prepared.member.fill_null(False).alias("__blast_member"))
            .head(1)
            .collect()
        )
    if found.height == 0:
        raise ConfigError(f"--contact: no contact with {id_column} {contact_id}")
    row = found.row(0, named=True)
    if not row.pop("__blast_member"):
        notes.append(f"contact {contact_id} is not in segment '{segment.name}'")
    try:
        message = renderer.render(row_id=0, recipient=row[email_column], context=row)
    except BlockedMessage as exc:
        raise ComplianceError(f"contact {contact_id}: blocked: {exc.reason}") from None
    shown, html = show_message(message.data)
    return Preview(message, shown, html, notes)
