"""``blast validate``: does a campaign have everything the law and the design require?

``validate_campaign(path)`` loads the campaign, its segment, its templates and a few sample
contacts, and returns findings, one line each (``campaigns/x.yml: subject: ...``); errors fail
validation, warnings do not. ``check_campaign`` is the pure part (no contacts file needed):

- unsubscribe: both parts use ``{{ unsubscribe_url }}``; one-click needs ``tracking.base_url``
- postal address: set, and shown in both parts (``{{ campaign.postal_address }}`` or the text)
- From: a valid address on a domain (checked when the YAML loads); subject not empty
- sensitive segment: TLS forced or exclusive; no PHI field (``phi_fields``, default
  conditions, medications, procedures, diagnoses, lab_*, vaccinations, and any derived field
  computed from one) reaches the subject, the To display name or an extra header
- DLP rules compile (checked when the YAML loads) and no template line matches one
- rendering N sample contacts: none blocked, unsubscribe link and postal address in both parts
"""

from __future__ import annotations

import datetime as dt
import difflib
import html as html_lib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from jinja2 import nodes

from blast.config import Campaign, TLSMode, load_campaign
from blast.errors import BlockedMessage, ConfigError
from blast.render import PROVIDED, Renderer
from blast.tokens import generate_key

__all__ = ["Finding", "check_campaign", "check_samples", "phi_fields_used", "validate_campaign"]

_TAGS = re.compile(r"<[^>]*>")


@dataclass(frozen=True, slots=True)
class Finding:
    """One validation finding. ``where`` is ``file: yaml.path`` or ``file``."""

    where: str
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.where}: {'' if self.error else 'warning: '}{self.message}"


def _is_phi(name: str, phi: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in phi)


def phi_fields_used(
    names: Iterable[str], phi: Iterable[str], derived: Mapping[str, Iterable[str]] = {}
) -> list[str]:
    """The names that are PHI fields, or derived (transitively) from one, sorted."""
    phi = tuple(phi)
    found = []
    for name in names:
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if _is_phi(current, phi):
                found.append(name)
                break
            todo.extend(derived.get(current, ()))
    return sorted(found)


def _shows_postal_address(
    trees: Iterable[nodes.Template], sources: Iterable[str], address: str
) -> bool:
    """The templates print ``campaign.postal_address`` or contain the address as text."""
    for tree in trees:
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            assert isinstance(node, nodes.Getattr | nodes.Getitem)
            target = node.node
            key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(target, nodes.Name) and (target.name, key) == (
                "campaign",
                "postal_address",
            ):
                return True
    flat = " ".join(address.split())
    return any(flat in " ".join(html_lib.unescape(source).split()) for source in sources)


def check_campaign(
    campaign: Campaign,
    *,
    sensitive: bool,
    derived: Mapping[str, Iterable[str]] = {},
) -> tuple[list[Finding], Renderer | None]:
    """The static checks; returns the findings and the renderer (None if it cannot build)."""
    where = str(campaign.source or "campaign")
    findings: list[Finding] = []

    def error(path: str, message: str) -> None:
        findings.append(Finding(f"{where}: {path}" if path else where, message))

    def warn(path: str, message: str) -> None:
        findings.append(Finding(f"{where}: {path}", message, error=False))

    if not campaign.subject.strip():
        error("subject", "empty: every message needs a subject")
    if not campaign.postal_address.strip():
        error("postal_address", "empty: the sender's postal address is required (CAN-SPAM)")
    if not campaign.tracking.base_url:
        error(
            "tracking.base_url",
            "not set: without it unsubscribe is a mailto only, with no one-click "
            "List-Unsubscribe-Post (RFC 8058)",
        )
    if sensitive and campaign.tls in (TLSMode.NONE, TLSMode.OPPORTUNISTIC):
        error(
            "tls",
            f"'{campaign.tls}' is not allowed for a sensitive segment: use forced or exclusive",
        )
    if campaign.tls is TLSMode.FORCED and campaign.fallback is None:
        warn("fallback", "not set: with tls forced, undeliverable-over-TLS messages will fail")

    try:
        renderer = Renderer.from_campaign(
            campaign, run_id="validate", tracking_key=generate_key(), sensitive=sensitive
        )
    except ConfigError as exc:
        error("", str(exc).removeprefix(f"{where}: "))
        return findings, None

    for part, path, uses, trees, sources in (
        ("html", campaign.template.html, renderer.html_uses, renderer.html_trees,
         renderer.html_sources),
        ("text", campaign.template.text, renderer.text_uses, renderer.text_trees,
         renderer.text_sources),
    ):  # fmt: skip
        if path is None:
            continue
        if "unsubscribe_url" not in uses:
            error(f"template.{part}", f"{path}: no unsubscribe link ({{{{ unsubscribe_url }}}})")
        if campaign.postal_address.strip() and not _shows_postal_address(
            trees, sources, campaign.postal_address
        ):
            error(
                f"template.{part}",
                f"{path}: does not show the postal address ({{{{ campaign.postal_address }}}})",
            )
        for rule in renderer.dlp_matches_in_templates(part):
            error(f"template.{part}", f"{path}: template text matches DLP rule '{rule}'")

    if sensitive:
        for header, uses in renderer.header_uses.items():
            phi = phi_fields_used(uses - PROVIDED, campaign.phi, derived)
            if phi:
                at = header if header in ("subject", "to_name") else f"headers.{header}"
                error(
                    at,
                    f"uses PHI field {', '.join(repr(p) for p in phi)} in a sensitive campaign "
                    "(header values are visible in inbox lists and notifications)",
                )
    return findings, renderer


