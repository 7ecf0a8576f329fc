"""Durable storage (the only package that imports sqlite3)."""

from labmw.store.sqlite import OutboxEntry, Store, Tx

__all__ = ["OutboxEntry", "Store", "Tx"]
