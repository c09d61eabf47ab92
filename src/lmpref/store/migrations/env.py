"""Alembic environment: always run programmatically by `lmpref.store.db.upgrade`."""

from alembic import context

from lmpref.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
