"""Fuzzing the configuration loaders with arbitrary TOML files (hypothesis).

``load_node_config`` (node.toml) and ``load_remote_config`` (admin.toml, client.toml) read
files an operator edits by hand. Whatever a file holds, the loaders either return a
configuration or raise :class:`ConfigError` (the CLI turns it into one line on stderr and
exit 1); nothing else may escape. Inputs: structured documents (the real files of a
deployment with keys removed, replaced by values of every TOML type, or added), line-level
mutations of the real text, and arbitrary text. Each example is written to a file and
loaded from it, as the CLI does.

The end checks non-finite numbers, deep nesting and non-UTF-8 files (bugs found and fixed).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsso.config import (
    NodeConfig,
    RemoteConfig,
    dump_toml,
    load_node_config,
    load_remote_config,
    split_address,
)
from raftsso.deployment import init_deployment
from raftsso.errors import ConfigError

SCALE = float(os.environ.get("RAFTSSO_FUZZ_SCALE", "1"))


def examples(n: int) -> Any:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    init_deployment(root, nodes=3, base_port=42000)
    return root


FILES: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "node": ("node1/node.toml", load_node_config),
    "admin": ("admin.toml", load_remote_config),
    "client": ("client.toml", load_remote_config),
}

toml_scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 4096, 2**31, 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-9, 1e300, 0.5]),
    st.text(max_size=30),
    st.sampled_from(["127.0.0.1:7100", "[::1]:7100", "host:0", "host:65536", ":", "",
                     "a:b", "127.0.0.1", "x" * 300 + ":1", "node1", "ca.pem", "/abs/path",
                     "../up", "\x00", "client", "admin", "node"]))
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                                               children, max_size=3)),
    max_leaves=8)


def _mutate(doc: Any, data: st.DataObject, depth: int = 0) -> Any:
    """Drop, replace or add keys at any level of a parsed TOML document."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            action = data.draw(st.sampled_from(["keep", "keep", "keep", "drop", "replace",
                                                "recurse"]))
            if action == "keep":
                out[key] = value
            elif action == "replace":
                out[key] = data.draw(toml_values)
            elif action == "recurse" and depth < 3:
                out[key] = _mutate(value, data, depth + 1)
            elif action == "recurse":
                out[key] = value
        for _ in range(data.draw(st.integers(0, 2))):
            key = data.draw(st.one_of(st.sampled_from(sorted(doc) or ["x"]),
                                      st.from_regex(r"[a-z_]{1,12}", fullmatch=True)))
            out[key] = data.draw(toml_values)
        return out
    if isinstance(doc, list):
        items = [_mutate(v, data, depth + 1) for v in doc if data.draw(st.booleans())
                 or len(doc) == 1]
        if data.draw(st.booleans()):
            items.append(data.draw(toml_values))
        return items
    return doc


def _check_accepted(kind: str, cfg: Any) -> None:
    """What a loader accepts is usable: addresses parse, ids are unique, ranges hold."""
    if kind == "node":
        assert isinstance(cfg, NodeConfig)
        for address in [cfg.raft_address, cfg.service_address,
                        *[p.raft_address for p in cfg.peers],
                        *[p.service_address for p in cfg.peers]]:
            split_address(address)
        ids = [m.id for m in cfg.members]
        assert len(set(ids)) == len(ids)
        assert 4096 <= cfg.max_frame <= 64 << 20
        t = cfg.raft
        assert 0 < t.append_entries_period < t.election_timeout_min < t.election_timeout_max
        assert t.log_compaction_min_entries >= 2
        assert cfg.idle_timeout > 0 and cfg.read_timeout > 0 and cfg.rotation_grace >= 0
    else:
        assert isinstance(cfg, RemoteConfig)
        assert cfg.nodes
        for node in cfg.nodes:
            split_address(node.address)
        assert len({n.id for n in cfg.nodes}) == len(cfg.nodes)
        assert cfg.role in ("admin", "client")
        assert cfg.timeout > 0 and cfg.resync_interval > 0


def _load(kind: str, directory: Path, text: str | bytes) -> Any:
    name, loader = FILES[kind]
    path = directory / Path(name).name
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        cfg = loader(path)
    except ConfigError:
        return None
    _check_accepted(kind, cfg)
    return cfg


