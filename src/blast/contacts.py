"""Load contacts as a Polars LazyFrame from CSV, Parquet, NDJSON or a SQL table.

(First draft: only the spec exists; the loader is being written.)
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from blast.errors import DataError

__all__ = ["ContactsSpec", "FileFormat", "file_format"]


class FileFormat(enum.Enum):
    """A contacts file format, chosen by extension."""

    CSV = "csv"
    PARQUET = "parquet"
    NDJSON = "ndjson"


_EXTENSIONS = {
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".pq": FileFormat.PARQUET,
    ".ndjson": FileFormat.NDJSON,
    ".jsonl": FileFormat.NDJSON,
}


def file_format(path: Path | str) -> FileFormat:
    """The format of a contacts file from its extension; a ``DataError`` for any other."""
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        allowed = ", ".join(_EXTENSIONS)
        raise DataError(
            f"{path}: unknown contacts file extension {suffix or '(none)'!r} (use {allowed})"
        ) from None


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
