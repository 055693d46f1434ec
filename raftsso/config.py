"""Typed configuration of nodes, operators and SSO clients, read from TOML.

Relative paths in a file are resolved against the file's own directory, so a deployment
directory can be moved as a whole. Secret files (seal key, cluster secret, private keys)
must be 0600; they are read with :func:`raftsso.fsutil.read_private`.
"""

from __future__ import annotations

import base64
import binascii
import math
import tomllib
from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftsso.errors import ConfigError, RaftssoError
from raftsso.fsutil import atomic_write, check_private, read_private
from raftsso.protocol.record import record

# Only a node's configuration needs these (the limits pull in logging, ctypes and the event
# log; the seal settings the seal providers): they are imported when a node.toml is read,
# so that every CLI call and SSO client reading admin.toml or client.toml does not load
# them. tomli_w is imported by the two functions that write TOML.
if TYPE_CHECKING:
    from raftsso.limits import Limits
    from raftsso.seal.settings import SealSettings

CONFIG_FORMAT = 1
MIN_MAX_FRAME = 4 << 10
MAX_MAX_FRAME = 64 << 20
REMOTE_ROLES = ("admin", "client")
SECRET_FILE_HEADER = {
    "seal": "raftsso-seal-key v1",
    "cluster": "raftsso-cluster-secret v1",
}


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{address!r} is not a host:port address")
    return host.strip("[]"), int(port)


