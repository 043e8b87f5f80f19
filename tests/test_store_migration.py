"""A data directory written by spectnode 0.1.0 opens with the one-schema job store, nothing lost.

The schema below is spectnode 0.1.0's, copied verbatim from its ``store.py``
(``_SCHEMA``, schema version 1) and ``dispatch/outbox.py`` (``_TABLE`` and
``_INDEXES``, the table with the generation column), so the test does not
depend on the code it checks.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from spectnode.config import parse_config
from spectnode.node.status import status_report
from spectnode.result import StudyResult
from spectnode.store import SCHEMA_VERSION, JobStore, StoreError

RELEASE_0_1_0_STORE = """
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    reason TEXT,
    error_stage TEXT,
    report_pending INTEGER NOT NULL DEFAULT 0,
    calling_ae TEXT,
    peer_address TEXT,
    peer_port INTEGER,
    called_ae TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    content_version INTEGER NOT NULL DEFAULT 0,
    checked_version INTEGER NOT NULL DEFAULT 0,
    completed_by TEXT,
    result TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_by_state ON studies(state);
CREATE TABLE IF NOT EXISTS instances (
    study_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT,
    sop_class_uid TEXT,
    modality TEXT,
    transfer_syntax TEXT,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT,
    received_at REAL NOT NULL,
    PRIMARY KEY (study_uid, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS outputs (
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    is_current INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (study_uid, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outputs_by_uid ON outputs(sop_instance_uid);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_study ON events(study_uid);
"""
RELEASE_0_1_0_OUTBOX = """
CREATE TABLE IF NOT EXISTS outbox_items (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid        TEXT    NOT NULL,
    generation       INTEGER NOT NULL DEFAULT 1,
    destination      TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    files_json       TEXT    NOT NULL,
    files_key        TEXT    NOT NULL,
    sender_ae_title  TEXT,
    sender_host      TEXT,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'dead', 'superseded')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    last_error       TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    claimed_at       REAL,
    delivered_at     REAL,
    UNIQUE (study_uid, destination, kind, files_key)
);
CREATE INDEX IF NOT EXISTS outbox_items_due ON outbox_items (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_items_study ON outbox_items (study_uid, generation);
"""
# The outbox table of the releases before 0.1.0 took generations (no generation, no 'superseded').
FIRST_OUTBOX = """
CREATE TABLE outbox_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, destination TEXT NOT NULL,
    kind TEXT NOT NULL, files_json TEXT NOT NULL, files_key TEXT NOT NULL, sender_ae_title TEXT,
    sender_host TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, claimed_at REAL, delivered_at REAL,
    UNIQUE (study_uid, destination, kind, files_key));
"""

CLASSIFIED_RESULT = {
    "study_uid": "1.1", "outcome": "classified", "reason": None, "reason_code": None,
    "views": ["anterior", "posterior"], "label": "metastatic", "second_label": "both",
    "probabilities": {"normal": 0.05, "metastatic": 0.8, "arthritic": 0.05, "both": 0.1},
    "view_sources": {"anterior": {"sop_instance_uid": "1.1.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.20",
                                  "frame_number": 1, "pixel_spacing_mm": [2.4, 2.4]},
                     "posterior": {"sop_instance_uid": "1.1.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.20",
                                   "frame_number": 2, "pixel_spacing_mm": [2.4, 2.4]}},
}
NOT_ASSESSABLE_RESULT = {"study_uid": "2.1", "outcome": "not_assessable", "reason": "only a CT",
                         "reason_code": "wrong_modality", "views": [], "label": None, "second_label": None,
                         "probabilities": {}}


def write_release_data_dir(root: Path, outbox_ddl: str = RELEASE_0_1_0_OUTBOX) -> Path:
    """A data directory as spectnode 0.1.0 left it: three studies, outputs, and outbox items in every state."""
    db = root / "spectnode.sqlite"
    root.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as conn:
        conn.executescript(RELEASE_0_1_0_STORE)
        conn.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
        conn.executescript(outbox_ddl)
        studies = [
            ("1.1", "reported", 2, None, None, 0, json.dumps(CLASSIFIED_RESULT)),
            ("2.1", "not_assessable", 1, "only a CT", None, 0, json.dumps(NOT_ASSESSABLE_RESULT)),
            ("3.1", "error", 1, "classify failed: OSError: disk", "complete", 0, None),
        ]
        for uid, state, generation, reason, error_stage, pending, result in studies:
            conn.execute(
                "INSERT INTO studies (study_uid, state, generation, reason, error_stage, report_pending, calling_ae, "
                "peer_address, peer_port, called_ae, instance_count, first_received, last_received, "
                "content_version, checked_version, completed_by, result, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'CAMERA', '10.0.0.5', 40000, 'SPECTNODE', 1, 100, 100, 1, 1, 'content', "
                "?, 200)",
                (uid, state, generation, reason, error_stage, pending, result),
            )
            conn.execute("INSERT INTO instances VALUES (?, ?, '9.9', '1.2.840.10008.5.1.4.1.1.20', 'NM', "
                         "'1.2.840.10008.1.2.1', ?, ?, 1000, 'CAMERA', 100)",
                         (uid, f"{uid}.1", str(root / "spool" / uid / f"{uid}.1.dcm"), "ab" * 32))
            conn.execute("INSERT INTO events (study_uid, at, state, message) VALUES (?, 100, 'received', 'first')",
                         (uid,))
        for generation, current in ((1, 0), (2, 1)):
            conn.execute("INSERT INTO outputs VALUES ('1.1', ?, 'sr', ?, '1.2.840.10008.5.1.4.1.1.88.34', '7.7', ?, ?, "
                         "150)", (generation, f"5.5.{generation}", str(root / f"results/1.1/SR_{generation}.dcm"),
                                  current))
        items = [("1.1", "pacs", "sr", "delivered", 1, None), ("1.1", "pacs", "sc", "dead", 20,
                                                               "gave up after 20 attempts: connection refused"),
                 ("1.1", "local", "sr", "pending", 2, "timed out"), ("1.1", "old", "sr", "superseded", 0, None)]
        columns = "generation, " if "generation" in outbox_ddl else ""
        for n, (uid, dest, kind, state, attempts, error) in enumerate(items):
            values = (2,) if columns else ()
            conn.execute(
                f"INSERT INTO outbox_items (study_uid, {columns}destination, kind, files_json, files_key, "
                "sender_ae_title, sender_host, state, attempts, next_attempt_at, last_error, created_at, updated_at) "
                f"VALUES (?, {'?, ' if columns else ''}?, ?, ?, ?, 'CAMERA', '10.0.0.5', ?, ?, 300, ?, 150, 160)",
                (uid, *values, dest, kind, json.dumps([f"/r/{n}.dcm"]), f"key{n}",
                 "dead" if state == "superseded" and not columns else state, attempts, error),
            )
    return db


def test_a_data_dir_of_release_0_1_0_opens_with_everything_intact(tmp_path: Path) -> None:
    db = write_release_data_dir(tmp_path / "data")
    with JobStore(db) as store:
        studies = {s.study_uid: s for s in store.studies()}
        assert {uid: (s.state, s.generation) for uid, s in studies.items()} == {
            "1.1": ("reported", 2), "2.1": ("not_assessable", 1), "3.1": ("error", 1)}
        assert studies["1.1"].result == StudyResult.from_json(CLASSIFIED_RESULT)
        assert studies["1.1"].result.view_sources["posterior"].frame_number == 2
        assert studies["2.1"].result.reason_code == "wrong_modality"
        assert (studies["3.1"].reason, studies["3.1"].error_stage) == ("classify failed: OSError: disk", "complete")
        assert studies["1.1"].peer is not None and studies["1.1"].peer.address == "10.0.0.5"
        assert [o.sop_instance_uid for o in store.outputs("1.1")] == ["5.5.2"]
        assert store.predecessor_sr("1.1", 3).sop_instance_uid == "5.5.2"
        assert [e[2] for e in store.events("1.1")] == ["first"]
        assert len(store.instances("2.1")) == 1
        items = store.outbox.list_items()
        assert [(i.id, i.destination, i.kind, i.state, i.attempts, i.generation) for i in items] == [
            (1, "pacs", "sr", "delivered", 1, 2), (2, "pacs", "sc", "dead", 20, 2), (3, "local", "sr", "pending", 2, 2),
            (4, "old", "sr", "superseded", 0, 2)]
        (dead,) = store.outbox.dead_letters()
        assert dead.last_error == "gave up after 20 attempts: connection refused"
        assert dead.sender is not None and dead.sender.ae_title == "CAMERA"
        # The store can go on: a retry of the dead letter and of the study in error.
        assert store.outbox.retry(item_id=2) == 1 and store.retry_study("3.1") == "complete"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
    report = status_report(parse_config({"storage": {"data_dir": str(tmp_path / "data")}}, check_dirs=False))
    assert report["counts"]["reported"] == 1 and report["outbox"]["counts"]["pending"] == 2


def test_an_outbox_table_of_the_first_version_is_upgraded(tmp_path: Path) -> None:
    db = write_release_data_dir(tmp_path / "data", outbox_ddl=FIRST_OUTBOX)
    with JobStore(db) as store:
        items = store.outbox.list_items()
        # Each item takes the generation its study has now (1.1 is at generation 2).
        assert [(i.id, i.study_uid, i.generation, i.state, i.attempts) for i in items] == [
            (1, "1.1", 2, "delivered", 1), (2, "1.1", 2, "dead", 20), (3, "1.1", 2, "pending", 2),
            (4, "1.1", 2, "dead", 0)]
        assert store.outbox.enqueue("1.1", "local", "sr", [Path("/r/new.dcm")], generation=3) == 5
        assert store.outbox.get(3).state == "superseded"


def test_a_job_store_of_a_newer_spectnode_is_refused(tmp_path: Path) -> None:
    db = write_release_data_dir(tmp_path / "data")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE store_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        JobStore(db)


def test_an_unusable_outbox_table_is_a_store_error(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(RELEASE_0_1_0_STORE)
        conn.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE outbox_items (something_else TEXT)")
    with pytest.raises(StoreError, match="cannot open the job store"):
        JobStore(db)
