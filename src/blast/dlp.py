"""Data-loss prevention: regular expressions that rendered content must not match.

Rules come from the campaign's ``dlp:`` list and are compiled once per run. A match blocks that
one message; the reason names the rule and the part (``dlp: ssn in html``), never the content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from blast.errors import BlockedMessage, ConfigError

__all__ = ["DLPScanner"]

_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    regex: re.Pattern[str]


class DLPScanner:
    """Compiled DLP rules; ``check(part, text)`` raises ``BlockedMessage`` on a match.

    The rules are also joined into one alternation, so clean text (the usual case) costs one
    scan, not one per rule; a rule with a backreference or a named group is kept apart.
    """

    __slots__ = ("_any", "rules")

    def __init__(self, rules: Iterable[tuple[str, str]]) -> None:
        compiled = []
        for index, (name, pattern) in enumerate(rules):
            try:
                compiled.append(_Rule(name, re.compile(pattern)))
            except re.error as exc:
                raise ConfigError(
                    f"dlp[{index}].pattern: invalid regular expression: {exc}"
                ) from None
        self.rules: tuple[_Rule, ...] = tuple(compiled)
        joinable = [
            r for r in compiled if not r.regex.groupindex and not _BACKREF.search(r.regex.pattern)
        ]
        scanners: list[re.Pattern[str]] = []
        if len(joinable) > 1:
            try:
                scanners.append(re.compile("|".join(f"(?:{r.regex.pattern})" for r in joinable)))
            except re.error:  # e.g. a rule with global inline flags
                scanners.extend(r.regex for r in joinable)
        else:
            scanners.extend(r.regex for r in joinable)
        scanners.extend(r.regex for r in compiled if r not in joinable)
        self._any = tuple(scanners)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, part: str, text: str) -> None:
        """Raise ``BlockedMessage('dlp: RULE in PART')`` if any rule matches ``text``."""
        for scanner in self._any:
            if scanner.search(text) is not None:
                raise BlockedMessage(f"dlp: {self.first_match(text)} in {part}")

    def first_match(self, text: str) -> str | None:
        """The name of the first rule matching ``text``, or None."""
        for rule in self.rules:
            if rule.regex.search(text) is not None:
                return rule.name
        return None
