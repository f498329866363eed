"""Rendering: Jinja2 sandbox, tracking links, compliance headers, MIME bytes. One ``Renderer``
per run; ``render()`` per recipient.

The sending engine's contract::

    renderer = Renderer.from_campaign(campaign, run_id=run, tracking_key=key, sensitive=True)
    renderer.fields      # frozenset: the contact fields the templates use (freeze only these)
    renderer.links       # tuple: click target URL of each link index (for the tracking app)
    message = renderer.render(row_id=row, recipient=address, context=row_values)
    # -> blast.delivery.Message; raises BlockedMessage(reason) for CR/LF in a header, a DLP
    #    match or a render error. The reason never contains contact values.

The per-message context is the contact's row (fields and derived fields) plus ``campaign``
(name, postal_address, from_name, from_address, reply_to), ``unsubscribe_url``,
``view_in_browser_url`` (None without ``tracking.base_url``) and the ``date`` filter.

Everything that can be done once is done once per run: templates are compiled; the HTML
template's literal ``http(s)`` links in ``<a>``/``<area>`` are found in the template source and
replaced by per-message tracked URLs (``{base_url}/c/{token}``); the open pixel
(``{base_url}/o/{token}.gif``) goes before ``</body>``; static header bytes are prebuilt; the
templates' static lines are quoted-printable-encoded once. A body part goes out 7bit when it can
(ASCII, short lines: ``mime.seven_bit``), else quoted-printable.

Unsubscribe: with ``tracking.base_url`` the link is ``{base_url}/u/{token}`` and
``List-Unsubscribe`` carries it and a mailto, with ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 8058). Without a base URL, the link is
``mailto:{unsubscribe_mailto}?subject=unsubscribe%20{token}`` (unsubscribe_mailto defaults to
reply_to, else from), ``List-Unsubscribe`` has only that mailto, and there is no
``List-Unsubscribe-Post`` (RFC 8058 one-click needs an https URI). A sensitive segment gets
aggregate-only open and click tokens (no recipient); unsubscribe and view tokens always name the
row, since they act for that recipient.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from jinja2 import meta, nodes
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from blast import mime
from blast.config import Campaign, parse_address
from blast.delivery import Message
from blast.dlp import DLPScanner
from blast.errors import BlockedMessage, TemplateError
from blast.tokens import AGGREGATE, TokenKind, signer

__all__ = ["PROVIDED", "RenderedParts", "Renderer"]

# Names the renderer puts in every context (not contact fields).
PROVIDED = frozenset(
    {"campaign", "unsubscribe_url", "view_in_browser_url", "_blast_links", "_blast_open"}
)

_HREF = re.compile(
    r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"'<>\s{}]+)\2""", re.IGNORECASE
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_JINJA_SYNTAX = ("{{", "{%", "{#")
_UNDEFINED = re.compile(
    r"^(?:'[A-Za-z_][A-Za-z0-9_]*' is undefined"
    r"|'[A-Za-z_ ]+ object' has no attribute '[A-Za-z_][A-Za-z0-9_]*')$"
)
_PIXEL = (
    '<img src="{{ _blast_open }}" width="1" height="1" alt="" '
    'style="display:block;width:1px;height:1px;border:0">'
)


class RenderedParts(NamedTuple):
    """One recipient's rendered strings, before MIME (for preview and validate)."""

    subject: str
    to_name: str
    text: str | None
    html: str | None
    headers: tuple[tuple[str, str], ...]
    unsubscribe_url: str


def _date_filter(value: Any, fmt: str = "%d %B %Y") -> str:
    """``{{ last_visit | date('%d %b') }}``: format a date or ISO date string."""
    if isinstance(value, str):
        value = dt.date.fromisoformat(value[:10])
    if isinstance(value, dt.date):
        return value.strftime(fmt)
    raise TypeError("date filter needs a date")