@pytest.mark.parametrize("kind", sorted(FILES))
@examples(250)
@given(data=st.data())
def test_structured_documents(deployment: Path, tmp_path_factory: pytest.TempPathFactory,
                              kind: str, data: st.DataObject) -> None:
    original = tomllib.loads((deployment / FILES[kind][0]).read_text())
    doc = _mutate(original, data)
    try:
        text = dump_toml(doc)
    except TypeError:
        return  # a shape our writer cannot express (e.g. a list of tables inside a table)
    directory = tmp_path_factory.mktemp(kind)
    _load(kind, directory, text)


@pytest.mark.parametrize("kind", sorted(FILES))
@examples(250)
@given(data=st.data())
def test_line_mutations_of_real_files(deployment: Path,
                                      tmp_path_factory: pytest.TempPathFactory, kind: str,
                                      data: st.DataObject) -> None:
    lines = (deployment / FILES[kind][0]).read_text().splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["delete", "duplicate", "truncate", "insert",
                                            "value"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "truncate":
            lines[i] = lines[i][:data.draw(st.integers(0, len(lines[i])))]
        elif action == "insert":
            lines.insert(i, data.draw(st.text(max_size=30)))
        elif "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            value = data.draw(st.one_of(
                st.sampled_from(["inf", "nan", "-1", "0", "1e999", "true", "[]", "{}",
                                 '"127.0.0.1:1"', '"a:b"', "1979-05-27T07:32:00Z",
                                 "0x7fffffffffffffff", '"""x"""', "'x'"]),
                st.text(max_size=12)))
            lines[i] = f"{key}= {value}"
    _load(kind, tmp_path_factory.mktemp(kind), "\n".join(lines) + "\n")


def _utf8(blob: bytes) -> bool:
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Bytes that are not UTF-8 are a known bug (test_a_file_that_is_not_utf8_is_a_config_error).
@examples(300)
@given(blob=st.one_of(st.binary(max_size=200).filter(_utf8), st.text(max_size=200)),
       kind=st.sampled_from(sorted(FILES)))
def test_arbitrary_text(tmp_path_factory: pytest.TempPathFactory, blob: bytes | str,
                        kind: str) -> None:
    _load(kind, tmp_path_factory.mktemp(kind), blob)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    for loader in (load_node_config, load_remote_config):
        with pytest.raises(ConfigError):
            loader(tmp_path / "absent.toml")
        with pytest.raises(ConfigError):
            loader(tmp_path)  # a directory


# -- known bugs ------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [("timeout", "inf"), ("resync_interval", "inf"),
                                       ("max_staleness", "inf")])
def test_remote_config_refuses_non_finite_numbers(deployment: Path, tmp_path: Path, key: str,
                                                  value: str) -> None:
    text = (deployment / "admin.toml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    lines.insert(1, f"{key} = {value}")
    path = tmp_path / "admin.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError):
        cfg = load_remote_config(path)
        assert math.isfinite(getattr(cfg, key))


@pytest.mark.parametrize("line", ["commit_timeout = inf", "connection_timeout = inf",
                                  "election_timeout_max = inf",
                                  "leader_fallback_timeout = inf"])
def test_node_config_refuses_non_finite_raft_timeouts(deployment: Path, tmp_path: Path,
                                                      line: str) -> None:
    text = (deployment / "node1" / "node.toml").read_text().replace("[raft]", f"[raft]\n{line}")
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_node_config(path)


@pytest.mark.parametrize("line", ["client_window = nan", "client_window = -1.0",
                                  "idle_timeout = inf", "read_timeout = inf"])
def test_node_config_refuses_bad_windows_and_timeouts(deployment: Path, tmp_path: Path,
                                                      line: str) -> None:
    text = (deployment / "node1" / "node.toml").read_text().replace(
        "rotation_grace = 120.0", f"rotation_grace = 120.0\n{line}")
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_node_config(path)


@pytest.mark.parametrize("loader", [load_node_config, load_remote_config],
                         ids=["node", "remote"])
def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, loader: Any) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 2000 + "]" * 2000 + "\n")
    with pytest.raises(ConfigError):
        loader(path)


@pytest.mark.parametrize("blob", [b"\x80", b'cluster_id = "caf\xe9"\n', os.urandom(64)],
                         ids=["stray-byte", "latin-1", "binary"])
@pytest.mark.parametrize("loader", [load_node_config, load_remote_config],
                         ids=["node", "remote"])
def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, loader: Any,
                                                   blob: bytes) -> None:
    if _utf8(blob):
        blob = b"\xff" + blob
    path = tmp_path / "bad.toml"
    path.write_bytes(blob)
    with pytest.raises(ConfigError):
        loader(path)
