"""Shared fixtures. Generated contacts are made once per session and must not be modified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from blast.generate import generate_contacts

GENERATED_ROWS = 2_000


@pytest.fixture(scope="session")
def make_contacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Generate (once per session, then cached) a contacts file: ``make_contacts(rows, suffix,
    seed=0)`` returns its path, e.g. ``make_contacts(500, ".csv")``. Treat it as read-only."""
    directory = tmp_path_factory.mktemp("generated")
    made: dict[tuple[int, str, int], Path] = {}

    def make(rows: int = GENERATED_ROWS, suffix: str = ".parquet", seed: int = 0) -> Path:
        key = (rows, suffix, seed)
        if key not in made:
            out = directory / f"contacts-{rows}-seed{seed}{suffix}"
            made[key] = generate_contacts(rows, out, seed=seed)
        return made[key]

    return make


@pytest.fixture(scope="session")
def generated_contacts(make_contacts: Callable[..., Path]) -> Path:
    """2,000 generated contacts (seed 0) as Parquet, read-only."""
    return make_contacts(GENERATED_ROWS, ".parquet")
