"""Alembic migrations of the SQL catalogue (run through :func:`registry.catalogue.db.upgrade_to_head`)."""
