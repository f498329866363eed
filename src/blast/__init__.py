"""blast: personalised email campaigns for healthcare contacts, strict about TLS."""

from blast.errors import BlastError, ConfigError

__all__ = ["BlastError", "ConfigError", "__version__"]

__version__ = "0.1.0"
