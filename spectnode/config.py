"""Typed configuration for spectnode, validated once at start-up.

The configuration is a YAML file (see ``config/spectnode.yaml`` for the
documented default).  Every key has a default, so an empty file, or no file at
all, gives a node that works on one machine with nothing else installed.

Validation is strict because a DICOM node that silently ignores a misspelt key
(``allowed_calling_ae_title`` instead of ``..._titles``) opens itself to the
whole hospital network.  Every problem raises :class:`ConfigError`, whose
message names the file and the dotted key; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "AuditConfig",
    "CompletionConfig",
    "Config",
    "ConfigError",
    "DestinationConfig",
    "DispatchConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "NodeConfig",
    "NodeTimeoutsConfig",
    "PacsConfig",
    "ReportConfig",
    "RetentionConfig",
    "StorageConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
    "validate_ae_title",
]

OutputKind = Literal["sr", "sc"]
DestinationType = Literal["folder", "dicom", "sender"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
TlsMode = Literal["off", "optional", "required"]
RetrieveMethod = Literal["get", "move"]
AuditTransport = Literal["udp", "tcp", "tls"]

#: Matches any calling AE title in ``node.allowed_calling_ae_titles``.
ANY_AE_TITLE = "*"

#: Default ``destinations[].commitment_timeout_seconds``: under ``metrics.outbox_stuck_seconds``
#: (900 s), so an output waiting for its commitment does not make ``/healthz`` degraded.
DEFAULT_COMMITMENT_TIMEOUT_S = 600.0


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


@dataclass(frozen=True)
class NodeConfig:
    """The DICOM application entity spectnode presents to the network."""

    #: Called AE title of this node (1-16 characters, no backslash or control characters).
    ae_title: str = "SPECTNODE"
    #: TCP port of the storage SCP.
    port: int = 11112
    #: Address to listen on; 127.0.0.1 keeps a fresh install off the network.
    bind_address: str = "127.0.0.1"
    #: Calling AE titles allowed to associate; ``"*"`` allows any.
    allowed_calling_ae_titles: tuple[str, ...] = (ANY_AE_TITLE,)
    #: IP addresses and CIDR networks allowed to connect; ``"*"`` allows any.
    allowed_addresses: tuple[str, ...] = (ANY_AE_TITLE,)
    #: Connections (associations) open at once, in total (dcmqrscp's MaxAssociations default).
    max_associations: int = 16
    #: Connections open at once from one IP address.
    max_associations_per_peer: int = 4
    #: Largest object accepted, in bytes, counted after inflating a deflated one.
    max_object_bytes: int = 256 * 1024 * 1024
    timeouts: NodeTimeoutsConfig = field(default_factory=lambda: NodeTimeoutsConfig())
    tls: TlsConfig = field(default_factory=lambda: TlsConfig())
    #: On SIGTERM, how long associations in flight may go on before they are aborted
    #: (new ones are refused at once); the systemd unit's TimeoutStopSec leaves room for it.
    shutdown_grace_seconds: float = 30.0


@dataclass(frozen=True)
class NodeTimeoutsConfig:
    """How long the storage SCP waits for a peer (defaults: DCMTK's storescp and Orthanc's)."""

    #: From TCP connect (TLS handshake included) to a complete A-ASSOCIATE-RQ:
    #: the ARTIM timer (DCMTK storescp --acse-timeout, default 30 s).
    association_request_seconds: float = 30.0
    #: A PDU that has started must be complete within this (DCMTK storescp
    #: --socket-timeout, default 60 s, applied to the whole PDU, not to each read).
    pdu_seconds: float = 60.0
    #: An established association silent this long is aborted (Orthanc DicomScpTimeout, default 30 s).
    idle_seconds: float = 30.0
    #: Waiting for a DIMSE message (Orthanc DicomScpTimeout, default 30 s; DCMTK has none by default).
    dimse_seconds: float = 30.0


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS of the storage SCP."""

    #: ``off``, ``optional`` (TLS and plain DICOM on the same port) or ``required``.
    mode: TlsMode = "off"
    #: The node's certificate (PEM).
    certificate: Path | None = None
    #: Its private key (PEM, unencrypted).
    private_key: Path | None = None
    #: CA certificates (PEM) that sign the peers' certificates.
    ca_certificates: Path | None = None
    #: Mutual authentication: refuse a TLS peer without a certificate signed by ``ca_certificates``.
    require_client_certificate: bool = False


