"""Alembic migration scripts for moodmate's schema, run programmatically by :mod:`storage.migrations`."""