class _TrackingLoader(jinja2.FileSystemLoader):
    """Loads templates and, for the HTML part, rewrites links and inserts the open pixel.

    Rewriting happens on the template *source*, once per run: each literal http(s) link becomes
    ``{{ _blast_links[i] }}``; ``links[i]`` keeps its target. Every template's static lines are
    kept (``static_lines``) to seed the quoted-printable cache.
    """

    def __init__(self, folder: Path, *, clicks: bool, opens: bool, top: str) -> None:
        super().__init__(str(folder))
        self.clicks = clicks
        self.opens = opens
        self.top = top
        self.links: list[str] = []
        self.static_lines: set[str] = set()
        self.sources: dict[str, str] = {}
        self.pixel_placed = False

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if self.clicks:
            source = _HREF.sub(self._track, source)
        if self.opens and not self.pixel_placed:
            ends = list(_BODY_END.finditer(source))
            if ends:
                at = ends[-1].start()
                source = source[:at] + _PIXEL + source[at:]
                self.pixel_placed = True
            elif template == self.top and "{% extends" not in source:
                source = source + _PIXEL
                self.pixel_placed = True
        self.sources[template] = source
        self.static_lines.update(
            line for line in source.split("\n") if not any(s in line for s in _JINJA_SYNTAX)
        )
        return source, filename, uptodate

    def _track(self, match: re.Match[str]) -> str:
        index = len(self.links)
        self.links.append(html.unescape(match.group(3)))
        quote = match.group(2)
        return f"{match.group(1)}{quote}{{{{ _blast_links[{index}] }}}}{quote}"


def _environment(loader: jinja2.BaseLoader | None, *, autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        auto_reload=False,
        keep_trailing_newline=True,
        cache_size=-1,
    )
    env.filters["date"] = _date_filter
    return env


def _syntax_error(where: str, exc: jinja2.TemplateSyntaxError) -> TemplateError:
    return TemplateError(f"{where}: line {exc.lineno}: {exc.message}")


def _load_tree(env: jinja2.Environment, name: str, where: Path) -> list[nodes.Template]:
    """Compile ``name`` and every template it includes/extends; return their ASTs."""
    loader = env.loader
    assert loader is not None
    seen: dict[str, nodes.Template] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        try:
            env.get_template(current)
            tree = env.parse(loader.sources[current], current)  # type: ignore[attr-defined]
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"{where}: template not found: {exc.name}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(str(Path(where).parent / current), exc) from None
        seen[current] = tree
        todo.extend(ref for ref in meta.find_referenced_templates(tree) if ref)
    return list(seen.values())


def _undeclared(trees: list[nodes.Template]) -> set[str]:
    found: set[str] = set()
    for tree in trees:
        found |= meta.find_undeclared_variables(tree)
    return found


def render_error(stage: str, exc: BaseException) -> str:
    """A reason for a failed render naming the template and line, never contact values."""
    line = None
    name = stage
    tb = exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            line = template.get_corresponding_lineno(tb.tb_lineno)
            name = (template.name and (template.filename or template.name)) or stage
        tb = tb.tb_next
    where = f"{name} line {line}" if line else name
    if isinstance(exc, jinja2.UndefinedError):
        detail = str(exc) if _UNDEFINED.match(str(exc)) else "undefined value"
        return f"render error: {where}: {detail}"
    if isinstance(exc, SecurityError):
        return f"render error: {where}: sandbox violation"
    return f"render error: {where}: {type(exc).__name__}"


@dataclass(frozen=True, slots=True)
class _HeaderTemplate:
    name: str
    template: jinja2.Template | None  # None: the value is static
    static: bytes


