"""Alembic environment: blast runs migrations programmatically over a connection it passes in.

``blast.ledger`` builds the Alembic ``Config`` in code (no ``alembic.ini`` at runtime) and puts the
open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
