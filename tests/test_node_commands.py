"""``spectnode serve``/``status``/``retry`` edge cases: a bad bundle, no job store yet."""

from __future__ import annotations

from nodetools import free_port, run_spectnode, write_config


def test_serve_refuses_a_bundle_that_does_not_verify(tmp_path):
    bundle = tmp_path / "not-a-bundle"
    bundle.mkdir()
    config = write_config(tmp_path / "node.yaml", {"node": {"port": free_port()},
                                                   "storage": {"data_dir": str(tmp_path / "data")},
                                                   "model": {"bundle": str(bundle)}})
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