@dataclass(frozen=True)
class StorageConfig:
    """Where received objects, the job store and results live."""

    #: Data directory (spool, job store, results). Relative paths are taken
    #: from the current working directory.
    data_dir: Path = Path("spectnode-data")
    #: Free-space floor of the data directory's file system, in bytes: below it
    #: (counting the object being received) new objects are refused with 0xA700,
    #: and the classify and report stages wait, before the disk is actually full.
    min_free_bytes: int = 512 * 1024 * 1024
    #: A stage that could not write (disk full, quota, read-only) tries again after this many seconds.
    disk_retry_seconds: float = 5.0


@dataclass(frozen=True)
class DestinationConfig:
    """One place results are sent to."""

    #: Unique name, used in logs and by ``spectnode status``/``retry``.
    name: str
    #: ``folder`` writes files under ``path``; ``dicom`` sends by C-STORE to
    #: ``ae_title@host:port``; ``sender`` returns results by C-STORE to the peer
    #: that sent the study (its calling AE title and address) on ``port``.
    type: DestinationType = "folder"
    #: Which outputs this destination receives: ``sr`` and/or ``sc``.
    outputs: tuple[OutputKind, ...] = ("sr", "sc")
    #: Folder for ``type: folder`` (relative paths are taken from ``storage.data_dir``).
    path: Path | None = None
    #: Called AE title of the peer, for ``type: dicom`` (for ``sender``: overrides
    #: the sender's calling AE title).
    ae_title: str | None = None
    #: Host name or address of the peer, for ``type: dicom``.
    host: str | None = None
    #: Port of the peer, for ``type: dicom`` and ``type: sender`` (a peer's
    #: listening port cannot be learnt from its association).
    port: int | None = None
    #: Send over DICOM TLS, for ``type: dicom``.
    tls: bool = False
    #: CA certificates (PEM) that sign the peer's certificate; ``null``: the system's.
    tls_ca_certificates: Path | None = None
    #: Client certificate and key (PEM) for a peer that requires mutual authentication.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: Storage Commitment (PS3.4 Annex J), for ``type: dicom`` and ``type: sender``:
    #: after the C-STOREs the node asks the peer to commit the objects (N-ACTION),
    #: and an output counts as delivered only once the peer confirms it by N-EVENT-REPORT.
    storage_commitment: bool = False
    #: With ``storage_commitment``: seconds to wait for the N-EVENT-REPORT before
    #: the output is sent again (under the dispatch retry policy).
    commitment_timeout_seconds: float = DEFAULT_COMMITMENT_TIMEOUT_S


def _default_destinations() -> tuple[DestinationConfig, ...]:
    return (DestinationConfig(name="local", type="folder", path=Path("delivered")),)


@dataclass(frozen=True)
class ModelConfig:
    """Which trained model bundles classify studies."""

    #: Model bundles, in order: every study goes to each bundle whose input it
    #: can feed (an aggregate-view model needs both views, a per-view model
    #: takes either), and the first that takes it gives the one-line summary.
    #: ``null`` uses the bundles shipped inside the package (trained on
    #: synthetic scans, not for clinical use).
    bundles: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class CompletionConfig:
    """When a study counts as complete."""

    #: Fallback only: seconds without a new object after which a study that
    #: is not yet complete by content (e.g. a single view) is processed anyway.
    timeout_seconds: float = 120.0


@dataclass(frozen=True)
class DispatchConfig:
    """Retries of the durable outbox."""

    #: Attempts before an item goes to the visible dead-letter state
    #: (20 with the 600 s cap keeps trying for about 2.5 hours: a PACS outage).
    max_attempts: int = 20
    #: First retry delay; doubles after each failure ...
    retry_base_seconds: float = 5.0
    #: ... up to this delay.
    retry_max_seconds: float = 600.0
    #: Outbox items sent at the same time, each on its own association: a PACS
    #: answers a C-STORE only once it has stored the object, so sending one at
    #: a time leaves the node waiting on the PACS's disk most of the time.
    parallel_sends: int = 4