def check_samples(
    campaign: Campaign,
    renderer: Renderer,
    samples: Iterable[tuple[int, str, Mapping[str, Any]]],
) -> list[Finding]:
    """Render each (id, email, row) sample and check the parts a recipient would see."""
    where = str(campaign.source or "campaign")
    findings: list[Finding] = []
    address = " ".join(campaign.postal_address.split())
    for contact_id, email, row in samples:
        who = f"{where}: sample contact {contact_id}"
        try:
            parts = renderer.render_parts(row_id=1, recipient=email, context=row)
            renderer.render(row_id=1, recipient=email, context=row)
        except BlockedMessage as exc:
            findings.append(Finding(who, f"blocked: {exc.reason}"))
            continue
        if not parts.subject.strip():
            findings.append(Finding(who, "the subject renders empty"))
        for part, body in (("text", parts.text), ("html", parts.html)):
            if body is None:
                continue
            shown = body
            if part == "html":
                shown = html_lib.unescape(_TAGS.sub(" ", body))
            if parts.unsubscribe_url not in body:
                findings.append(Finding(who, f"the {part} part has no unsubscribe link"))
            if address and address not in " ".join(shown.split()):
                findings.append(Finding(who, f"the {part} part does not show the postal address"))
    return findings


def _load_samples(
    campaign: Campaign, renderer: Renderer, n: int, as_of: dt.date | None
) -> tuple[list[tuple[int, str, Mapping[str, Any]]], list[Finding], bool, dict[str, Any]]:
    """Segment and sample contacts; returns samples, findings, sensitive, derived inputs."""
    from blast.contacts import load_contacts
    from blast.segments import audience, load_segment, prepare

    where = str(campaign.source or "campaign")
    segment = load_segment(campaign.segment)
    derived: dict[str, Any] = {item.name: item.inputs for item in segment.derive}
    try:
        contacts = load_contacts(campaign.contacts)
        prepared = prepare(segment, contacts.frame, as_of=as_of, id_column=contacts.id_column)
        frame = audience(prepared)
        columns = frame.collect_schema().names()
    except ConfigError as exc:
        return [], [Finding(where, f"contacts: {exc}")], segment.sensitive, derived
    findings = []
    missing = sorted(renderer.fields - set(columns))
    for name in missing:
        close = difflib.get_close_matches(name, columns, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        findings.append(
            Finding(where, f"templates use '{name}', not a contact or derived field{hint}")
        )
    if missing or n <= 0:
        return [], findings, segment.sensitive, derived
    keep = list(dict.fromkeys([contacts.id_column, contacts.email_column, *renderer.fields]))
    with contacts.reading():
        rows = frame.select(keep).head(n).collect().to_dicts()
    samples: list[tuple[int, str, Mapping[str, Any]]] = [
        (row[contacts.id_column], row[contacts.email_column], row) for row in rows
    ]
    if not samples:
        findings.append(Finding(where, "the segment matches no contacts", error=False))
    return samples, findings, segment.sensitive, derived


def validate_campaign(
    path: str | Path, *, samples: int = 20, as_of: dt.date | None = None
) -> list[Finding]:
    """All checks for one campaign file; ``samples`` contacts from its segment are rendered."""
    try:
        campaign = load_campaign(path)
    except ConfigError as exc:
        return [Finding(str(path), str(exc).removeprefix(f"{path}: "))]
    where = str(path)
    try:
        from blast.segments import load_segment

        segment = load_segment(campaign.segment)
    except ConfigError as exc:
        return [Finding(f"{where}: segment", str(exc))]
    derived = {item.name: item.inputs for item in segment.derive}
    findings, renderer = check_campaign(campaign, sensitive=segment.sensitive, derived=derived)
    if renderer is None:
        return findings
    rows, found, _, _ = _load_samples(campaign, renderer, samples, as_of)
    findings += found
    findings += check_samples(campaign, renderer, rows)
    return findings
