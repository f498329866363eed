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


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    regex: re.Pattern[str]


class DLPScanner:
    """Compiled DLP rules; ``check(part, text)`` raises ``BlockedMessage`` on a match."""

    __slots__ = ("rules",)

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

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, part: str, text: str) -> None:
        """Raise ``BlockedMessage('dlp: RULE in PART')`` if any rule matches ``text``."""
        for rule in self.rules:
            if rule.regex.search(text) is not None:
                raise BlockedMessage(f"dlp: {rule.name} in {part}")

    def first_match(self, text: str) -> str | None:
        """The name of the first rule matching ``text``, or None."""
        for rule in self.rules:
            if rule.regex.search(text) is not None:
                return rule.name
        return None
