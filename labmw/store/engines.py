"""Which engine holds the store: a SQLite file (the default) or a PostgreSQL URL (``[store] url``)."""

from __future__ import annotations

from pathlib import Path

from labmw.store.sqlite import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_store(target: str | Path, *, site: str = "") -> Store:
    """Open the store at ``target`` (a SQLite file path or a PostgreSQL URL); raises StoreError."""
    if is_postgres_url(target):
        # Imported here: a SQLite-only installation never loads psycopg.
        from labmw.store.postgres import PgStore

        store: Store = PgStore.open_url(str(target))
    else:
        store = Store.open(Path(target))
    store.site = site
    return store
