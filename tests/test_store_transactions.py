"""The job store's connection policy when a transaction cannot be committed.

A pooled connection must never go back to the pool inside a transaction: the
next operation would run inside it, and its write lock would block every
other writer (other threads, ``spectnode retry`` in another process) until the
busy timeout. Produced with real SQLite: a deferred foreign key makes COMMIT
fail and, as SQLite documents, leaves the transaction open; a second, plain
sqlite3 connection is the other writer.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from spectnode.store.database import Database

if TYPE_CHECKING:
    from pathlib import Path


def _other_writer(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, timeout=0.2)
    other.execute("PRAGMA busy_timeout = 200")
    return other


def _with_deferred_foreign_key(db: Database) -> None:
    with db.borrow() as conn:
        conn.execute("PRAGMA foreign_keys = ON")
    with db.write() as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")


def test_a_commit_that_fails_leaves_no_open_transaction_behind(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.sqlite", busy_timeout_s=0.2)
    try:
        _with_deferred_foreign_key(db)
        with pytest.raises(sqlite3.IntegrityError), db.write() as conn:
            conn.execute("INSERT INTO child VALUES (42)")  # no parent 42: only COMMIT finds out
        with db.borrow() as conn:
            assert not conn.in_transaction
            assert conn.execute("SELECT COUNT(*) FROM child").fetchone()[0] == 0
        other = _other_writer(db.path)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock is free: no stale transaction holds it
            other.execute("INSERT INTO parent VALUES (1)")
            other.execute("COMMIT")
        finally:
            other.close()
        with db.write() as conn:  # and the store itself writes on
            conn.execute("INSERT INTO child VALUES (1)")
        assert db.read("SELECT parent FROM child")[0][0] == 1
    finally:
        db.close()


def test_a_write_refused_by_a_busy_database_leaves_the_pool_usable(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.sqlite", busy_timeout_s=0.2)
    other = _other_writer(db.path)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        with pytest.raises(sqlite3.OperationalError, match="locked"), db.write() as conn:
            conn.execute("INSERT INTO store_meta VALUES ('test', 'x')")
        other.execute("ROLLBACK")
        with db.write() as conn:
            conn.execute("INSERT INTO store_meta VALUES ('test', 'y')")
        assert db.read("SELECT value FROM store_meta WHERE key = 'test'")[0][0] == "y"
        with db.borrow() as conn:
            assert not conn.in_transaction
    finally:
        other.close()
        db.close()
