"""Data-loss prevention: regular expressions that rendered content must not match.

Rules come from the campaign's ``dlp:`` list and are compiled once per run. A match blocks that
one message; the reason names the rule and the part (``dlp: ssn in html``), never the content.

Every rule is searched over the whole of every part, so a scan decides exactly what
``rule.search(part)`` decides, matches across line breaks and template/contact-value joins
included. What makes that cheap is a *prefilter* per rule: a pattern that matches wherever the
rule does but starts with a literal, so ``re`` jumps between occurrences of that literal with a
fast substring search instead of trying the rule at every position (a rule that starts with
``\\b`` or ``\\d{3}`` gets no such help from ``re``). The rule itself runs only when its
prefilter finds a candidate. For ``\\b\\d{3}-\\d{2}-\\d{4}\\b`` the prefilter is
``-\\d{2}-\\d{4}\\b``; for ``\\bMRN[:# ]?\\d{6,}\\b`` it is ``MRN[:# ]?\\d{6,}\\b``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from blast.errors import BlockedMessage, ConfigError

__all__ = ["DLPScanner", "prefilter"]


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    regex: re.Pattern[str]
    prefilter: re.Pattern[str] | None  # matches wherever ``regex`` does; None: search ``regex``


def prefilter(regex: re.Pattern[str]) -> re.Pattern[str] | None:
    """A pattern that finds a match wherever ``regex`` does and starts with a literal, or None.

    It is the rule's top-level sequence from its first literal on: if the rule matches at
    position i, that tail matches at some j >= i of the same string (lookarounds and ``\\b`` see
    the same neighbours), so "no prefilter match" proves "no rule match". None when the rule
    already starts with a literal, has no top-level literal (e.g. a top-level alternation), or
    has a backreference (the tail could refer to a group it no longer holds). Built from the
    stdlib's own parse of the rule (``re._parser``); if that private API ever changes, this
    returns None and the rule is searched as is (slower, same decisions).
    """
    try:
        from re import _compiler, _constants, _parser  # type: ignore[attr-defined]

        parsed = _parser.parse(regex.pattern, regex.flags)
        if _has_backreference(parsed, (_constants.GROUPREF, _constants.GROUPREF_EXISTS)):
            return None
        ignorecase = parsed.state.flags & re.IGNORECASE
        start = next(
            (
                index
                for index, (op, arg) in enumerate(parsed.data)
                if op is _constants.LITERAL
                and not (ignorecase and chr(arg).swapcase() != chr(arg))  # cased: no fast scan
            ),
            0,
        )
        if start == 0:  # no literal, or the rule already starts with one
            return None
        tail = _parser.SubPattern(parsed.state, parsed.data[start:])
        return _compiler.compile(tail, regex.flags)
    except Exception:  # an optimisation only: fall back to searching the rule itself
        return None


def _has_backreference(node: object, refs: tuple[object, ...]) -> bool:
    """Whether a parsed pattern (nested ``(op, arg)`` tuples and lists) refers to a group."""
    node = getattr(node, "data", node)  # a SubPattern holds its items in .data
    if not isinstance(node, tuple | list):
        return False
    if node and any(node[0] is ref for ref in refs):
        return True
    return any(_has_backreference(child, refs) for child in node)


class DLPScanner:
    """Compiled DLP rules; ``check(part, text)`` raises ``BlockedMessage`` on a match.

    ``check`` blocks exactly when ``re.search(rule, text)`` finds a match for some rule, and
    names the first such rule in campaign order.
    """

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[tuple[str, str]]) -> None:
        compiled = []
        for index, (name, pattern) in enumerate(rules):
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"dlp[{index}].pattern: invalid regular expression: {exc}"
                ) from None
            compiled.append(_Rule(name, regex, prefilter(regex)))
        self.rules: tuple[_Rule, ...] = tuple(compiled)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, part: str, text: str) -> None:
        """Raise ``BlockedMessage('dlp: RULE in PART')`` if any rule matches ``text``."""
        name = self.first_match(text)
        if name is not None:
            raise BlockedMessage(f"dlp: {name} in {part}")

    def first_match(self, text: str) -> str | None:
        """The name of the first rule matching ``text``, or None."""
        for rule in self.rules:
            if (
                rule.prefilter is None or rule.prefilter.search(text) is not None
            ) and rule.regex.search(text) is not None:
                return rule.name
        return None