class Renderer:
    """Renders one campaign's messages for one run. Build with ``from_campaign``."""

    fields: frozenset[str]
    links: tuple[str, ...]

    def __init__(self) -> None:  # use from_campaign
        raise TypeError("use Renderer.from_campaign(...)")

    @classmethod
    def from_campaign(
        cls, campaign: Campaign, *, run_id: str, tracking_key: bytes, sensitive: bool
    ) -> Renderer:
        """Compile the campaign's templates and prebuild everything that is the same per run.

        Raises ``TemplateError`` (a ``ConfigError``) naming the template and line.
        """
        self = object.__new__(cls)
        self._setup(campaign, run_id=run_id, key=tracking_key, sensitive=sensitive)
        return self

    # --- once per run --------------------------------------------------------------------------

    def _setup(self, campaign: Campaign, *, run_id: str, key: bytes, sensitive: bool) -> None:
        self.campaign = campaign
        self.run_id = run_id
        self.sensitive = sensitive
        tracking = campaign.tracking
        base = tracking.base_url
        from_name, from_address = parse_address(campaign.from_)
        self.sender = from_address
        self.domain = from_address.rsplit("@", 1)[1]
        trees: list[nodes.Template] = []
        self.html_uses: set[str] = set()
        self.text_uses: set[str] = set()
        self.html_trees: list[nodes.Template] = []
        self.text_trees: list[nodes.Template] = []
        self.html_sources: list[str] = []
        self.text_sources: list[str] = []

        # Templates: the HTML part (links and pixel rewritten at load), the text part.
        self._html: jinja2.Template | None = None
        self._text: jinja2.Template | None = None
        html_seed: set[str] = set()
        text_seed: set[str] = set()
        self.links = ()
        self.pixel = False
        if campaign.template.html is not None:
            path = Path(campaign.template.html)
            loader = _TrackingLoader(
                path.parent, clicks=tracking.clicks, opens=tracking.opens, top=path.name
            )
            env = _environment(loader, autoescape=True)
            html_trees = _load_tree(env, path.name, path)
            self._html = env.get_template(path.name)
            self.links = tuple(loader.links)
            self.pixel = loader.pixel_placed
            html_seed = loader.static_lines
            self.html_uses = _undeclared(html_trees)
            self.html_trees, self.html_sources = html_trees, list(loader.sources.values())
            trees += html_trees
        text_env = _environment(None, autoescape=False)
        if campaign.template.text is not None:
            path = Path(campaign.template.text)
            loader = _TrackingLoader(path.parent, clicks=False, opens=False, top=path.name)
            text_env = _environment(loader, autoescape=False)
            text_trees = _load_tree(text_env, path.name, path)
            self._text = text_env.get_template(path.name)
            text_seed = loader.static_lines
            self.text_uses = _undeclared(text_trees)
            self.text_trees, self.text_sources = text_trees, list(loader.sources.values())
            trees += text_trees

        def compile_line(where: str, source: str) -> jinja2.Template:
            try:
                trees.append(text_env.parse(source))
                return text_env.from_string(source)
            except jinja2.TemplateSyntaxError as exc:
                raise _syntax_error(f"{campaign.source or 'campaign'}: {where}", exc) from None

        self._subject = compile_line("subject", campaign.subject)
        self._to_name = compile_line("to_name", campaign.to_name) if campaign.to_name else None
        self.header_uses: dict[str, set[str]] = {
            "subject": meta.find_undeclared_variables(text_env.parse(campaign.subject))
        }
        if campaign.to_name:
            self.header_uses["to_name"] = meta.find_undeclared_variables(
                text_env.parse(campaign.to_name)
            )
        self._headers: list[_HeaderTemplate] = []
        for name, value in campaign.headers.items():
            if any(s in value for s in _JINJA_SYNTAX):
                template = compile_line(f"headers.{name}", value)
                self.header_uses[name] = meta.find_undeclared_variables(text_env.parse(value))
                self._headers.append(_HeaderTemplate(name, template, b""))
            else:
                self._headers.append(_HeaderTemplate(name, None, mime.unstructured(name, value)))

        self.fields = frozenset(_undeclared(trees) - PROVIDED - set(text_env.globals))
        self._dlp = DLPScanner((rule.name, rule.pattern) for rule in campaign.dlp)
        self._seeds = {"html": html_seed, "text": text_seed}

        # Tokens and URLs. Unsubscribe and view always per recipient; opens and clicks
        # aggregate-only (computed here, once) for a sensitive segment.
        uses = self.html_uses | self.text_uses
        self._unsub_token = signer(key, TokenKind.UNSUBSCRIBE, run_id)
        self._view_token = (
            signer(key, TokenKind.VIEW, run_id) if base and "view_in_browser_url" in uses else None
        )
        mailto = campaign.unsubscribe_mailto or (
            parse_address(campaign.reply_to)[1] if campaign.reply_to else from_address
        )
        self._mailto = f"mailto:{mailto}?subject=unsubscribe%20"
        self._base = base
        statics: dict[str, Any] = dict(text_env.globals)
        statics["campaign"] = {
            "name": campaign.name,
            "postal_address": campaign.postal_address,
            "from_name": from_name,
            "from_address": from_address,
            "reply_to": campaign.reply_to,
        }
        statics["view_in_browser_url"] = None
        self._click_tokens: list[Callable[[int], str]] = []
        self._open_token: Callable[[int], str] | None = None
        if tracking.clicks and self.links:
            signers = [signer(key, TokenKind.CLICK, run_id, i) for i in range(len(self.links))]
            if sensitive:
                statics["_blast_links"] = [f"{base}/c/{make(AGGREGATE)}" for make in signers]
            else:
                self._click_tokens = signers
        else:
            statics["_blast_links"] = list(self.links)
        if self.pixel:
            make_open = signer(key, TokenKind.OPEN, run_id)
            if sensitive:
                statics["_blast_open"] = f"{base}/o/{make_open(AGGREGATE)}.gif"
            else:
                self._open_token = make_open
        self._statics = statics

        # Static header bytes, and the MIME skeleton.
        static = [b"From: " + mime.mailbox(from_name, from_address) + mime.CRLF]
        if campaign.reply_to:
            rname, raddr = parse_address(campaign.reply_to)
            static.append(b"Reply-To: " + mime.mailbox(rname, raddr) + mime.CRLF)
        if base:
            static.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        static += [h.static for h in self._headers if h.template is None]
        static.append(b"MIME-Version: 1.0\r\n")
        # "=_" cannot occur in quoted-printable text, and a body that contains the boundary is
        # not sent 7bit (mime.seven_bit), so the boundary never collides with a body. Each part's
        # Content-Transfer-Encoding header comes per message, after its Content-Type.
        boundary = b"=_blast_" + mime.message_id(run_id, "", "x").split("@")[0][:16].encode()
        text_head = b"Content-Type: text/plain; charset=utf-8\r\n"
        html_head = b"Content-Type: text/html; charset=utf-8\r\n"
        if self._html is not None and self._text is not None:
            static.append(
                b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
                b"--" + boundary + b"\r\n" + text_head
            )
            self._between = b"\r\n--" + boundary + b"\r\n" + html_head
            self._end = b"\r\n--" + boundary + b"--\r\n"
            inside = boundary.decode("ascii")
        else:
            static.append(html_head if self._html is not None else text_head)
            self._between = b""
            self._end = b"\r\n"
            inside = ""
        self._html_body = mime.BodyEncoder(html_seed, boundary=inside)
        self._text_body = mime.BodyEncoder(text_seed, boundary=inside)
        self._static_headers = b"".join(static)
        self._dynamic_headers = [h for h in self._headers if h.template is not None]

    def dlp_matches_in_templates(self, part: str) -> list[str]:
        """Names of DLP rules that a template line of ``part`` (html or text) matches."""
        found = {self._dlp.first_match(line) for line in self._seeds[part]}
        return sorted(name for name in found if name is not None)

    # --- per message ---------------------------------------------------------------------------

    def _context(self, row_id: int, context: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        ctx = dict(context)
        ctx.update(self._statics)
        token = self._unsub_token(row_id)
        base = self._base
        if base:
            unsubscribe = f"{base}/u/{token}"
            if self._view_token is not None:
                ctx["view_in_browser_url"] = f"{base}/v/{self._view_token(row_id)}"
            if self._click_tokens:
                ctx["_blast_links"] = [f"{base}/c/{make(row_id)}" for make in self._click_tokens]
            if self._open_token is not None:
                ctx["_blast_open"] = f"{base}/o/{self._open_token(row_id)}.gif"
        else:
            unsubscribe = self._mailto + token
        ctx["unsubscribe_url"] = unsubscribe
        return ctx, token

    def render_parts(
        self, *, row_id: int, recipient: str, context: Mapping[str, Any]
    ) -> RenderedParts:
        """Render subject, display name, extra headers and both bodies as strings.

        Raises ``BlockedMessage`` for a render error or a DLP match (not for CR/LF: that is
        checked when the header bytes are built).
        """
        ctx, _ = self._context(row_id, context)
        return self._parts(ctx)

    def _parts(self, ctx: dict[str, Any]) -> RenderedParts:
        stage = "subject"
        try:
            subject = _run(self._subject, ctx)
            stage = "to_name"
            to_name = _run(self._to_name, ctx) if self._to_name is not None else ""
            headers = []
            for header in self._dynamic_headers:
                stage = f"headers.{header.name}"
                headers.append((header.name, _run(header.template, ctx)))  # type: ignore[arg-type]
            stage = "text template"
            text = _run(self._text, ctx) if self._text is not None else None
            stage = "html template"
            body = _run(self._html, ctx) if self._html is not None else None
        except Exception as exc:
            raise BlockedMessage(render_error(stage, exc)) from None
        dlp = self._dlp
        if dlp:
            # Each part whole, as the recipient gets it: see blast.dlp for why that is cheap.
            dlp.check("subject", subject)
            if self._to_name is not None:
                dlp.check("to_name", to_name)
            for name, value in headers:
                dlp.check(name, value)
            if text is not None:
                dlp.check("text", text)
            if body is not None:
                dlp.check("html", body)
        return RenderedParts(subject, to_name, text, body, tuple(headers), ctx["unsubscribe_url"])

    def build(self, parts: RenderedParts, *, row_id: int, recipient: str, token: str) -> Message:
        """MIME bytes for rendered parts (``render`` = ``render_parts`` + ``build``)."""
        mime.check_header("To", parts.to_name)
        message_id = mime.message_id(self.run_id, recipient, self.domain)
        if self._base:
            unsubscribe = (
                b"List-Unsubscribe: <"
                + parts.unsubscribe_url.encode("ascii")
                + b">,\r\n <"
                + (self._mailto + token).encode("ascii")
                + b">\r\n"
            )
        else:
            unsubscribe = b"List-Unsubscribe: <" + parts.unsubscribe_url.encode("ascii") + b">\r\n"
        try:
            chunks = [
                b"Date: " + mime.http_date() + mime.CRLF,
                b"Message-ID: <" + message_id.encode("ascii") + b">\r\n",
                b"To: " + mime.mailbox(parts.to_name, recipient) + mime.CRLF,
                mime.unstructured("Subject", parts.subject),
                unsubscribe,
            ]
            for name, value in parts.headers:
                chunks.append(mime.unstructured(name, value))
            chunks.append(self._static_headers)
            if parts.text is not None:
                chunks += self._text_body.encode(parts.text)
            chunks.append(self._between)
            if parts.html is not None:
                chunks += self._html_body.encode(parts.html)
            chunks.append(self._end)
        except UnicodeEncodeError:
            raise BlockedMessage("render error: text that cannot be encoded as UTF-8") from None
        return Message(
            row_id=row_id,
            sender=self.sender,
            recipient=recipient,
            data=b"".join(chunks),
            message_id=message_id,
            sensitive=self.sensitive,
        )

    def render(self, *, row_id: int, recipient: str, context: Mapping[str, Any]) -> Message:
        """Build one recipient's message. Raises ``BlockedMessage(reason)``; the reason names
        the header, DLP rule or template line, never the content."""
        mime.check_header("To", recipient)
        if not mime.valid_address(recipient):
            raise BlockedMessage("invalid recipient address")
        ctx, token = self._context(row_id, context)
        return self.build(self._parts(ctx), row_id=row_id, recipient=recipient, token=token)


def _run(template: jinja2.Template, ctx: dict[str, Any]) -> str:
    # The context dict already holds the globals, so it is the Context's parent as is (no copy,
    # and no globals key set: that only serves {% import %}, which the sandbox run never needs).
    context = Context(template.environment, ctx, template.name, template.blocks)
    return "".join(template.root_render_func(context))
