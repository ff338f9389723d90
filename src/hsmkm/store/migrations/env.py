"""Alembic's environment: migrations run on the connection the store hands over, never from an ini file."""

from __future__ import annotations

from alembic import context

from hsmkm.store.schema import metadata

connection = context.config.attributes["connection"]
# The caller holds the write transaction (BEGIN IMMEDIATE on SQLite): all revisions commit together.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, transactional_ddl=False)
context.run_migrations()