@dataclass(frozen=True)
class ReportConfig:
    """What the report stage produces."""

    #: Also send an SR for a study that is not a whole-body bone scan, saying
    #: why it was not assessed (the reason is always in ``spectnode status``).
    not_assessable_sr: bool = True


@dataclass(frozen=True)
class LoggingConfig:
    """Logging."""

    #: Minimum level: DEBUG, INFO, WARNING or ERROR.
    level: LogLevel = "INFO"
    #: ``text`` for people, ``json`` (one object per line) for log collectors.
    format: LogFormat = "text"
    #: Log file; ``null`` logs to standard error (journald under systemd).
    file: Path | None = None
    #: Allow patient names and IDs in log records (fields ``patient_name``, ``patient_id``); off by default.
    patient_data: bool = False


@dataclass(frozen=True)
class RetentionConfig:
    """When the node removes its copies of finished studies (spool, work files, local results)."""

    #: Seconds after a study ended (dispatched, or not assessable) with every
    #: output acknowledged before its files are removed; ``null``: only the budget removes.
    keep_seconds: float | None = 30 * 86400.0
    #: Disk budget of the spool, work and results folders together, in bytes:
    #: above it the oldest finished studies are removed first, before ``keep_seconds``; ``null``: none.
    max_bytes: int | None = None
    #: How often the running node applies the policy.
    interval_seconds: float = 600.0


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus ``/metrics`` and ``/healthz`` HTTP endpoint (off by default)."""

    enabled: bool = False
    #: Address to listen on; loopback by default (scrape through a proxy or bind elsewhere on purpose).
    bind_address: str = "127.0.0.1"
    port: int = 9464
    #: ``/healthz`` says degraded when the oldest undelivered outbox item is older than this.
    outbox_stuck_seconds: float = 900.0


@dataclass(frozen=True)
class AuditConfig:
    """DICOM audit messages (PS3.15 Annex A.5) to a syslog server (``audit:``, off by default).

    Security-relevant events (application start and stop, a refused
    association or TLS handshake, a study received, results sent) go as
    RFC 5424 syslog messages, as IHE ATNA's Record Audit Event (ITI-20) sends them.
    """

    enabled: bool = False
    #: The syslog server (an audit record repository); required when enabled.
    host: str | None = None
    #: Its port; ``null``: 514 for ``udp`` and ``tcp``, 6514 for ``tls`` (RFC 5425).
    port: int | None = None
    #: ``udp`` (RFC 5426), ``tcp`` (octet-counted frames, RFC 6587) or ``tls`` (RFC 5425, what ATNA asks for).
    transport: AuditTransport = "udp"
    #: CA certificates (PEM) that sign the server's certificate (``tls``); ``null``: the system's.
    tls_ca_certificates: Path | None = None
    #: Client certificate and key (PEM) for a server that requires mutual authentication (``tls``).
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None

    @property
    def server_port(self) -> int:
        """The configured port, or the transport's default."""
        if self.port is not None:
            return self.port
        return 6514 if self.transport == "tls" else 514


