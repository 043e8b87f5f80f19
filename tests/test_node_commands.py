"""``spectnode serve``/``status``/``retry`` edge cases: a bad bundle, no job store yet."""

from __future__ import annotations

from nodetools import free_port, run_spectnode, write_config


def test_serve_refuses_a_bundle_that_does_not_verify(tmp_path):
    bundle = tmp_path / "not-a-bundle"
    bundle.mkdir()
    config = write_config(tmp_path / "node.yaml", {"node": {"port": free_port()},
                                                   "storage": {"data_dir": str(tmp_path / "data")},
                                                   "model": {"bundles": [str(bundle)]}})
    proc = run_spectnode("serve", "--config", str(config), timeout=60)
    assert proc.returncode == 2
    assert "model.bundle" in proc.stdout + proc.stderr
    assert not (tmp_path / "data" / "spectnode.sqlite").exists()


def test_status_and_retry_before_the_node_ever_ran(tmp_path):
    config = write_config(tmp_path / "node.yaml", {"storage": {"data_dir": str(tmp_path / "data")}})
    status = run_spectnode("status", "--config", str(config))
    assert status.returncode == 0 and "no job store" in status.stdout
    retry = run_spectnode("retry", "--config", str(config), "--all")
    assert retry.returncode == 1 and "no job store" in retry.stderr


def test_serve_with_an_unusable_outbox_table_exits_1_with_the_reason(tmp_path, tmp_path_factory):
    import sqlite3

    from nodetools import tiny_bundle

    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "spectnode.sqlite") as db:
        db.execute("CREATE TABLE outbox_items (something_else TEXT)")  # not the outbox this node knows
    config = write_config(tmp_path / "node.yaml", {"node": {"port": free_port()},
                                                   "storage": {"data_dir": str(data)},
                                                   "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]}})
    proc = run_spectnode("serve", "--config", str(config), timeout=120)
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "cannot open the job store" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
