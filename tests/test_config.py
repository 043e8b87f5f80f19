"""Configuration validation: every error names the file and the key, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spectnode.config import Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "spectnode.yaml"


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spectnode", "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def base(tmp_path: Path) -> dict:
    """A minimal valid configuration whose directories live in tmp_path."""
    return {"storage": {"data_dir": str(tmp_path / "data")}}


def test_shipped_file_is_the_builtin_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data_dir is relative to the working directory
    assert load_config(SHIPPED) == load_config(None)
    assert (tmp_path / "spectnode-data" / "delivered").is_dir()


def test_shipped_file_passes_cli_check(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spectnode", "config", "check", str(SHIPPED)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_empty_file_gives_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.node.ae_title == "SPECTNODE" and cfg.node.port == 11112
    assert cfg.destinations[0].type == "folder"
    assert cfg.model.bundles is None


def test_full_valid_config(tmp_path, base):
    base["node"] = {"ae_title": "BONES", "port": 104, "bind_address": "0.0.0.0",
                    "allowed_calling_ae_titles": ["GECAMERA", "ORTHANC"]}
    base["destinations"] = [
        {"name": "pacs", "type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242,
         "outputs": ["sr"]},
        {"name": "archive", "type": "folder", "path": str(tmp_path / "archive"), "outputs": ["sr", "sc"]},
    ]
    base["destinations"].append({"name": "back", "type": "sender", "port": 11113, "outputs": ["sr"]})
    base["completion"] = {"timeout_seconds": 30}
    base["report"] = {"not_assessable_sr": False}
    base["dispatch"] = {"max_attempts": 3, "retry_base_seconds": 1, "retry_max_seconds": 30}
    base["logging"] = {"level": "DEBUG", "format": "json", "file": str(tmp_path / "log" / "node.log")}
    cfg = load_config(write_config(tmp_path, base))
    assert isinstance(cfg, Config)
    assert cfg.node.allowed_calling_ae_titles == ("GECAMERA", "ORTHANC")
    assert cfg.destinations[0].port == 4242 and cfg.destinations[0].outputs == ("sr",)
    assert cfg.completion.timeout_seconds == 30.0
    assert cfg.destinations[2].type == "sender" and cfg.destinations[2].port == 11113
    assert cfg.report.not_assessable_sr is False and cfg.dispatch.max_attempts == 3
    assert (tmp_path / "archive").is_dir() and (tmp_path / "log").is_dir()


# (mutation applied to the base config, dotted key expected in the message, words expected)
ERROR_CASES = {
    "unknown top-level key": (lambda c: c.update(nodes={}), "nodes", "unknown key"),
    "unknown nested key": (lambda c: c.update(node={"allowed_calling_ae_title": ["X"]}),
                           "node.allowed_calling_ae_title", "unknown key"),
    "unknown destination key": (lambda c: c.update(destinations=[{"name": "a", "path": "x", "colour": 1}]),
                                "destinations[0].colour", "unknown key"),
    "port is a string": (lambda c: c.update(node={"port": "eleven"}), "node.port", "must be an integer"),
    "port is a bool": (lambda c: c.update(node={"port": True}), "node.port", "must be an integer"),
    "ae title is a number": (lambda c: c.update(node={"ae_title": 123}), "node.ae_title", "must be a string"),
    "section is a list": (lambda c: c.update(node=["x"]), "node", "must be a mapping"),
    "allowed titles not a list": (lambda c: c.update(node={"allowed_calling_ae_titles": "PACS"}),
                                  "node.allowed_calling_ae_titles", "must be a list"),
    "timeout is a string": (lambda c: c.update(completion={"timeout_seconds": "soon"}),
                            "completion.timeout_seconds", "must be a number"),
    "bad log level": (lambda c: c.update(logging={"level": "LOUD"}), "logging.level", "must be one of"),
    "bad output kind": (lambda c: c.update(destinations=[{"name": "a", "path": "x", "outputs": ["pdf"]}]),
                        "destinations[0].outputs[0]", "must be one of"),
    "ae title too long": (lambda c: c.update(node={"ae_title": "SEVENTEEN_CHARS_X"}), "node.ae_title",
                          "at most 16"),
    "ae title backslash": (lambda c: c.update(node={"ae_title": "BONE\\SCAN"}), "node.ae_title", "backslash"),
    "ae title control char": (lambda c: c.update(node={"ae_title": "BONE\tSCAN"}), "node.ae_title",
                              "control character"),
    "ae title empty": (lambda c: c.update(node={"ae_title": "   "}), "node.ae_title", "must not be empty"),
    "allowed title too long": (lambda c: c.update(node={"allowed_calling_ae_titles": ["OK", "X" * 17]}),
                               "node.allowed_calling_ae_titles[1]", "at most 16"),
    "allowed titles empty": (lambda c: c.update(node={"allowed_calling_ae_titles": []}),
                             "node.allowed_calling_ae_titles", "is empty"),
    "destination ae title backslash": (
        lambda c: c.update(destinations=[{"name": "p", "type": "dicom", "ae_title": "A\\B", "host": "h",
                                          "port": 104}]), "destinations[0].ae_title", "backslash"),
    "port zero": (lambda c: c.update(node={"port": 0}), "node.port", "out of range"),
    "port too high": (lambda c: c.update(node={"port": 70000}), "node.port", "out of range"),
    "destination port out of range": (
        lambda c: c.update(destinations=[{"name": "p", "type": "dicom", "ae_title": "PACS", "host": "h",
                                          "port": 65536}]), "destinations[0].port", "out of range"),
    "dicom destination without host": (
        lambda c: c.update(destinations=[{"name": "p", "type": "dicom", "ae_title": "PACS", "port": 104}]),
        "destinations[0].host", "required"),
    "duplicate destination names": (
        lambda c: c.update(destinations=[{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]),
        "destinations[1].name", "more than one"),
    "missing destination name": (lambda c: c.update(destinations=[{"path": "x"}]), "destinations[0].name",
                                 "is required"),
    "sender destination without port": (lambda c: c.update(destinations=[{"name": "back", "type": "sender"}]),
                                        "destinations[0].port", "required for a sender"),
    "sender destination with host": (
        lambda c: c.update(destinations=[{"name": "back", "type": "sender", "port": 104, "host": "x"}]),
        "destinations[0].host", "does not apply"),
    "not_assessable_sr not a bool": (lambda c: c.update(report={"not_assessable_sr": "yes"}),
                                     "report.not_assessable_sr", "must be true/false"),
    "max attempts zero": (lambda c: c.update(dispatch={"max_attempts": 0}), "dispatch.max_attempts",
                          "at least 1"),
    "no parallel sends": (lambda c: c.update(dispatch={"parallel_sends": 0}), "dispatch.parallel_sends",
                          "from 1 to 32"),
    "parallel sends not an integer": (lambda c: c.update(dispatch={"parallel_sends": 2.5}),
                                      "dispatch.parallel_sends", "integer"),
    "retry max below base": (lambda c: c.update(dispatch={"retry_base_seconds": 60, "retry_max_seconds": 10}),
                             "dispatch.retry_max_seconds", "at least dispatch.retry_base_seconds"),
    "bundle missing": (lambda c: c.update(model={"bundles": ["/nonexistent/bundle"]}), "model.bundles[0]",
                       "does not exist"),
    "address not an address": (lambda c: c.update(node={"allowed_addresses": ["10.0.0.0/8", "camera"]}),
                               "node.allowed_addresses[1]", "not an IP address or CIDR network"),
    "cidr with host bits": (lambda c: c.update(node={"allowed_addresses": ["10.1.2.3/16"]}),
                            "node.allowed_addresses[0]", "host bits set"),
    "addresses empty": (lambda c: c.update(node={"allowed_addresses": []}), "node.allowed_addresses", "is empty"),
    "max associations zero": (lambda c: c.update(node={"max_associations": 0}), "node.max_associations",
                              "at least 1"),
    "per peer above total": (lambda c: c.update(node={"max_associations": 4, "max_associations_per_peer": 5}),
                             "node.max_associations_per_peer", "not be more than node.max_associations"),
    "pdu timeout zero": (lambda c: c.update(node={"timeouts": {"pdu_seconds": 0}}), "node.timeouts.pdu_seconds",
                         "greater than 0"),
    "unknown timeout": (lambda c: c.update(node={"timeouts": {"artim": 5}}), "node.timeouts.artim", "unknown key"),
    "tls mode bare off": (lambda c: c.update(node={"tls": {"mode": False}}), "node.tls.mode", "must be one of"),
    "tls required without certificate": (lambda c: c.update(node={"tls": {"mode": "required"}}),
                                          "node.tls.certificate", "is required with node.tls.mode: required"),
    "tls certificate missing file": (
        lambda c: c.update(node={"tls": {"mode": "required", "certificate": "/nonexistent.pem",
                                         "private_key": "/nonexistent.key"}}), "node.tls.certificate", "not a file"),
    "tls certificate not a certificate": (
        lambda c: c.update(node={"tls": {"mode": "required", "certificate": __file__, "private_key": __file__}}),
        "node.tls", "cannot be used"),
    "mutual tls without ca": (
        lambda c: c.update(node={"tls": {"mode": "required", "certificate": __file__, "private_key": __file__,
                                         "require_client_certificate": True}}),
        "node.tls.ca_certificates", "is required with require_client_certificate"),
    "tls on a folder destination": (lambda c: c.update(destinations=[{"name": "a", "path": "x", "tls": True}]),
                                    "destinations[0].tls", "applies only to a dicom destination"),
    "tls ca without tls": (
        lambda c: c.update(destinations=[{"name": "p", "type": "dicom", "ae_title": "PACS", "host": "h",
                                          "port": 104, "tls_ca_certificates": __file__}]),
        "destinations[0].tls_ca_certificates", "applies only with tls: true"),
    "completion timeout zero": (lambda c: c.update(completion={"timeout_seconds": 0}),
                                "completion.timeout_seconds", "greater than 0"),
    "completion timeout negative": (lambda c: c.update(completion={"timeout_seconds": -5}),
                                    "completion.timeout_seconds", "greater than 0"),
    "retry base zero": (lambda c: c.update(dispatch={"retry_base_seconds": 0}), "dispatch.retry_base_seconds",
                        "greater than 0"),
    "association request timeout negative": (
        lambda c: c.update(node={"timeouts": {"association_request_seconds": -1}}),
        "node.timeouts.association_request_seconds", "greater than 0"),
    "idle timeout zero": (lambda c: c.update(node={"timeouts": {"idle_seconds": 0}}), "node.timeouts.idle_seconds",
                          "greater than 0"),
    "dimse timeout negative": (lambda c: c.update(node={"timeouts": {"dimse_seconds": -0.5}}),
                               "node.timeouts.dimse_seconds", "greater than 0"),
    "outputs empty": (lambda c: c.update(destinations=[{"name": "a", "path": "x", "outputs": []}]),
                      "destinations[0].outputs", "must name at least one of"),
    "folder destination with an ae title": (
        lambda c: c.update(destinations=[{"name": "a", "path": "x", "ae_title": "PACS"}]),
        "destinations[0].ae_title", "applies only to a dicom destination"),
    "folder destination with a host": (lambda c: c.update(destinations=[{"name": "a", "path": "x", "host": "h"}]),
                                       "destinations[0].host", "applies only to a dicom destination"),
    "folder destination with a port": (lambda c: c.update(destinations=[{"name": "a", "path": "x", "port": 104}]),
                                       "destinations[0].port", "applies only to a dicom destination"),
    "bind address empty": (lambda c: c.update(node={"bind_address": ""}), "node.bind_address", "must not be empty"),
    "ae title not ascii": (lambda c: c.update(node={"ae_title": "KNOCH\u00c9"}), "node.ae_title", "non-ASCII"),
    "allowed title not ascii": (lambda c: c.update(node={"allowed_calling_ae_titles": ["CAM\u00c9RA"]}),
                                "node.allowed_calling_ae_titles[0]", "non-ASCII"),
    "destination ae title not ascii": (
        lambda c: c.update(destinations=[{"name": "p", "type": "dicom", "ae_title": "P\u00c4CS", "host": "h",
                                          "port": 104}]), "destinations[0].ae_title", "non-ASCII"),
    "log folder cannot be created": (lambda c: c.update(logging={"file": "/proc/spectnode-log/node.log"}),
                                     "logging.file", "cannot be created"),
    "log folder not writable": (lambda c: c.update(logging={"file": "/proc/self/node.log"}), "logging.file",
                                "not writable"),
    "ae title null": (lambda c: c.update(node={"ae_title": None}), "node.ae_title", "must be a string"),
    "port null": (lambda c: c.update(node={"port": None}), "node.port", "must be an integer"),
    "data dir null": (lambda c: c.update(storage={"data_dir": None}), "storage.data_dir", "must be a path"),
    "destination name null": (lambda c: c.update(destinations=[{"name": None, "path": "x"}]),
                              "destinations[0].name", "must be a string"),
    "dicom destination host null": (
        lambda c: c.update(destinations=[{"name": "p", "type": "dicom", "ae_title": "PACS", "host": None,
                                          "port": 104}]), "destinations[0].host", "is required"),
    "completion timeout null": (lambda c: c.update(completion={"timeout_seconds": None}),
                                "completion.timeout_seconds", "must be a number"),
    "data dir cannot be created": (lambda c: c.update(storage={"data_dir": "/proc/spectnode-test"}),
                                   "storage.data_dir", "cannot be created"),
    "data dir not writable": (lambda c: c.update(storage={"data_dir": "/proc/self"}),
                              "storage.data_dir", "not writable"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_names_file_and_key(case, tmp_path, base):
    mutate, key, words = ERROR_CASES[case]
    mutate(base)
    path = write_config(tmp_path, base)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message, message


def test_data_dir_under_a_file(tmp_path, base):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base["storage"] = {"data_dir": str(blocker / "data")}
    with pytest.raises(ConfigError, match=r"storage\.data_dir: directory .* cannot be created"):
        load_config(write_config(tmp_path, base))


def test_data_dir_that_is_a_file(tmp_path, base):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base["storage"] = {"data_dir": str(blocker)}
    with pytest.raises(ConfigError, match=r"storage\.data_dir: directory .*a-file' cannot be created: File exists"):
        load_config(write_config(tmp_path, base))


def test_destination_folder_not_creatable(tmp_path, base):
    base["destinations"] = [{"name": "out", "path": "/proc/spectnode-out"}]
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.path: directory .* cannot be created"):
        load_config(write_config(tmp_path, base))


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("node:\n  ae_title: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml: is not valid YAML at line \d+"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\(top level\): must be a mapping"):
        load_config(path)


def test_parse_without_touching_disk(tmp_path):
    cfg = parse_config({"storage": {"data_dir": str(tmp_path / "never")}}, check_dirs=False)
    assert cfg.storage.data_dir == tmp_path / "never"
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("case", ["unknown nested key", "ae title too long", "port too high",
                                  "data dir cannot be created", "ae title backslash"])
def test_cli_check_exit_code_2(case, tmp_path, base):
    mutate, key, words = ERROR_CASES[case]
    mutate(base)
    path = write_config(tmp_path, base)
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}: {key}: " in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_check_ok(tmp_path, base):
    proc = run_check(write_config(tmp_path, base))
    assert proc.returncode == 0, proc.stderr
