"""blast's exception tree.

Third-party exceptions (PyYAML, Polars, Jinja2, aiosmtplib, SQLAlchemy) are translated once, at
the boundary where they happen, into one of these. Messages never carry a contact attribute
(ePHI): they name files, YAML paths, columns, template lines, hosts and reply codes only::

    BlastError
    ├── ConfigError                 bad user input; the CLI prints one line and exits 2
    │   ├── DataError               contacts file or table: missing, bad column, bad date, dup id
    │   └── TemplateError           template syntax, missing variable, sandbox violation
    ├── ComplianceError             a campaign lacks a required element (validate exits 1)
    ├── BlockedMessage              one message refused for its content (DLP, CR/LF in a header)
    ├── DeliveryError               one SMTP attempt failed
    │   ├── TemporaryFailure        4xx, disconnect, timeout, TLS not (yet) possible: retry later
    │   │   └── (also ConnectionError)
    │   ├── PermanentFailure        5xx: bounced
    │   └── TLSRequired             the mode forbids plaintext and TLS could not be had
    └── StoreError                  the ledger database could not be used
"""

from __future__ import annotations

__all__ = [
    "BlastError",
    "BlockedMessage",
    "ComplianceError",
    "ConfigError",
    "DataError",
    "DeliveryError",
    "PermanentFailure",
    "StoreError",
    "TLSRequired",
    "TemplateError",
    "TemporaryFailure",
]


class BlastError(Exception):
    """Root of every error blast raises on purpose."""


class ConfigError(BlastError, ValueError):
    """A usage or configuration error: a file, a YAML field, an option.

    The message is one line and names where the problem is (``file: yaml.path: what``).
    """

    exit_code = 2


class DataError(ConfigError):
    """The contacts source cannot be used as given (missing file or column, bad date, dup id)."""


class TemplateError(ConfigError):
    """A template does not compile or render: syntax, undefined variable, sandbox violation."""


class ComplianceError(BlastError):
    """A campaign lacks an element the law or the design requires (unsubscribe, address...)."""

    exit_code = 1


class BlockedMessage(BlastError):
    """One message is refused for its content; ``reason`` is safe to store (no content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeliveryError(BlastError):
    """One delivery attempt failed. ``code`` is the SMTP reply code when there was one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(DeliveryError, ConnectionError):
    """Worth retrying later: a 4xx reply, a disconnect, a timeout."""


class PermanentFailure(DeliveryError):
    """Not worth retrying: a 5xx reply."""


class TLSRequired(TemporaryFailure):
    """The TLS mode forbids plaintext and no acceptable TLS session could be established."""


class StoreError(BlastError):
    """The ledger database could not be opened, migrated or written."""
