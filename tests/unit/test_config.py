"""raftsso.config and raftsso.deployment: typed TOML configuration and `raftsso init`."""

from __future__ import annotations

import base64
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsso.config import (
    NodeConfig,
    RaftTimings,
    dump_toml,
    format_secret_file,
    load_node_config,
    load_remote_config,
    read_secret_file,
    split_address,
    update_toml,
)
from raftsso.deployment import init_deployment, plan_nodes
from raftsso.errors import ConfigError

BASE_PORT = 47100  # nothing listens: configs only name ports


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("deploy") / "d"
    cluster_id = init_deployment(directory, base_port=BASE_PORT)
    return directory, cluster_id


def _node_data(deployment: tuple[Path, str], n: int = 1) -> dict[str, Any]:
    with (deployment[0] / f"node{n}" / "node.toml").open("rb") as fh:
        return tomllib.load(fh)


def _remote_data(deployment: tuple[Path, str], role: str = "client") -> dict[str, Any]:
    with (deployment[0] / f"{role}.toml").open("rb") as fh:
        return tomllib.load(fh)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _config_error(load: Callable[[Path], Any], path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- loading what init_deployment wrote ---------------------------------------------------


def test_node_configs_load(deployment: tuple[Path, str]) -> None:
    directory, cluster_id = deployment
    cfgs = [load_node_config(directory / f"node{i}" / "node.toml") for i in (1, 2, 3)]
    assert [c.node_id for c in cfgs] == ["node1", "node2", "node3"]
    for i, cfg in enumerate(cfgs):
        assert cfg.cluster_id == cluster_id
        assert cfg.raft_address == f"127.0.0.1:{BASE_PORT + 3 * i}"
        assert cfg.service_address == f"127.0.0.1:{BASE_PORT + 3 * i + 1}"
        assert cfg.metrics_address == f"127.0.0.1:{BASE_PORT + 3 * i + 2}"
        # relative paths resolve against the file's own directory
        assert cfg.data_dir == (directory / cfg.node_id / "data").resolve()
        assert cfg.key == (directory / cfg.node_id / "node.key").resolve()
        assert cfg.data_dir.is_dir()
        assert [p.id for p in cfg.peers] == [f"node{j}" for j in (1, 2, 3) if j != i + 1]
        assert [m.id for m in cfg.members] == ["node1", "node2", "node3"]
        assert cfg.raft == RaftTimings()
    # all members agree on the membership
    assert len({c.members for c in cfgs}) == 1
    # one seal key and one cluster secret for the whole cluster, and they differ
    seal_keys = {c.seal_key() for c in cfgs}
    secrets = {c.cluster_secret() for c in cfgs}
    assert len(seal_keys) == len(secrets) == 1
    assert len(next(iter(seal_keys))) == 32
    assert seal_keys != secrets


def test_remote_configs_load(deployment: tuple[Path, str]) -> None:
    directory, cluster_id = deployment
    admin = load_remote_config(directory / "admin.toml")
    client = load_remote_config(directory / "client.toml")
    assert (admin.role, client.role) == ("admin", "client")
    assert admin.cluster_id == client.cluster_id == cluster_id
    assert admin.store is None
    assert client.store == (directory / "sso.db").resolve()
    assert client.resync_interval == 60.0
    services = [load_node_config(directory / f"node{i}" / "node.toml").service_address
                for i in (1, 2, 3)]
    for cfg in (admin, client):
        assert [n.address for n in cfg.nodes] == services
        assert [n.id for n in cfg.nodes] == ["node1", "node2", "node3"]
        assert cfg.ca_cert == (directory / "ca.pem").resolve()
        assert cfg.ca_cert.exists() and cfg.cert.exists() and cfg.key.exists()
        assert cfg.extra == {}


def test_no_secret_is_written_into_a_config(deployment: tuple[Path, str]) -> None:
    directory, _ = deployment
    cfg = load_node_config(directory / "node1" / "node.toml")
    texts = [p.read_text() for p in directory.rglob("*.toml")]
    for secret in (cfg.seal_key(), cfg.cluster_secret()):
        for text in texts:
            assert base64.b64encode(secret).decode() not in text
            assert secret.hex() not in text


# -- init_deployment ----------------------------------------------------------------------


def test_every_file_is_0600_and_every_directory_0700(deployment: tuple[Path, str]) -> None:
    directory, _ = deployment
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    seen = set()
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o700, name
        for name in files:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o600, name
            seen.add((Path(root) / name).relative_to(directory).as_posix())
    expected = {"ca.pem", "ca.key", "admin.toml", "admin.pem", "admin.key", "client.toml",
                "client.pem", "client.key", "agent.toml"}
    for n in (1, 2, 3):
        expected |= {f"node{n}/{f}" for f in ("node.toml", "node.pem", "node.key", "ca.pem",
                                              "seal.key", "cluster.secret")}
    assert seen == expected
    # no temp files left behind by the atomic writes
    assert not [p for p in directory.rglob(".*")]


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        init_deployment(target, base_port=BASE_PORT)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"


def test_init_refuses_to_overwrite_a_deployment(tmp_path: Path) -> None:
    target = tmp_path / "d"
    init_deployment(target, nodes=1, base_port=BASE_PORT)
    before = (target / "node1" / "seal.key").read_bytes()
    with pytest.raises(ConfigError):
        init_deployment(target, nodes=1, base_port=BASE_PORT)
    assert (target / "node1" / "seal.key").read_bytes() == before


def test_init_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir(mode=0o755)
    init_deployment(target, nodes=1, base_port=BASE_PORT)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    cfg = load_node_config(target / "node1" / "node.toml")
    assert cfg.peers == ()


@pytest.mark.parametrize("nodes", [2, 4, 6])
def test_init_refuses_an_even_node_count(tmp_path: Path, nodes: int) -> None:
    target = tmp_path / "d"
    with pytest.raises(ConfigError, match="odd"):
        init_deployment(target, nodes=nodes, base_port=BASE_PORT)
    assert not target.exists()


@pytest.mark.parametrize("nodes,base_port", [(0, BASE_PORT), (-1, BASE_PORT), (3, 80),
                                             (3, 65534)])
def test_init_refuses_impossible_plans(tmp_path: Path, nodes: int, base_port: int) -> None:
    with pytest.raises(ConfigError):
        init_deployment(tmp_path / "d", nodes=nodes, base_port=base_port)
    assert not (tmp_path / "d").exists()


def test_plan_nodes_assigns_distinct_ports() -> None:
    plans = plan_nodes(5, "10.0.0.1", 20000)
    ports = [p for plan in plans for p in (plan.raft_port, plan.service_port, plan.http_port)]
    assert len(set(ports)) == len(ports) == 15
    assert plans[4].raft_address == "10.0.0.1:20012"


# -- files and formats that must be refused ---------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    _config_error(load_node_config, missing, "does not exist", "nope.toml")
    _config_error(load_remote_config, missing, "does not exist")


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    _config_error(load_node_config, tmp_path, "cannot read")


@pytest.mark.parametrize("text", ["node_id = ", "[raft\n", "a = 'x'\na = 'y'\n",
                                  "\x00\x01", "key = value"])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "bad.toml", text)
    _config_error(load_node_config, path, "not valid TOML", "bad.toml")
    _config_error(load_remote_config, path, "not valid TOML")