@dataclass(frozen=True)
class PacsConfig:
    """A PACS that ``spectnode backfill`` queries (C-FIND) and retrieves from (C-GET or C-MOVE)."""

    #: Unique name, given to ``spectnode backfill --pacs NAME``.
    name: str
    #: Called AE title of the PACS's query/retrieve SCP.
    ae_title: str
    #: Host name or address of the PACS.
    host: str
    #: Its DICOM port.
    port: int
    #: ``get``: C-GET, the objects come back on the same association; ``move``:
    #: C-MOVE to this node's AE title (the PACS must know ``node.ae_title`` with
    #: its host and port, and may call it: ``node.allowed_calling_ae_titles``).
    retrieve: RetrieveMethod
    #: Retrieves (one study each) in flight at once.
    max_parallel_retrieves: int = 2
    #: At most this many study retrieves start per minute.
    studies_per_minute: float = 30.0
    #: ``HH:MM-HH:MM`` in local time (``19:00-07:00`` runs overnight): retrieves
    #: start only inside it; outside it the backfill pauses and resumes by
    #: itself. ``null``: any time.
    window: str | None = None
    #: Seconds to wait for the PACS to connect or answer a message.
    timeout_seconds: float = 60.0
    #: First pause after the PACS refuses, fails or does not answer; doubles
    #: after each further failure ...
    retry_base_seconds: float = 5.0
    #: ... up to this pause (an unreachable PACS is tried again this often, without end).
    retry_max_seconds: float = 300.0
    #: Failed retrieves of one study (refused by the PACS, objects that fail to
    #: arrive) before it is given up as failed; an unreachable PACS does not count.
    max_attempts: int = 3
    #: Also send every result to this PACS by C-STORE (a ``dicom`` destination
    #: named like this entry), so it lands in the original study.
    return_results: bool = True


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    destinations: tuple[DestinationConfig, ...] = field(default_factory=_default_destinations)
    model: ModelConfig = field(default_factory=ModelConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pacs: tuple[PacsConfig, ...] = ()
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    #: Where this configuration came from, for messages ("<defaults>" if none).
    source: str = field(default="<defaults>", compare=False)


# --------------------------------------------------------------------------- checks


def validate_ae_title(value: str) -> str | None:
    """Return why ``value`` is not a valid AE title, or None if it is.

    PS3.5 6.2: AE is at most 16 characters of the default repertoire, without
    backslash or control characters; leading/trailing spaces are not
    significant, so an all-space title is empty.
    """
    if not value.strip():
        return "must not be empty"
    if len(value) > 16:
        return f"{value!r} is {len(value)} characters long; AE titles have at most 16"
    if "\\" in value:
        return f"{value!r} contains a backslash, which DICOM does not allow in an AE title"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{value!r} contains a control character, which DICOM does not allow in an AE title"
    if any(ord(c) > 126 for c in value):
        return f"{value!r} contains a non-ASCII character, which DICOM does not allow in an AE title"
    return None


def _check_port(value: int) -> str | None:
    if not 1 <= value <= 65535:
        return f"{value} is out of range; ports are 1-65535"
    return None


def _check_network(node: NodeConfig, source: str) -> None:
    """The network keys of ``node``: address list, limits, timeouts, TLS files."""
    from spectnode.net.access import ANY_ADDRESS, parse_network

    if not node.allowed_addresses:
        raise ConfigError(
            source, "node.allowed_addresses", 'is empty, so no peer could connect; use ["*"] to allow any'
        )
    for i, entry in enumerate(node.allowed_addresses):
        if entry.strip() != ANY_ADDRESS:
            try:
                parse_network(entry)
            except ValueError as exc:
                raise ConfigError(source, f"node.allowed_addresses[{i}]",
                                  f"{entry!r} is not an IP address or CIDR network ({exc})") from None
    for name in ("max_associations", "max_associations_per_peer", "max_object_bytes"):
        if getattr(node, name) < 1:
            raise ConfigError(source, f"node.{name}", "must be at least 1")
    if node.max_associations_per_peer > node.max_associations:
        raise ConfigError(source, "node.max_associations_per_peer", "must not be more than node.max_associations")
    for name in ("association_request_seconds", "pdu_seconds", "idle_seconds", "dimse_seconds"):
        if getattr(node.timeouts, name) <= 0:
            raise ConfigError(source, f"node.timeouts.{name}", "must be greater than 0")
    tls = node.tls
    for name in ("certificate", "private_key", "ca_certificates"):
        path = getattr(tls, name)
        if path is not None and not path.is_file():
            raise ConfigError(source, f"node.tls.{name}", f"{str(path)!r} is not a file")
    if (tls.certificate is None) != (tls.private_key is None):
        missing = "private_key" if tls.private_key is None else "certificate"
        raise ConfigError(source, f"node.tls.{missing}", "is required with the other of certificate/private_key")
    if tls.require_client_certificate and tls.ca_certificates is None:
        raise ConfigError(source, "node.tls.ca_certificates",
                          "is required with require_client_certificate: true (it names who may connect)")
    if tls.mode == "off":
        if tls.require_client_certificate:
            raise ConfigError(source, "node.tls.require_client_certificate", "applies only when node.tls.mode is "
                              "optional or required")
        return
    if tls.certificate is None:
        raise ConfigError(source, "node.tls.certificate", f"is required with node.tls.mode: {tls.mode}")
    from spectnode.net.tls import server_context

    try:
        server_context(tls.certificate, tls.private_key, tls.ca_certificates,  # type: ignore[arg-type]
                       tls.require_client_certificate)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(source, "node.tls", f"the certificate, key or CA file cannot be used: {exc}") from None


def _check_tls_client(dest: DestinationConfig) -> str | None:
    from spectnode.net.tls import client_context

    try:
        client_context(dest.tls_ca_certificates, dest.tls_certificate, dest.tls_private_key)
    except (OSError, ValueError) as exc:
        return f"no TLS client context can be made from its tls_* files: {exc}"
    return None


def _check_writable_dir(path: Path) -> str | None:
    """Create ``path`` if needed and prove it writable by writing a file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"directory {str(path)!r} cannot be created: {exc.strerror or exc}"
    if not path.is_dir():
        return f"{str(path)!r} exists and is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".spectnode-write-check-"):
            pass
    except OSError as exc:
        return f"directory {str(path)!r} is not writable: {exc.strerror or exc}"
    return None


# ------------------------------------------------------------------------ parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", Path: "a path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        if value is None:
            raise ConfigError(source, key, f"must be {_type_name(tp)}, got null")
        return _convert(value, inner, source, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(source, key, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_convert(v, inner, source, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    ok = {
        str: lambda v: isinstance(v, str),
        # bool is an int in Python; "port: yes" must not become port 1.
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        Path: lambda v: isinstance(v, str) and v != "",
    }[tp]
    if not ok(value):
        raise ConfigError(source, key, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Path:
        return Path(value).expanduser()
    if tp is float:
        return float(value)
    return value


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(source, prefix or "(top level)", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = [k for k in data if k not in fields]
    if cls is ModelConfig and "bundle" in unknown:
        raise ConfigError(source, "model.bundle", "was replaced by model.bundles, a list: write bundles: [PATH]")
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(source, where, f"unknown key (valid keys here: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], source, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(source, key, "is required")
    return cls(**kwargs)


def _check_semantics(cfg: Config, source: str, check_dirs: bool) -> None:
    """Checks that types alone cannot express."""
    problem = validate_ae_title(cfg.node.ae_title)
    if problem:
        raise ConfigError(source, "node.ae_title", problem)
    if (problem := _check_port(cfg.node.port)) is not None:
        raise ConfigError(source, "node.port", problem)
    if not cfg.node.bind_address.strip():
        raise ConfigError(source, "node.bind_address", "must not be empty")
    if not cfg.node.allowed_calling_ae_titles:
        raise ConfigError(
            source, "node.allowed_calling_ae_titles", 'is empty, so no peer could connect; use ["*"] to allow any'
        )
    for i, title in enumerate(cfg.node.allowed_calling_ae_titles):
        if title != ANY_AE_TITLE and (problem := validate_ae_title(title)):
            raise ConfigError(source, f"node.allowed_calling_ae_titles[{i}]", problem)
    _check_network(cfg.node, source)
    if cfg.completion.timeout_seconds <= 0:
        raise ConfigError(source, "completion.timeout_seconds", "must be greater than 0")

    names: set[str] = set()
    for i, dest in enumerate(cfg.destinations):
        key = f"destinations[{i}]"
        if not dest.name.strip():
            raise ConfigError(source, f"{key}.name", "must not be empty")
        if dest.name in names:
            raise ConfigError(source, f"{key}.name", f"{dest.name!r} is used by more than one destination")
        names.add(dest.name)
        if not dest.outputs:
            raise ConfigError(source, f"{key}.outputs", "must name at least one of 'sr', 'sc'")
        if dest.type == "sender":
            if dest.port is None:
                raise ConfigError(source, f"{key}.port", "is required for a sender destination")
            if problem := _check_port(dest.port):
                raise ConfigError(source, f"{key}.port", problem)
            if dest.ae_title is not None and (problem := validate_ae_title(dest.ae_title)):
                raise ConfigError(source, f"{key}.ae_title", problem)
            for attr in ("host", "path"):
                if getattr(dest, attr) is not None:
                    raise ConfigError(source, f"{key}.{attr}", "does not apply to a sender destination")
        elif dest.type == "dicom":
            for attr in ("ae_title", "host", "port"):
                if getattr(dest, attr) is None:
                    raise ConfigError(source, f"{key}.{attr}", "is required for a dicom destination")
            assert dest.ae_title is not None and dest.port is not None  # checked just above
            if problem := validate_ae_title(dest.ae_title):
                raise ConfigError(source, f"{key}.ae_title", problem)
            if problem := _check_port(dest.port):
                raise ConfigError(source, f"{key}.port", problem)
            for attr in ("tls_ca_certificates", "tls_certificate", "tls_private_key"):
                path = getattr(dest, attr)
                if path is not None and not dest.tls:
                    raise ConfigError(source, f"{key}.{attr}", "applies only with tls: true")
                if path is not None and not path.is_file():
                    raise ConfigError(source, f"{key}.{attr}", f"{str(path)!r} is not a file")
            if (dest.tls_certificate is None) != (dest.tls_private_key is None):
                raise ConfigError(source, f"{key}.tls_certificate", "and tls_private_key go together")
            if dest.tls and (problem := _check_tls_client(dest)):
                raise ConfigError(source, f"{key}.tls", problem)
        else:
            if dest.path is None:
                raise ConfigError(source, f"{key}.path", "is required for a folder destination")
            for attr in ("ae_title", "host", "port"):
                if getattr(dest, attr) is not None:
                    raise ConfigError(source, f"{key}.{attr}", "applies only to a dicom destination")

    for i, dest in enumerate(cfg.destinations):
        if dest.type != "dicom":
            for attr, unset in (("tls", False), ("tls_ca_certificates", None), ("tls_certificate", None),
                                ("tls_private_key", None)):
                if getattr(dest, attr) != unset:
                    raise ConfigError(source, f"destinations[{i}].{attr}", "applies only to a dicom destination")
        _check_commitment(cfg, dest, source, f"destinations[{i}]")

    if cfg.dispatch.max_attempts < 1:
        raise ConfigError(source, "dispatch.max_attempts", "must be at least 1")
    if cfg.dispatch.retry_base_seconds <= 0:
        raise ConfigError(source, "dispatch.retry_base_seconds", "must be greater than 0")
    if cfg.dispatch.retry_max_seconds < cfg.dispatch.retry_base_seconds:
        raise ConfigError(source, "dispatch.retry_max_seconds", "must be at least dispatch.retry_base_seconds")
    if not 1 <= cfg.dispatch.parallel_sends <= 32:
        raise ConfigError(source, "dispatch.parallel_sends", "must be from 1 to 32")

    _check_operations(cfg, source)
    _check_audit(cfg.audit, source)

    _check_pacs(cfg, source)

    if cfg.model.bundles is not None:
        if not cfg.model.bundles:
            raise ConfigError(source, "model.bundles",
                              "is empty; list at least one bundle, or write null for the shipped ones")
        for i, bundle in enumerate(cfg.model.bundles):
            if not bundle.exists():
                raise ConfigError(source, f"model.bundles[{i}]", f"{str(bundle)!r} does not exist")
            if bundle.resolve() in {b.resolve() for b in cfg.model.bundles[:i]}:
                raise ConfigError(source, f"model.bundles[{i}]", f"{str(bundle)!r} is listed twice")

    if check_dirs:
        if problem := _check_writable_dir(cfg.storage.data_dir):
            raise ConfigError(source, "storage.data_dir", problem)
        for i, dest in enumerate(cfg.destinations):
            if dest.type == "folder" and (problem := _check_writable_dir(resolve_folder(cfg, dest))):
                raise ConfigError(source, f"destinations[{i}].path", problem)
        if cfg.logging.file is not None and (problem := _check_writable_dir(cfg.logging.file.parent)):
            raise ConfigError(source, "logging.file", problem)


def _check_commitment(cfg: Config, dest: DestinationConfig, source: str, key: str) -> None:
    """A destination's ``storage_commitment`` and ``commitment_timeout_seconds``."""
    if not dest.storage_commitment:
        if dest.commitment_timeout_seconds != DEFAULT_COMMITMENT_TIMEOUT_S:
            raise ConfigError(source, f"{key}.commitment_timeout_seconds", "applies only with storage_commitment: true")
        return
    if dest.type == "folder":
        raise ConfigError(source, f"{key}.storage_commitment", "applies only to a dicom or sender destination")
    if not dest.commitment_timeout_seconds > 0:
        raise ConfigError(source, f"{key}.commitment_timeout_seconds", "must be greater than 0")
    allowed = cfg.node.allowed_calling_ae_titles
    # A sender destination's peer is allowed already: it sent the study.
    if dest.type == "dicom" and ANY_AE_TITLE not in allowed and (dest.ae_title or "").strip() not in allowed:
        raise ConfigError(source, f"{key}.storage_commitment", f"needs the peer ({dest.ae_title!r}) in "
                          "node.allowed_calling_ae_titles: it may send the N-EVENT-REPORT on an association of its own")


def _check_pacs(cfg: Config, source: str) -> None:
    """The ``pacs`` entries: names, peers, limits and windows."""
    from spectnode.backfill.polite import parse_window

    names: set[str] = set()
    destinations = {dest.name for dest in cfg.destinations}
    for i, pacs in enumerate(cfg.pacs):
        key = f"pacs[{i}]"
        if not pacs.name.strip():
            raise ConfigError(source, f"{key}.name", "must not be empty")
        if pacs.name in names:
            raise ConfigError(source, f"{key}.name", f"{pacs.name!r} is used by more than one pacs entry")
        names.add(pacs.name)
        if pacs.return_results and pacs.name in destinations:
            raise ConfigError(source, f"{key}.name", f"{pacs.name!r} is also a destination's name; with "
                              "return_results: true the PACS becomes a destination of that name")
        if problem := validate_ae_title(pacs.ae_title):
            raise ConfigError(source, f"{key}.ae_title", problem)
        if not pacs.host.strip():
            raise ConfigError(source, f"{key}.host", "must not be empty")
        if problem := _check_port(pacs.port):
            raise ConfigError(source, f"{key}.port", problem)
        for name in ("max_parallel_retrieves", "max_attempts"):
            if getattr(pacs, name) < 1:
                raise ConfigError(source, f"{key}.{name}", "must be at least 1")
        for name in ("studies_per_minute", "timeout_seconds", "retry_base_seconds"):
            if getattr(pacs, name) <= 0:
                raise ConfigError(source, f"{key}.{name}", "must be greater than 0")
        if pacs.retry_max_seconds < pacs.retry_base_seconds:
            raise ConfigError(source, f"{key}.retry_max_seconds", "must be at least retry_base_seconds")
        if pacs.window is not None:
            try:
                parse_window(pacs.window)
            except ValueError as exc:
                raise ConfigError(source, f"{key}.window", str(exc)) from None
        allowed = cfg.node.allowed_calling_ae_titles
        if pacs.retrieve == "move" and ANY_AE_TITLE not in allowed and pacs.ae_title.strip() not in allowed:
            raise ConfigError(source, f"{key}.retrieve", f"move needs the PACS ({pacs.ae_title!r}) in "
                              "node.allowed_calling_ae_titles: it sends the studies to this node by C-STORE")


def _with_pacs_destinations(cfg: Config) -> Config:
    """``cfg`` with a ``dicom`` destination for each PACS whose ``return_results`` is set."""
    added = tuple(DestinationConfig(name=p.name, type="dicom", ae_title=p.ae_title, host=p.host, port=p.port)
                  for p in cfg.pacs if p.return_results)
    return dataclasses.replace(cfg, destinations=cfg.destinations + added) if added else cfg
def _check_operations(cfg: Config, source: str) -> None:
    """Disk floor, shutdown grace, retention and metrics keys."""
    if cfg.node.shutdown_grace_seconds < 0:
        raise ConfigError(source, "node.shutdown_grace_seconds", "must be 0 or more")
    if cfg.storage.min_free_bytes < 0:
        raise ConfigError(source, "storage.min_free_bytes", "must be 0 or more")
    if cfg.storage.disk_retry_seconds <= 0:
        raise ConfigError(source, "storage.disk_retry_seconds", "must be greater than 0")
    retention = cfg.retention
    if retention.keep_seconds is not None and retention.keep_seconds < 0:
        raise ConfigError(source, "retention.keep_seconds", "must be 0 or more, or null")
    if retention.max_bytes is not None and retention.max_bytes < 1:
        raise ConfigError(source, "retention.max_bytes", "must be at least 1, or null")
    if retention.interval_seconds <= 0:
        raise ConfigError(source, "retention.interval_seconds", "must be greater than 0")
    if (problem := _check_port(cfg.metrics.port)) is not None:
        raise ConfigError(source, "metrics.port", problem)
    if not cfg.metrics.bind_address.strip():
        raise ConfigError(source, "metrics.bind_address", "must not be empty")
    if cfg.metrics.outbox_stuck_seconds <= 0:
        raise ConfigError(source, "metrics.outbox_stuck_seconds", "must be greater than 0")


def _check_audit(audit: AuditConfig, source: str) -> None:
    """The ``audit`` keys: a server when enabled, a port, TLS files only with ``transport: tls``."""
    if audit.enabled and (audit.host is None or not audit.host.strip()):
        raise ConfigError(source, "audit.host", "is required with audit.enabled: true (the syslog server)")
    if audit.port is not None and (problem := _check_port(audit.port)) is not None:
        raise ConfigError(source, "audit.port", problem)
    files = ("tls_ca_certificates", "tls_certificate", "tls_private_key")
    for name in files:
        path = getattr(audit, name)
        if path is not None and audit.transport != "tls":
            raise ConfigError(source, f"audit.{name}", "applies only with audit.transport: tls")
        if path is not None and not path.is_file():
            raise ConfigError(source, f"audit.{name}", f"{str(path)!r} is not a file")
    if (audit.tls_certificate is None) != (audit.tls_private_key is None):
        raise ConfigError(source, "audit.tls_certificate", "and audit.tls_private_key go together")
    if audit.transport == "tls":
        from spectnode.net.tls import client_context

        try:
            client_context(audit.tls_ca_certificates, audit.tls_certificate, audit.tls_private_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(source, "audit.transport", f"no TLS client context can be made from the "
                              f"audit.tls_* files: {exc}") from None


def resolve_folder(cfg: Config, dest: DestinationConfig) -> Path:
    """Absolute-or-cwd-relative folder of a folder destination."""
    assert dest.path is not None
    return dest.path if dest.path.is_absolute() else cfg.storage.data_dir / dest.path


def parse_config(data: Any, source: str = "<config>", check_dirs: bool = True) -> Config:
    """Validate already-parsed YAML data and return a :class:`Config`.

    ``check_dirs`` creates the data and destination directories and proves
    them writable; turn it off only for tools that must not touch the disk.
    """
    if data is None:
        data = {}
    cfg = _build(Config, data, source, "")
    cfg = dataclasses.replace(cfg, source=source)
    _check_semantics(cfg, source, check_dirs)
    return _with_pacs_destinations(cfg)


def load_config(path: str | os.PathLike[str] | None, check_dirs: bool = True) -> Config:
    """Read and validate a configuration file (``None``: built-in defaults)."""
    if path is None:
        return parse_config({}, "<defaults>", check_dirs)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, "", f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, source, check_dirs)
