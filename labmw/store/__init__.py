"""Durable storage (the only package that imports sqlite3)."""

from labmw.store.sqlite import History, HistoryReader, OutboxEntry, Store, Tx

__all__ = ["History", "HistoryReader", "OutboxEntry", "Store", "Tx"]
