"""Alembic migrations for blast's store, applied programmatically on first use (see ledger)."""