@record
class RaftTimings:
    """Raft timings; the defaults give sub-second failover on a LAN."""

    append_entries_period: float = 0.03
    # A dead leader's links drop at once and the survivors ask for a pre-vote then
    # (raftsso.raft.elections); these bound how long a hung one goes unnoticed. Pre-vote
    # keeps a slow follower from forcing an election, so they can be short.
    election_timeout_min: float = 0.15
    election_timeout_max: float = 0.3
    # pysyncobj's own default is 30 s: a leader cut off from its quorum would keep
    # believing it leads (and accept writes that never commit) for that long.
    leader_fallback_timeout: float = 1.0
    # Idle follower-to-follower links must not time out (that costs an election round);
    # dead peers are noticed by TCP resets and keepalives instead.
    connection_timeout: float = 10.0
    # A restarted member is linked to every other one within this (a follower cut off
    # from the other follower cannot ask it for a pre-vote when the leader dies).
    connection_retry: float = 0.2
    commit_timeout: float = 5.0
    # Compact the log into a snapshot once it holds more entries than this (an int).
    log_compaction_min_entries: int = 1000

    def validate(self) -> None:
        if not 0 < self.append_entries_period < self.election_timeout_min:
            raise ConfigError("raft.append_entries_period must be below election_timeout_min")
        if not self.election_timeout_min < self.election_timeout_max:
            raise ConfigError("raft.election_timeout_min must be below election_timeout_max")
        if not self.leader_fallback_timeout > self.append_entries_period:
            raise ConfigError("raft.leader_fallback_timeout must exceed append_entries_period")
        for name in ("commit_timeout", "connection_retry", "connection_timeout"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ConfigError(f"raft timeouts must be positive (raft.{name})")
        if self.log_compaction_min_entries < 2:
            raise ConfigError("raft.log_compaction_min_entries must be at least 2")


@record
class Peer:
    id: str
    raft_address: str
    service_address: str


@record
class BackupSchedule:
    """``[backup]`` in node.toml: the leader writes a backup encrypted to ``recipient`` into
    ``dir`` after every new version and every ``interval`` seconds, keeping ``keep`` files
    (:mod:`raftsso.backup_schedule`)."""

    dir: Path
    recipient: Path
    interval: float = 3600.0
    keep: int = 24


def _default_limits() -> Limits:
    from raftsso.limits import Limits

    return Limits()


def _default_seal() -> SealSettings:
    from raftsso.seal.settings import SealSettings

    return SealSettings()


@record
class NodeConfig:
    path: Path
    node_id: str
    cluster_id: str
    raft_address: str
    service_address: str
    data_dir: Path
    ca_cert: Path
    cert: Path
    key: Path
    seal_key_file: Path | None  # the file seal's key file; None with pkcs11 or shamir
    cluster_secret_file: Path
    peers: tuple[Peer, ...]
    raft: RaftTimings = field(default_factory=RaftTimings)
    metrics_address: str | None = None
    rotation_grace: float = 120.0
    # "Recently seen" for staged promotion: clients served within this many seconds.
    client_window: float = 120.0
    max_frame: int = 1 << 20
    idle_timeout: float = 300.0
    read_timeout: float = 10.0
    # Append-only JSON-lines audit file (raftsso.audit); None: DATA_DIR/audit.jsonl.
    audit_log: Path | None = None
    # Raft peers authenticate each other with their node certificates (raftsso.raft.peer_links).
    # False: pysyncobj's password-only link (a documented fallback; see operations.md).
    peer_tls: bool = True
    # [limits]: caps on every listening port, resolved against RLIMIT_NOFILE at load
    # (raftsso.limits; peer_max_* are read by the Raft package).
    limits: Limits = field(default_factory=_default_limits)
    # [backup]: unattended backups to a public key (None: off).
    backup: BackupSchedule | None = None
    # Rotation policy of the leader (0: off): a staged rotation once the newest version is
    # this many seconds old, and once the primary encrypted about max_encryptions messages.
    rotation_period: float = 0.0
    max_encryptions: int = 0
    # Where the seal key lives (raftsso.seal.settings): `seal`, `seal_key_file`, [pkcs11],
    # [shamir] in node.toml.
    seal: SealSettings = field(default_factory=_default_seal)
    # Overwrite freed memory (raftsso.memscrub): a retired key does not linger in the heap.
    scrub_freed_memory: bool = True

    @property
    def audit_path(self) -> Path:
        return self.audit_log if self.audit_log is not None else self.data_dir / "audit.jsonl"

    @property
    def self_peer(self) -> Peer:
        return Peer(self.node_id, self.raft_address, self.service_address)

    @property
    def members(self) -> tuple[Peer, ...]:
        return tuple(sorted((self.self_peer, *self.peers), key=lambda p: p.id))

    def seal_key(self) -> bytes:
        """The file seal's key of generation 1 (tests and tools; the node opens its
        provider with :func:`raftsso.seal.settings.open_seal`)."""
        if self.seal_key_file is None:
            raise ConfigError(f"{self.path}: seal = {self.seal.kind!r} keeps no seal key file")
        return read_secret_file(self.seal_key_file, "seal")

    def cluster_secret(self) -> bytes:
        return read_secret_file(self.cluster_secret_file, "cluster")


@record
class Endpoint:
    id: str
    address: str


@record
class RemoteConfig:
    """What an operator (admin.toml) or an SSO client (client.toml) needs to reach nodes."""

    path: Path
    cluster_id: str
    role: str
    ca_cert: Path
    cert: Path
    key: Path
    nodes: tuple[Endpoint, ...]
    timeout: float = 5.0
    store: Path | str | None = None  # a SQLite path, or a postgresql:// URI (a str)
    resync_interval: float = 60.0
    max_staleness: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    store_password_file: Path | None = None  # the PostgreSQL store's password (0600)


# -- reading ----------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file (is it the right file?)") from None
    except RecursionError:
        raise ConfigError(f"{path} nests arrays or tables too deeply") from None
    fmt = data.get("format", CONFIG_FORMAT)
    if fmt != CONFIG_FORMAT:
        raise ConfigError(f"{path} has configuration format {fmt!r}; this raftsso reads "
                          f"format {CONFIG_FORMAT}")
    return data


def _get(data: Mapping[str, Any], key: str, kind: type, path: Path, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise ConfigError(f"{path}: missing required key {key!r}")
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key!r} must be of type {kind.__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # TOML allows inf and nan
        raise ConfigError(f"{path}: {key!r} must be a finite number")
    return value


def _path(data: Mapping[str, Any], key: str, base: Path, path: Path) -> Path:
    p = Path(_get(data, key, str, path))
    return p if p.is_absolute() else (base / p)


def load_node_config(path: str | Path) -> NodeConfig:
    p = Path(path).resolve()
    data = _load(p)
    base = p.parent
    peers = []
    for i, raw in enumerate(_get(data, "peers", list, p, [])):
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: peers[{i}] must be a table")
        peers.append(Peer(_get(raw, "id", str, p), _get(raw, "raft_address", str, p),
                          _get(raw, "service_address", str, p)))
    raft_raw = _get(data, "raft", dict, p, {})
    defaults = RaftTimings()
    timings = RaftTimings(**{
        name: _get(raft_raw, name, type(getattr(defaults, name)), p, getattr(defaults, name))
        for name in defaults.__dataclass_fields__
    })
    unknown = set(raft_raw) - set(defaults.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{p}: unknown [raft] keys: {', '.join(sorted(unknown))}")
    try:
        timings.validate()
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    from raftsso.seal.settings import parse_seal_settings

    idle_timeout = _get(data, "idle_timeout", float, p, 300.0)
    seal = parse_seal_settings(data, base, p)
    cfg = NodeConfig(
        path=p,
        node_id=_get(data, "node_id", str, p),
        cluster_id=_get(data, "cluster_id", str, p),
        raft_address=_get(data, "raft_address", str, p),
        service_address=_get(data, "service_address", str, p),
        data_dir=_path(data, "data_dir", base, p),
        ca_cert=_path(data, "ca_cert", base, p),
        cert=_path(data, "cert", base, p),
        key=_path(data, "key", base, p),
        seal_key_file=seal.key_file,
        cluster_secret_file=_path(data, "cluster_secret_file", base, p),
        peers=tuple(peers),
        raft=timings,
        metrics_address=_get(data, "metrics_address", str, p, None),
        rotation_grace=_get(data, "rotation_grace", float, p, 120.0),
        client_window=_get(data, "client_window", float, p,
                           _get(data, "rotation_grace", float, p, 120.0)),
        max_frame=_get(data, "max_frame", int, p, 1 << 20),
        idle_timeout=idle_timeout,
        read_timeout=_get(data, "read_timeout", float, p, 10.0),
        audit_log=_path(data, "audit_log", base, p) if "audit_log" in data else None,
        peer_tls=_get(data, "peer_tls", bool, p, True),
        limits=_limits(_get(data, "limits", dict, p, {}), p, idle_timeout),
        backup=_backup(_get(data, "backup", dict, p), base, p) if "backup" in data else None,
        rotation_period=_get(data, "rotation_period", float, p, 0.0),
        max_encryptions=_get(data, "max_encryptions", int, p, 0),
        seal=seal,
        scrub_freed_memory=_get(data, "scrub_freed_memory", bool, p, True),
    )
    _check_address(cfg.raft_address, "raft_address", p)
    _check_address(cfg.service_address, "service_address", p)
    if cfg.metrics_address is not None:
        _check_address(cfg.metrics_address, "metrics_address", p)
    for i, peer in enumerate(peers):
        _check_address(peer.raft_address, f"peers[{i}].raft_address", p)
        _check_address(peer.service_address, f"peers[{i}].service_address", p)
    _check_range(cfg.rotation_grace >= 0, "rotation_grace", "must be 0 or more (seconds)", p)
    _check_range(cfg.rotation_period == 0 or cfg.rotation_period >= 1, "rotation_period",
                 "must be 0 (off) or at least 1 (seconds)", p)
    _check_range(cfg.max_encryptions == 0 or cfg.max_encryptions >= 100, "max_encryptions",
                 "must be 0 (off) or at least 100", p)
    _check_range(cfg.client_window >= 0, "client_window", "must be 0 or more (seconds)", p)
    _check_range(cfg.idle_timeout > 0, "idle_timeout", "must be positive (seconds)", p)
    _check_range(cfg.read_timeout > 0, "read_timeout", "must be positive (seconds)", p)
    _check_range(MIN_MAX_FRAME <= cfg.max_frame <= MAX_MAX_FRAME, "max_frame",
                 f"must be between {MIN_MAX_FRAME} (4 KiB) and {MAX_MAX_FRAME} (64 MiB) bytes",
                 p)
    ids = [m.id for m in cfg.members]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{p}: node ids must be unique (got {', '.join(ids)})")
    _check_key(cfg.key)
    # Every NodeConfig field (but path) is a node.toml key of the same name, so a field added
    # to NodeConfig is accepted here without further change.
    known = {f.name for f in fields(NodeConfig)} - {"path"} | {"format", "pkcs11", "shamir"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{p}: unknown keys: {', '.join(sorted(unknown))} (a typo? "
                          f"node.toml knows {', '.join(sorted(known))})")
    return cfg


def _limits(raw: Mapping[str, Any], path: Path, idle_timeout: float) -> Limits:
    from raftsso.limits import Limits, LimitsError, resolve_limits

    typed = {}
    for key, value in raw.items():
        if key in Limits.__dataclass_fields__ and key not in ("nofile", "notes"):
            kind = type(getattr(Limits(), key))
            typed[key] = _get(raw, key, kind, path)
            continue
        typed[key] = value  # resolve_limits names every unknown key
    try:
        return resolve_limits(typed, idle_timeout=idle_timeout)
    except LimitsError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check_key(key: Path) -> None:
    # A TLS private key readable by others is refused at load, like seal.key (pki checks
    # again when it builds a context); a missing one is reported when TLS is set up.
    if key.exists():
        check_private(key)


def _backup(raw: Mapping[str, Any], base: Path, path: Path) -> BackupSchedule:
    unknown = set(raw) - {f.name for f in fields(BackupSchedule)}
    if unknown:
        raise ConfigError(f"{path}: unknown [backup] keys: {', '.join(sorted(unknown))}")
    schedule = BackupSchedule(
        dir=_path(raw, "dir", base, path), recipient=_path(raw, "recipient", base, path),
        interval=_get(raw, "interval", float, path, 3600.0),
        keep=_get(raw, "keep", int, path, 24))
    _check_range(schedule.interval >= 1, "backup.interval", "must be at least 1 (seconds)",
                 path)
    _check_range(1 <= schedule.keep <= 10_000, "backup.keep", "must be 1 to 10000 (files)",
                 path)
    return schedule


def _check_address(address: str, key: str, path: Path) -> None:
    try:
        split_address(address)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None


def _check_range(ok: bool, key: str, what: str, path: Path) -> None:
    # ``ok`` is computed with comparisons that are False for NaN, so NaN is refused too.
    if not ok:
        raise ConfigError(f"{path}: {key!r} {what}")


def load_remote_config(path: str | Path) -> RemoteConfig:
    p = Path(path).resolve()
    data = _load(p)
    base = p.parent
    nodes = []
    for i, raw in enumerate(_get(data, "nodes", list, p)):
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: nodes[{i}] must be a table")
        addr = _get(raw, "address", str, p)
        _check_address(addr, f"nodes[{i}].address", p)
        nodes.append(Endpoint(_get(raw, "id", str, p), addr))
    if not nodes:
        raise ConfigError(f"{p}: at least one node is required")
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{p}: node ids in [[nodes]] must be unique (got {', '.join(ids)})")
    role = _get(data, "role", str, p)
    _check_range(role in REMOTE_ROLES, "role", f"must be one of {', '.join(REMOTE_ROLES)} "
                 f"(got {role!r})", p)
    timeout = _get(data, "timeout", float, p, 5.0)
    _check_range(timeout > 0, "timeout", "must be positive (seconds)", p)
    store = _store(data, base, p)
    resync = _get(data, "resync_interval", float, p, 60.0)
    _check_range(resync > 0, "resync_interval", "must be positive (seconds)", p)
    staleness = _get(data, "max_staleness", float, p, None) if "max_staleness" in data else None
    if staleness is not None:
        _check_range(staleness > 0, "max_staleness", "must be positive (seconds)", p)
    known = {"format", "cluster_id", "role", "ca_cert", "cert", "key", "nodes", "timeout",
             "store", "resync_interval", "max_staleness", "store_password_file"}
    key = _path(data, "key", base, p)
    _check_key(key)
    return RemoteConfig(
        path=p,
        cluster_id=_get(data, "cluster_id", str, p),
        role=role,
        ca_cert=_path(data, "ca_cert", base, p),
        cert=_path(data, "cert", base, p),
        key=key,
        nodes=tuple(nodes),
        timeout=timeout,
        store=store,
        resync_interval=resync,
        max_staleness=staleness,
        extra={k: v for k, v in data.items() if k not in known},
        store_password_file=_path(data, "store_password_file", base, p)
        if "store_password_file" in data else None,
    )


def _store(data: Mapping[str, Any], base: Path, path: Path) -> Path | str | None:
    """``store``: a path (relative to the file) or a postgresql:// URI without password."""
    if "store" not in data:
        return None  # before the import: admin.toml has no store, and the CLI starts faster
    from raftsso.store.backend import store_location

    try:
        where = store_location(_get(data, "store", str, path))
    except RaftssoError as exc:
        raise ConfigError(f"{path}: store: {exc}") from None
    return where if isinstance(where, str) else _path(data, "store", base, path)


def read_secret_file(path: Path, kind: str) -> bytes:
    """Read a 32-byte secret written by :func:`format_secret_file` (must be 0600)."""
    header = SECRET_FILE_HEADER[kind]
    raw = read_private(path, limit=4096)
    try:
        text = raw.decode("ascii")
        first, b64 = text.split("\n", 2)[:2]
        if first != header:
            raise ValueError
        secret = base64.b64decode(b64.strip(), validate=True)
    except (UnicodeDecodeError, ValueError, binascii.Error):
        raise ConfigError(f"{path} is not a raftsso {kind} secret file "
                          f"(expected a first line {header!r})") from None
    if len(secret) != 32:
        raise ConfigError(f"{path}: the {kind} secret must be 32 bytes")
    return secret


def format_secret_file(secret: bytes, kind: str) -> bytes:
    return f"{SECRET_FILE_HEADER[kind]}\n{base64.b64encode(secret).decode()}\n".encode()


# -- writing ------------------------------------------------------------------------


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for one of our configs; keys whose value is None are left out (TOML has
    no null). A value TOML cannot hold raises ``TypeError``."""
    import tomli_w

    return tomli_w.dumps(_without_none(data))


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = _merged(old, value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def update_toml(path: Path, changes: Mapping[str, Any]) -> None:
    """Apply ``changes`` to the TOML file at ``path`` and rewrite it (0600, atomically).

    Tables are merged key by key, any other value replaces the old one, and None removes
    the key. The file is parsed and written whole, never edited as text.
    """
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    atomic_write(path, dump_toml(_merged(data, changes)).encode())
