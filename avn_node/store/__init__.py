"""Store: the SQL source of truth (SQLAlchemy 2 + Alembic) and the durable file store under ``data_dir``."""
