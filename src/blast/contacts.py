"""Load contacts as a Polars LazyFrame from CSV, Parquet, NDJSON or a SQL table.

(First draft: only the spec exists; the loader is being written.)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["ContactsSpec"]


class ContactsSpec(BaseModel):
    """Where contacts come from. Exactly one of ``path`` or ``url`` (+ ``table``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = None
    url: str | None = None
    table: str | None = None
    id: str = "id"
    email: str = "email"
    list_separator: str = ";"

    @model_validator(mode="after")
    def _one_source(self) -> ContactsSpec:
        if (self.path is None) == (self.url is None):
            raise ValueError("give either 'path' or 'url' (with 'table'), not both")
        if self.url is not None and not self.table:
            raise ValueError("'url' needs 'table'")
        return self