@pytest.mark.parametrize("fmt", ["2", "0", "'1'", "1.5", "[1]"])
def test_unknown_format_number(deployment: tuple[Path, str], tmp_path: Path,
                               fmt: str) -> None:
    for name, load in (("node1/node.toml", load_node_config),
                       ("admin.toml", load_remote_config)):
        text = (deployment[0] / name).read_text().replace("format = 1", f"format = {fmt}", 1)
        path = _write(tmp_path / "cfg.toml", text)
        _config_error(load, path, "configuration format")


def _node_variant(deployment: tuple[Path, str], tmp_path: Path,
                  change: Callable[[dict[str, Any]], None]) -> Path:
    data = _node_data(deployment)
    change(data)
    return _write(tmp_path / "node.toml", dump_toml(data))


def _remote_variant(deployment: tuple[Path, str], tmp_path: Path,
                    change: Callable[[dict[str, Any]], None]) -> Path:
    data = _remote_data(deployment)
    change(data)
    return _write(tmp_path / "client.toml", dump_toml(data))


def test_unmodified_variants_load(deployment: tuple[Path, str], tmp_path: Path) -> None:
    # the variant helpers themselves produce loadable files
    assert load_node_config(_node_variant(deployment, tmp_path, lambda d: None)).node_id \
        == "node1"
    assert load_remote_config(_remote_variant(deployment, tmp_path, lambda d: None)).role \
        == "client"


