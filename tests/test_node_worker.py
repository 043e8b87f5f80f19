"""The node's stage threads in-process: shutdown while a stage is still busy."""

from __future__ import annotations

import logging
import threading

from spectnode.config import parse_config
from spectnode.node.worker import Node


def test_stop_leaves_the_connections_of_a_still_busy_stage_open(tmp_path, caplog):
    cfg = parse_config({"node": {"ae_title": "SPECTNODE", "bind_address": "127.0.0.1"},
                        "storage": {"data_dir": str(tmp_path / "data")}})
    loading = threading.Event()
    release = threading.Event()

    def slow_loader(_bundle):
        # The classify stage loads the model first; here it takes longer than the shutdown waits.
        loading.set()
        release.wait(30)
        raise RuntimeError("no model in this test")

    caplog.set_level(logging.INFO, logger="spectnode.node")
    node = Node(cfg, port=0, classifier_loader=slow_loader)
    node.start()
    assert loading.wait(30)
    node.stop(timeout=0.5)
    assert any("still busy at shutdown" in r.getMessage() for r in caplog.records)
    process = next(stage for stage in node._stages if stage.name == "classify")
    assert process.is_alive()
    release.set()  # the stage finishes its step: it still reads the job store, then ends
    process.join(30)
    assert not process.is_alive()
    assert any("the model cannot be loaded" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()], \
        [r.getMessage() for r in caplog.records]
    node.store.close()
