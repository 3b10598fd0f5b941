"""Alembic environment: connects through shared.db's connection factory.

So migrations reach the database exactly as the functions do: ``DATABASE_URL`` locally, the
Cloud SQL connector with IAM authentication when ``INSTANCE_CONNECTION_NAME`` is set.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from shared.db import connection_factory
from shared.settings import load_settings

if context.config.config_file_name:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

connect = connection_factory(load_settings())
engine = create_engine("postgresql+pg8000://", creator=connect, poolclass=pool.NullPool)

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