NODE_TYPE_ERRORS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "node_id-int": (lambda d: d.update(node_id=5), "'node_id'"),
    "cluster_id-bool": (lambda d: d.update(cluster_id=True), "'cluster_id'"),
    "raft_address-list": (lambda d: d.update(raft_address=["127.0.0.1", 1]), "'raft_address'"),
    "data_dir-int": (lambda d: d.update(data_dir=3), "'data_dir'"),
    "peers-str": (lambda d: d.update(peers="node2"), "'peers'"),
    "peers-ints": (lambda d: d.update(peers=[1, 2]), "peers[0]"),
    "peer-id-int": (lambda d: d["peers"][0].update(id=2), "'id'"),
    "raft-str": (lambda d: d.update(raft="fast"), "'raft'"),
    "raft-period-str": (lambda d: d.update(raft={"append_entries_period": "0.1"}),
                        "'append_entries_period'"),
    "raft-period-bool": (lambda d: d.update(raft={"commit_timeout": True}),
                         "'commit_timeout'"),
    "rotation_grace-str": (lambda d: d.update(rotation_grace="2m"), "'rotation_grace'"),
    "max_frame-float": (lambda d: d.update(max_frame=1.5), "'max_frame'"),
    "max_frame-bool": (lambda d: d.update(max_frame=True), "'max_frame'"),
    "metrics_address-int": (lambda d: d.update(metrics_address=9100), "'metrics_address'"),
    "missing-cluster_id": (lambda d: d.pop("cluster_id"), "missing required key 'cluster_id'"),
    "missing-seal_key_file": (lambda d: d.pop("seal_key_file"), "'seal_key_file'"),
    "missing-peer-address": (lambda d: d["peers"][1].pop("raft_address"), "'raft_address'"),
}


@pytest.mark.parametrize("case", NODE_TYPE_ERRORS.values(), ids=NODE_TYPE_ERRORS.keys())
def test_node_config_wrong_types(deployment: tuple[Path, str], tmp_path: Path,
                                 case: tuple[Callable[[dict[str, Any]], None], str]) -> None:
    change, fragment = case
    path = _node_variant(deployment, tmp_path, change)
    _config_error(load_node_config, path, fragment, str(path))


REMOTE_ERRORS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "nodes-missing": (lambda d: d.pop("nodes"), "'nodes'"),
    "nodes-empty": (lambda d: d.update(nodes=[]), "at least one node"),
    "nodes-str": (lambda d: d.update(nodes="node1"), "'nodes'"),
    "nodes-ints": (lambda d: d.update(nodes=[1]), "nodes[0]"),
    "node-address-int": (lambda d: d["nodes"][0].update(address=7101), "'address'"),
    "node-address-bad": (lambda d: d["nodes"][2].update(address="node3"), "'node3'"),
    "node-port-bad": (lambda d: d["nodes"][0].update(address="h:99999"), "h:99999"),
    "role-int": (lambda d: d.update(role=1), "'role'"),
    "timeout-str": (lambda d: d.update(timeout="5s"), "'timeout'"),
    "store-int": (lambda d: d.update(store=1), "'store'"),
    "max_staleness-str": (lambda d: d.update(max_staleness="2m"), "'max_staleness'"),
    "missing-ca_cert": (lambda d: d.pop("ca_cert"), "'ca_cert'"),
}


