"""A segment file: ``load_segment(path) -> Segment``, with its ``exclude:`` segments resolved.

An excluded path is looked up next to the segment file first, then from the working directory
(so both ``exclude: [recently-contacted.yml]`` and the repository-relative
``exclude: [segments/recently-contacted.yml]`` work). A segment that excludes itself, directly or
through others, is an error naming the chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from blast.errors import ConfigError
from blast.segments.derive import Derived, parse_derive
from blast.segments.rules import All, Node, RuleError, did_you_mean, parse_rule, referenced_names

__all__ = ["Segment", "load_segment", "parse_segment"]

_KEYS = ("name", "description", "sensitive", "derive", "where", "exclude")


@dataclass(frozen=True, slots=True)
class Segment:
    """A validated segment: who matches ``where`` and none of ``exclude``."""

    name: str
    where: Node
    description: str = ""
    sensitive: bool = False
    derive: tuple[Derived, ...] = ()
    exclude: tuple[Segment, ...] = ()
    source: str = "<segment>"

    @property
    def fields(self) -> list[str]:
        """Names the rules read (columns, behavioural and derived fields), in first-use order."""
        return referenced_names(self.where)

    @property
    def derived_names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.derive)

    def input_columns(self) -> set[str]:
        """Every non-derived name this segment and its exclusions read (for projection)."""
        names = set(self.fields)
        for item in self.derive:
            names.update(item.inputs)
        names -= set(self.derived_names)
        for other in self.exclude:
            names |= other.input_columns()
        return names


def _fail(source: str, exc: RuleError | ConfigError) -> ConfigError:
    return ConfigError(f"{source}: {exc}")


def parse_segment(
    data: Any, source: str = "<segment>", *, exclude: tuple[Segment, ...] = ()
) -> Segment:
    """Build a Segment from parsed YAML (``exclude`` entries given already loaded)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with 'name' and 'where'")
    for key in data:
        if key not in _KEYS:
            hint = did_you_mean(str(key), _KEYS)
            raise ConfigError(
                f"{source}: {key}: unknown key{hint}; expected one of {', '.join(_KEYS)}"
            )
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: name: must be a non-empty string")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description: must be a string")
    sensitive = data.get("sensitive", False)
    if not isinstance(sensitive, bool):
        raise ConfigError(f"{source}: sensitive: must be true or false")
    try:
        derive = parse_derive(data.get("derive"))
        where = parse_rule(data["where"]) if data.get("where") is not None else All((), "where")
    except RuleError as exc:
        raise _fail(source, exc) from None
    return Segment(name, where, description, sensitive, derive, exclude, source)


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves an impossible date (``2026-13-01``) as text, so the compiler
    reports it with its YAML path instead of PyYAML failing without one."""

    def construct_yaml_timestamp(self, node: yaml.Node) -> object:  # type: ignore[override]
        try:
            return super().construct_yaml_timestamp(node)  # type: ignore[arg-type]
        except ValueError:
            return self.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _read_yaml(path: Path, shown: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such segment file") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{shown}: YAML syntax error{where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{shown}: YAML syntax error") from None


def _resolve(entry: Any, base: Path, where: str) -> Path:
    if not isinstance(entry, str | Path) or not str(entry):
        raise ConfigError(f"{where}: expected the path of a segment file")
    candidate = Path(entry)
    if candidate.is_absolute():
        return candidate
    beside = base.parent / candidate
    return beside if beside.exists() else candidate


def load_segment(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> Segment:
    """Read, validate and return the segment in ``path``, its ``exclude:`` files loaded too.

    Raises ``ConfigError`` (one line: ``file: yaml.path: problem``) on any invalid content,
    a missing file or an exclusion cycle.
    """
    path = Path(path)
    shown = str(path)
    key = path.resolve()
    if key in _chain:
        names = [p.name for p in (*_chain[_chain.index(key) :], key)]
        raise ConfigError(f"{shown}: exclude cycle: {' -> '.join(names)}")
    data = _read_yaml(path, shown)
    raw = data.get("exclude") if isinstance(data, Mapping) else None
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(f"{shown}: exclude: expected a list of segment files")
    excluded = tuple(
        load_segment(_resolve(entry, path, f"{shown}: exclude[{i}]"), _chain=(*_chain, key))
        for i, entry in enumerate(raw)
    )
    return parse_segment(data, shown, exclude=excluded)