@pytest.mark.parametrize("case", REMOTE_ERRORS.values(), ids=REMOTE_ERRORS.keys())
def test_remote_config_errors(deployment: tuple[Path, str], tmp_path: Path,
                              case: tuple[Callable[[dict[str, Any]], None], str]) -> None:
    change, fragment = case
    path = _remote_variant(deployment, tmp_path, change)
    _config_error(load_remote_config, path, fragment, str(path))


def test_remote_config_keeps_unknown_keys_as_extra(deployment: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    path = _remote_variant(deployment, tmp_path,
                           lambda d: d.update(max_staleness=90, flavour="x"))
    cfg = load_remote_config(path)
    assert cfg.max_staleness == 90.0
    assert cfg.extra == {"flavour": "x"}


BAD_ADDRESSES = ["localhost", "127.0.0.1", "127.0.0.1:", ":7000", "127.0.0.1:0",
                 "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:-1", "127.0.0.1: 80", ""]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_split_address_refuses(address: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        split_address(address)


def test_split_address_accepts() -> None:
    assert split_address("127.0.0.1:1") == ("127.0.0.1", 1)
    assert split_address("[::1]:65535") == ("::1", 65535)
    assert split_address("node-1.example:7100") == ("node-1.example", 7100)


@pytest.mark.parametrize("address", BAD_ADDRESSES[:6])
@pytest.mark.parametrize("where", ["raft_address", "service_address", "peer.raft_address",
                                   "peer.service_address"])
def test_node_config_bad_address(deployment: tuple[Path, str], tmp_path: Path,
                                 address: str, where: str) -> None:
    def change(d: dict[str, Any]) -> None:
        if where.startswith("peer."):
            d["peers"][1][where[5:]] = address
        else:
            d[where] = address

    path = _node_variant(deployment, tmp_path, change)
    _config_error(load_node_config, path, "host:port", repr(address))


def test_node_config_bad_metrics_address(deployment: tuple[Path, str], tmp_path: Path) -> None:
    path = _node_variant(deployment, tmp_path, lambda d: d.update(metrics_address="nonsense"))
    _config_error(load_node_config, path, "host:port")


def test_node_config_duplicate_ids(deployment: tuple[Path, str], tmp_path: Path) -> None:
    path = _node_variant(deployment, tmp_path, lambda d: d["peers"][0].update(id="node1"))
    _config_error(load_node_config, path, "unique", "node1")
    path = _node_variant(deployment, tmp_path, lambda d: d["peers"][1].update(id="node2"))
    _config_error(load_node_config, path, "unique", "node2")


def test_remote_config_duplicate_ids(deployment: tuple[Path, str], tmp_path: Path) -> None:
    path = _remote_variant(deployment, tmp_path, lambda d: d["nodes"][1].update(id="node1"))
    _config_error(load_remote_config, path, "unique")


def test_unknown_raft_keys(deployment: tuple[Path, str], tmp_path: Path) -> None:
    path = _node_variant(deployment, tmp_path, lambda d: d.update(
        raft={"election_timeout": 0.3, "append_entries_period": 0.02, "heartbeat": 1.0}))
    message = _config_error(load_node_config, path, "unknown [raft] keys")
    assert "election_timeout" in message and "heartbeat" in message
    assert "append_entries_period" not in message


@pytest.mark.parametrize("raft,fragment", [
    ({"append_entries_period": 0.0}, "append_entries_period"),
    ({"append_entries_period": -0.1}, "append_entries_period"),
    ({"append_entries_period": 0.3}, "append_entries_period"),
    ({"append_entries_period": float("nan")}, "append_entries_period"),
    ({"election_timeout_min": 0.5, "election_timeout_max": 0.5}, "election_timeout_min"),
    ({"election_timeout_min": 0.6, "election_timeout_max": 0.4}, "election_timeout_min"),
    ({"leader_fallback_timeout": 0.03}, "leader_fallback_timeout"),
    ({"leader_fallback_timeout": 0.01}, "leader_fallback_timeout"),
    ({"commit_timeout": 0}, "positive"),
    ({"commit_timeout": -5}, "positive"),
    ({"connection_retry": 0}, "positive"),
], ids=repr)
def test_invalid_timings(deployment: tuple[Path, str], tmp_path: Path,
                         raft: dict[str, float], fragment: str) -> None:
    path = _node_variant(deployment, tmp_path, lambda d: d.update(raft=raft))
    _config_error(load_node_config, path, fragment)
    with pytest.raises(ConfigError):
        RaftTimings(**raft).validate()


def test_valid_custom_timings(deployment: tuple[Path, str], tmp_path: Path) -> None:
    raft = {"append_entries_period": 0.02, "election_timeout_min": 0.1,
            "election_timeout_max": 0.3, "leader_fallback_timeout": 1, "connection_timeout": 60}
    cfg = load_node_config(_node_variant(deployment, tmp_path, lambda d: d.update(raft=raft)))
    assert cfg.raft.election_timeout_min == 0.1
    assert cfg.raft.leader_fallback_timeout == 1.0
    assert isinstance(cfg.raft.connection_timeout, float)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_invalid_connection_timeout(value: float) -> None:
    with pytest.raises(ConfigError):
        RaftTimings(connection_timeout=value).validate()


@pytest.mark.parametrize("where,key", [
    ("raft_address", "raft_address"), ("service_address", "service_address"),
    ("metrics_address", "metrics_address"), ("peer.raft_address", "peers[1].raft_address"),
    ("peer.service_address", "peers[1].service_address")])
def test_node_address_errors_name_the_file_and_the_key(
        deployment: tuple[Path, str], tmp_path: Path, where: str, key: str) -> None:
    def change(d: dict[str, Any]) -> None:
        if where.startswith("peer."):
            d["peers"][1][where[5:]] = "h:0"
        else:
            d[where] = "h:0"

    path = _node_variant(deployment, tmp_path, change)
    _config_error(load_node_config, path, str(path), key, "'h:0'", "host:port")


def test_remote_address_errors_name_the_file_and_the_key(deployment: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    path = _remote_variant(deployment, tmp_path, lambda d: d["nodes"][2].update(address="x"))
    _config_error(load_remote_config, path, str(path), "nodes[2].address", "'x'")


@pytest.mark.parametrize("key,value,fragment", [
    ("rotation_grace", -1.0, "0 or more"),
    ("rotation_grace", float("nan"), "finite"),
    ("idle_timeout", 0.0, "positive"),
    ("idle_timeout", -5.0, "positive"),
    ("read_timeout", 0, "positive"),
    ("read_timeout", float("nan"), "finite"),
    ("max_frame", 4095, "4 KiB"),
    ("max_frame", 0, "64 MiB"),
    ("max_frame", (64 << 20) + 1, "64 MiB"),
], ids=repr)
def test_node_config_ranges(deployment: tuple[Path, str], tmp_path: Path, key: str,
                            value: Any, fragment: str) -> None:
    path = _node_variant(deployment, tmp_path, lambda d: d.update({key: value}))
    _config_error(load_node_config, path, str(path), f"'{key}'", fragment)


def test_node_config_range_boundaries(deployment: tuple[Path, str], tmp_path: Path) -> None:
    for values in ({"rotation_grace": 0, "max_frame": 4096},
                   {"max_frame": 64 << 20, "idle_timeout": 0.5, "read_timeout": 0.01}):
        cfg = load_node_config(_node_variant(deployment, tmp_path,
                                             lambda d, v=values: d.update(v)))
        for key, value in values.items():
            assert getattr(cfg, key) == value


@pytest.mark.parametrize("change,fragment", [
    ({"role": "node"}, "'role' must be one of admin, client"),
    ({"role": "Admin"}, "'role'"),
    ({"role": ""}, "'role'"),
    ({"resync_interval": 0}, "'resync_interval' must be positive"),
    ({"resync_interval": -60.0}, "'resync_interval'"),
    ({"resync_interval": float("nan")}, "'resync_interval'"),
    ({"timeout": 0}, "'timeout' must be positive"),
    ({"max_staleness": 0}, "'max_staleness' must be positive"),
], ids=repr)
def test_remote_config_ranges(deployment: tuple[Path, str], tmp_path: Path,
                              change: dict[str, Any], fragment: str) -> None:
    path = _remote_variant(deployment, tmp_path, lambda d: d.update(change))
    _config_error(load_remote_config, path, str(path), fragment)


def test_admin_and_client_roles_load(deployment: tuple[Path, str], tmp_path: Path) -> None:
    for role in ("admin", "client"):
        path = _remote_variant(deployment, tmp_path, lambda d, r=role: d.update(role=r))
        assert load_remote_config(path).role == role


def test_unknown_top_level_node_keys_are_refused(deployment: tuple[Path, str],
                                                 tmp_path: Path) -> None:
    path = _node_variant(deployment, tmp_path, lambda d: d.update(
        rotaton_grace=10.0, election_timeout=0.3))
    message = _config_error(load_node_config, path, str(path), "unknown keys",
                            "election_timeout", "rotaton_grace")
    assert "rotation_grace" in message  # the known keys are listed, to spot the typo


def test_every_node_config_field_is_a_known_key(deployment: tuple[Path, str],
                                                tmp_path: Path) -> None:
    # What init writes is accepted, and so is every NodeConfig field spelled out.
    cfg = load_node_config(deployment[0] / "node1" / "node.toml")
    optional = {f.name: getattr(cfg, f.name) for f in fields(NodeConfig)
                if f.name not in {"path", "raft", "peers"}
                and f.default is not MISSING and getattr(cfg, f.name) is not None}
    optional = {k: str(v) if isinstance(v, Path) else v for k, v in optional.items()}
    loaded = load_node_config(_node_variant(deployment, tmp_path,
                                            lambda d: d.update(optional)))
    for key, value in optional.items():
        assert getattr(loaded, key) == (Path(value) if isinstance(getattr(cfg, key), Path)
                                        else value), key


def test_log_compaction_min_entries(deployment: tuple[Path, str], tmp_path: Path) -> None:
    assert RaftTimings().log_compaction_min_entries == 1000
    cfg = load_node_config(_node_variant(
        deployment, tmp_path, lambda d: d.update(raft={"log_compaction_min_entries": 8})))
    assert cfg.raft.log_compaction_min_entries == 8
    assert isinstance(cfg.raft.log_compaction_min_entries, int)
    for value, fragment in ((1, "at least 2"), (0, "at least 2"), (8.0, "type int"),
                            (True, "type int"), ("8", "type int")):
        path = _node_variant(deployment, tmp_path, lambda d, v=value: d.update(
            raft={"log_compaction_min_entries": v}))
        _config_error(load_node_config, path, str(path), "log_compaction_min_entries",
                      fragment)


# -- secret files -----------------------------------------------------------------------


def _secret_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_secret_file_round_trip(tmp_path: Path) -> None:
    secret = bytes(range(32))
    for kind in ("seal", "cluster"):
        assert read_secret_file(_secret_file(tmp_path, format_secret_file(secret, kind)),
                                kind) == secret


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_secret_file_must_be_private(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path, format_secret_file(bytes(32), "seal"), mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_file(path, "seal")


@pytest.mark.parametrize("content", [
    format_secret_file(bytes(32), "cluster"),                      # the other kind
    b"raftsso-seal-key v2\n" + base64.b64encode(bytes(32)) + b"\n",
    base64.b64encode(bytes(32)) + b"\n",                            # no header
    b"raftsso-seal-key v1",                                          # no body
    b"raftsso-seal-key v1\nnot base64!\n",
    b"raftsso-seal-key v1\n" + base64.b64encode(bytes(32))[:-2] + b"\n",
    b"\xff\xfe\n\n",
    b"",
])
def test_secret_file_wrong_header_or_body(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(ConfigError):
        read_secret_file(_secret_file(tmp_path, content), "seal")


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_secret_file_wrong_length(tmp_path: Path, size: int) -> None:
    path = _secret_file(tmp_path, format_secret_file(bytes(size), "seal"))
    with pytest.raises(ConfigError, match="32 bytes"):
        read_secret_file(path, "seal")


def test_secret_file_missing_or_huge(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_secret_file(tmp_path / "absent", "seal")
    with pytest.raises(ConfigError, match="larger"):
        read_secret_file(_secret_file(tmp_path, b"x" * 5000), "seal")


# -- dump_toml --------------------------------------------------------------------------


def _without_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_none(v) for v in data]
    return data


def test_dump_toml_round_trips_deployment_data(deployment: tuple[Path, str]) -> None:
    for data in (_node_data(deployment), _remote_data(deployment, "admin"),
                 _remote_data(deployment, "client")):
        assert tomllib.loads(dump_toml(data)) == data


def test_dump_toml_round_trip_example() -> None:
    data = {
        "format": 1, "name": 'quote " backslash \\ newline \n tab \t unicode é 日本',
        "flag": False, "n": -7, "big": 2**63 - 1, "ratio": 0.1, "tiny": 1e-300,
        "huge": 1e300, "inf": float("inf"), "ninf": float("-inf"),
        "list": [1, "two", 3.0, True, []], "empty": [], "skip": None,
        "table": {"a": 1, "b": "x", "gone": None}, "empty_table": {},
        "items": [{"id": "a", "n": 1}, {"id": "b", "none": None}],
    }
    assert tomllib.loads(dump_toml(data)) == _without_none(data)


@pytest.mark.parametrize("value", ["a\rb", "nul\x00", "del\x7f", "esc\x1b[0m"], ids=repr)
def test_dump_toml_control_characters(value: str) -> None:
    assert tomllib.loads(dump_toml({"v": value})) == {"v": value}


def test_dump_toml_refuses_unsupported_values() -> None:
    with pytest.raises(TypeError):
        dump_toml({"when": object()})


def test_update_toml_merges_tables_replaces_values_and_stays_private(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.toml", dump_toml(
        {"a": 1, "b": "keep", "gone": True, "raft": {"x": 1, "y": 2},
         "peers": [{"id": "n1"}]}))
    path.chmod(0o644)
    update_toml(path, {"a": 2, "gone": None, "raft": {"y": 3, "z": 4.5},
                       "peers": [{"id": "n2"}], "new": {"k": "v"}})
    assert tomllib.loads(path.read_text()) == {
        "a": 2, "b": "keep", "raft": {"x": 1, "y": 3, "z": 4.5}, "peers": [{"id": "n2"}],
        "new": {"k": "v"}}
    assert path.stat().st_mode & 0o777 == 0o600


toml_text = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(
    ["\n", "\t", '"', "\\", "'"]), max_size=30)
toml_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False) | toml_text)
toml_keys = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
toml_values = toml_scalars | st.lists(toml_scalars, max_size=4)
toml_tables = st.dictionaries(toml_keys, toml_values, max_size=4)


@settings(max_examples=200, deadline=None)
@given(top=st.dictionaries(toml_keys, toml_values, max_size=6),
       tables=st.dictionaries(toml_keys, toml_tables, max_size=2),
       arrays=st.dictionaries(toml_keys, st.lists(toml_tables, min_size=1, max_size=3),
                              max_size=2))
def test_dump_toml_round_trip_property(top: dict[str, Any], tables: dict[str, Any],
                                       arrays: dict[str, Any]) -> None:
    data: dict[str, Any] = {**top, **tables, **arrays}
    assert tomllib.loads(dump_toml(data)) == data
